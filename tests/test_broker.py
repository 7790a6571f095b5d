"""The Redis connection, the embedded server, worker liveness and the Dramatiq broker, on real Redis."""

from __future__ import annotations

import stat
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import dramatiq.broker
import pytest
import redis
from dramatiq.message import Message

import notifier.broker
from notifier.broker import (
    DEAD_AFTER_MS,
    DRAMATIQ_NAMESPACE,
    NAMESPACE,
    EmbeddedRedis,
    beat,
    connect,
    make_broker,
    text,
    workers_alive,
)
from notifier.config import Settings
from notifier.errors import RedisUnavailable
from tests.conftest import free_port, wait_until


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings.from_env({"NOTIFIER_REDIS_URL": redis_url, "NOTIFIER_DATA_DIR": str(tmp_path / "var")})


@pytest.fixture
def keep_global_broker() -> Iterator[None]:
    """make_broker sets Dramatiq's global broker: put back whatever was there."""
    previous = dramatiq.broker.global_broker
    yield
    dramatiq.broker.global_broker = previous


def db_url(redis_server: str, db: int) -> str:
    return f"{redis_server}/{db}" if redis_server.startswith("redis://") else f"{redis_server}?db={db}"


# ---------------------------------------------------------------------------
# NOTIFIER_REDIS_URL
# ---------------------------------------------------------------------------


def test_the_configured_url_and_its_db_number_are_used(
    settings: Settings, redis_server: str, redis_client: redis.Redis, tmp_path: Path, keep_global_broker: None
) -> None:
    assert settings.redis_url is not None
    assert notifier.broker.redis_url(settings) == settings.redis_url
    key = f"probe-{uuid.uuid4().hex}"

    client = connect(settings)
    try:
        client.set(key, "here")
    finally:
        client.close()
    broker = make_broker(settings, worker_id="w1")
    try:
        broker.declare_queue("probe")
        broker.enqueue(Message(queue_name="probe", actor_name="probe", args=(), kwargs={}, options={}))
    finally:
        broker.close()

    assert redis_client.get(key) == b"here", "the ledger writes to the URL's db"
    assert redis_client.exists(f"{DRAMATIQ_NAMESPACE}:probe") == 1, "and so does the queue"
    other = redis.Redis.from_url(db_url(redis_server, 12))
    try:
        assert other.get(key) is None
    finally:
        other.close()
    assert not (tmp_path / "var" / "redis").exists(), "no embedded server when a URL is set"


@pytest.mark.parametrize(
    "template",
    [
        "redis://:s3cret-pw@127.0.0.1:{port}/0",
        "redis://notifier:s3cret-pw@127.0.0.1:{port}/0",
        "redis://127.0.0.1:{port}/0?password=s3cret-pw",
        "redis://127.0.0.1:{port}/0?db=0&password=s3cret-pw&socket_timeout=5",
    ],
)
def test_an_unreachable_redis_is_named_without_its_password(template: str) -> None:
    port = free_port()
    settings = Settings(redis_url=template.format(port=port))

    with pytest.raises(RedisUnavailable) as raised:
        connect(settings)

    message = str(raised.value)
    assert "s3cret-pw" not in message
    assert f"127.0.0.1:{port}" in message, "the message still says where it tried"


def test_an_unreachable_redis_without_a_password_is_named_in_full() -> None:
    url = f"redis://127.0.0.1:{free_port()}/3"

    with pytest.raises(RedisUnavailable, match=f"cannot reach Redis at {url}"):
        connect(Settings(redis_url=url))


# ---------------------------------------------------------------------------
# Embedded Redis
# ---------------------------------------------------------------------------


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def test_the_embedded_redis_is_shared_kept_in_an_aof_and_stopped_by_its_last_user(tmp_path: Path) -> None:
    data = tmp_path / "var"
    first, second = EmbeddedRedis(data), EmbeddedRedis(data)
    try:
        url = first.acquire()
        assert url.startswith("unix://")
        assert second.acquire() == url
        assert stat.S_ISSOCK(first.socket.stat().st_mode)
        client = redis.Redis.from_url(url)
        try:
            assert text(client.config_get("dir")["dir"]) == str((data / "redis").resolve())
            assert text(client.config_get("appendonly")["appendonly"]) == "yes"
            client.set("kept", "across restarts")
        finally:
            client.close()

        first.release()
        assert _answers(url), "the second user still has it"
        second.release()
        assert not first.socket.exists() and not _answers(url), "the last user stops it"

        third = EmbeddedRedis(data)
        third.acquire()
        client = redis.Redis.from_url(url)
        try:
            assert client.get("kept") == b"across restarts", "the AOF was flushed on the way down"
        finally:
            client.close()
        third.release()
        assert not third.socket.exists()
    finally:
        if _answers(first.url):
            first.shutdown()


