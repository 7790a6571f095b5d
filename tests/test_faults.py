"""Faults mid fan-out that lose queue messages: Redis restarted, and a message gone while
its deliveries were claimed. Real Redis (one of the test's own for the restart), a real SMTP
server (aiosmtpd) and real workers; ``bench/faults.py`` measures the same faults over rounds.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from notifier import actors, delivery
from notifier.config import Settings
from notifier.service import Service
from tests.conftest import Project, SmtpServer, free_port, wait_until
from tests.test_delivery import BULK, _bulk_project, _worker, example_emails


@dataclass
class OwnRedis:
    """A redis-server of the test's own with AOF (``appendfsync always``), to stop and start."""

    dir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.answers, 30, "the test's redis-server to answer")

    def answers(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """A clean stop: SHUTDOWN flushes the AOF."""
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        with contextlib.suppress(redis.RedisError, OSError):
            client.shutdown()
        client.close()
        if self.process is not None:
            self.process.wait(timeout=30)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis", free_port())
    server.dir.mkdir()
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.stop()


def _finished(service: Service, occurrence: str) -> bool:
    try:
        return service.progress(occurrence).finished
    except (redis.RedisError, OSError):
        return False  # Redis is away


@pytest.mark.slow
def test_redis_restarted_mid_fan_out_loses_no_one(
    project: Project, own_redis: OwnRedis, smtp_server: SmtpServer
) -> None:
    env = {**project.env, "NOTIFIER_REDIS_URL": own_redis.url, "NOTIFIER_SMTP_URL": smtp_server.url}
    _bulk_project(project)
    smtp_server.handler.delay = 0.005  # slow enough that the restart lands mid fan-out
    service = Service(Settings.from_env(env))
    worker = _worker(env)
    try:
        occurrence = service.fire("bulk-2019", "opened")
        assert occurrence is not None
        wait_until(lambda: smtp_server.handler.count() >= 300, 60, "the worker to get going")
        own_redis.stop()
        assert smtp_server.handler.count() < BULK, "the restart must land mid fan-out"
        time.sleep(3.0)  # Redis stays away 3 s: the fault itself, not a wait for a condition
        own_redis.start()
        wait_until(lambda: _finished(service, occurrence), 90, "every delivery to reach a final state")
        progress = service.progress(occurrence)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
        service.close()

    received = Counter(smtp_server.handler.recipients())
    assert len(received) == BULK, f"{BULK - len(received)} never got the e-mail"
    assert progress.counts["email"].get("sent") == BULK


def test_deliveries_claimed_by_a_message_that_is_gone_are_sent_by_the_workers(
    project: Project, redis_url: str, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a lost message leaves: deliveries pending, claimed by a live worker for a message
    no queue holds, and nothing queued to send them. No scheduler runs: a worker finds them."""
    monkeypatch.setattr(actors, "SWEEP_EVERY_S", 0.2)
    env = {**project.env, "NOTIFIER_REDIS_URL": redis_url, "NOTIFIER_SMTP_URL": smtp_server.url}
    service = Service(Settings.from_env(env))
    try:
        occurrence = service.ledger.claim_occurrence("soc-strategy-2019", "opened", at=datetime.now(UTC))
        assert occurrence is not None
        batches = list(delivery.fan_out(service.runtime, occurrence))  # recorded, never enqueued
        service.ledger.set_state(occurrence, "fanned-out")
        email = [b for b in batches if b.channel == "email"]
        fields = [f"email|{r}" for b in email for r in b.recipients]
        claims = service.ledger.claim(occurrence, fields[: len(fields) // 2], owner=f"{service.runtime.worker_id}|gone")
        assert all(c.state == "claimed" for c in claims)

        with service.worker(threads=2):
            wait_until(lambda: _finished(service, occurrence), 30, "a worker to send what no message would")
    finally:
        service.close()

    received = Counter(smtp_server.handler.recipients())
    assert set(received) == example_emails(project)
    assert max(received.values()) == 1