# ---------------------------------------------------------------------------
# Liveness
# ---------------------------------------------------------------------------


def test_workers_alive_lists_recent_heartbeats_only(redis_client: redis.Redis) -> None:
    assert workers_alive(redis_client) == []
    beat(redis_client, "host:1:aaaa")
    beat(redis_client, "host:2:bbbb")
    stale = time.time() * 1000 - DEAD_AFTER_MS - 5_000
    redis_client.zadd(f"{NAMESPACE}:workers", {"host:3:cccc": stale, "host:2:bbbb": stale})

    assert workers_alive(redis_client) == ["host:1:aaaa"]


def test_a_worker_is_alive_in_redis_before_its_first_message_runs(
    settings: Settings, redis_client: redis.Redis, keep_global_broker: None
) -> None:
    """Delivery claims are checked against this heartbeat: messages waiting when a worker
    boots must not run before it, or a duplicate would find their claims' holder "dead"."""
    broker = make_broker(settings, worker_id="booting-worker")
    seen: list[bool] = []
    lock = threading.Lock()

    def probe() -> None:
        alive = "booting-worker" in workers_alive(redis_client)
        with lock:
            seen.append(alive)

    actor = dramatiq.Actor(probe, broker=broker, actor_name="probe", queue_name="probe", priority=0, options={})
    for _ in range(16):
        actor.send()
    worker = dramatiq.Worker(broker, worker_threads=8)
    worker.start()
    try:
        wait_until(lambda: len(seen) >= 16, 30, "the 16 waiting messages to run")
    finally:
        worker.stop()
        broker.close()
    assert seen == [True] * 16


def test_text_decodes_replies_and_passes_strings() -> None:
    assert text(b"Zo\xc3\xab") == "Zoë"
    assert text("Zoë") == "Zoë"
    assert text(3) == "3"


# ---------------------------------------------------------------------------
# Requeueing a dead worker's messages
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [None, 50], ids=["due", "delayed"])
def test_a_message_held_by_a_worker_that_dies_is_run_by_a_running_one_within_seconds(
    settings: Settings, redis_client: redis.Redis, keep_global_broker: None, delay: int | None
) -> None:
    """Stock Dramatiq requeues a dead worker's messages on one command in a thousand, so an
    idle worker would take minutes to notice; notifier's broker does it on a timer, for the
    delay queue (where retries wait) as much as for the queue itself."""
    dying = make_broker(settings, worker_id="dying-worker")
    dying.declare_queue("held")
    message: Message[None] = Message(
        queue_name="held", actor_name="held", args=("the-held-one",), kwargs={}, options={}
    )
    queue = dying.enqueue(message, delay=delay).queue_name  # a retry waits in the delay queue
    taken = next(dying.consume(queue, prefetch=1, timeout=100))
    assert taken is not None and taken.args == ("the-held-one",)  # taken, never acked

    alive = make_broker(settings, worker_id="live-worker")
    ran = threading.Event()

    def held(token: str) -> None:
        if token == "the-held-one":
            ran.set()

    dramatiq.Actor(held, broker=alive, actor_name="held", queue_name="held", priority=0, options={})
    worker = dramatiq.Worker(alive, worker_threads=1)
    worker.start()
    try:
        assert not ran.wait(3), "a live worker's message is not taken from it"
        assert "live-worker" in workers_alive(redis_client)

        # The worker holding it dies: its last heartbeat is now older than DEAD_AFTER_MS.
        heartbeats = f"{DRAMATIQ_NAMESPACE}:__heartbeats__"
        redis_client.zadd(heartbeats, {dying.broker_id: time.time() * 1000 - DEAD_AFTER_MS - 5_000})

        assert ran.wait(12), "the dead worker's message was never requeued"
    finally:
        worker.stop()
        dying.close()
        alive.close()
    assert "live-worker" not in workers_alive(redis_client), "a stopped worker leaves the live list"
