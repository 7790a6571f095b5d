"""A relay that accepts and never answers, or lacks AUTH, does not stall delivery: the
channel is paused as a whole (a circuit breaker in Redis, shared by every worker) and a
relay without AUTH is a named, permanent failure."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
import redis

from notifier import breaker, delivery
from notifier.breaker import Breaker
from notifier.config import EMAIL_CHANNEL, Settings
from notifier.ledger import Record
from notifier.runtime import Runtime
from tests.conftest import Project, SmtpServer, wait_until

TIMEOUT_S = 1.0


@dataclass
class SilentRelay:
    """A TCP server on loopback that accepts connections and never says a word."""

    sock: socket.socket = field(default_factory=socket.socket)
    accepted: list[socket.socket] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def start(self) -> None:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        threading.Thread(target=self._accept, name="silent-relay", daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = self.sock.accept()
                self.accepted.append(conn)  # held open, never written to

    def stop(self) -> None:
        self.stopped.set()
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent_relay() -> Iterator[SilentRelay]:
    relay = SilentRelay()
    relay.start()
    yield relay
    relay.stop()


def _runtime(project: Project, redis_url: str, smtp_url: str) -> Runtime:
    env = {**project.env, "NOTIFIER_REDIS_URL": redis_url, "NOTIFIER_SMTP_URL": smtp_url}
    return Runtime(Settings.from_env(env))


def _email_batches(rt: Runtime) -> list[delivery.Batch]:
    occurrence = rt.ledger.claim_occurrence("soc-strategy-2019", "opened", at=datetime.now(UTC))
    assert occurrence is not None
    return [b for b in delivery.fan_out(rt, occurrence) if b.channel == EMAIL_CHANNEL]


def _emails(rt: Runtime, batch: delivery.Batch) -> dict[str, Record]:
    """The ledger's e-mail records of the batch's occurrence (less the suppressed), by recipient."""
    records = rt.ledger.records(batch.occurrence_id)
    return {r.recipient: r for r in records if r.channel == EMAIL_CHANNEL and r.status != "suppressed"}


def _deliver_within(rt: Runtime, batch: delivery.Batch, seconds: float) -> float | None:
    """``deliver(rt, batch)`` in a thread; fails if it has not returned after ``seconds``."""
    result: list[float | None] = []
    thread = threading.Thread(target=lambda: result.append(delivery.deliver(rt, batch)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"delivery to a silent relay still running after {seconds} s"
    return result[0]


def test_a_relay_that_never_answers_pauses_the_channel_instead_of_a_timeout_per_message(
    project: Project, redis_url: str, silent_relay: SilentRelay
) -> None:
    url = f"smtp://127.0.0.1:{silent_relay.port}?timeout={TIMEOUT_S:g}"
    rt = _runtime(project, redis_url, url)
    other = _runtime(project, redis_url, url)  # another worker
    try:
        (batch,) = _email_batches(rt)
        assert len(batch.recipients) > 30
        # Before: each message waited the timeout twice (about 70 s here, 1 s timeouts).
        retry = _deliver_within(rt, batch, 8 * TIMEOUT_S)
        assert len(silent_relay.accepted) <= breaker.THRESHOLD, "connections stopped once it was paused"
        records = _emails(rt, batch)
        assert {r.status for r in records.values()} == {"pending"}
        tried = [r for r in records.values() if r.attempts == 1]
        paused = [r for r in records.values() if r.attempts == 0]
        assert tried and all("did not answer within 1 s" in (r.error or "") for r in tried)
        assert len(tried) <= breaker.THRESHOLD * delivery.SEND_CHUNK
        assert len(paused) == len(records) - len(tried) and all("email paused" in (r.error or "") for r in paused)
        pause = 3 * rt.settings.retry_base.total_seconds()
        assert retry is not None and retry >= pause, "re-queued for when the pause ends"

        # Another worker sees the pause at once: nothing is tried, nothing waits.
        start = time.monotonic()
        again = _deliver_within(other, batch, 4 * TIMEOUT_S)
        assert time.monotonic() - start < TIMEOUT_S
        assert again is not None and again > 0
        assert len(silent_relay.accepted) <= breaker.THRESHOLD
        records = _emails(rt, batch)
        assert max(r.attempts for r in records.values()) == 1, "a paused delivery's attempt is not counted"
    finally:
        rt.close()
        other.close()


def test_the_breaker_pauses_longer_each_time_and_closes_on_a_success(redis_client: redis.Redis) -> None:
    gate = Breaker(redis_client, "email", base=0.3)
    assert gate.state().paused_for is None
    assert gate.failed() is None  # one report is not enough
    assert gate.failed() == pytest.approx(0.3)
    assert 0 < (gate.state().paused_for or 0) <= 0.3
    assert gate.failed() is not None, "still paused: reported again, the pause is not extended"
    wait_until(lambda: gate.state().paused_for is None, 5, "the first pause to end")
    assert gate.failed() == pytest.approx(0.6), "half-open: one more failure pauses it for twice as long"
    gate.succeeded()
    assert gate.state() == breaker.State(0, None)
    assert gate.failed() is None, "closed: the count starts again"


def test_a_relay_without_auth_when_the_url_has_credentials_fails_at_once_naming_auth(
    project: Project, redis_url: str, smtp_server: SmtpServer
) -> None:
    url = smtp_server.url.replace("smtp://", "smtp://policy:s3cret-pw@")
    rt = _runtime(project, redis_url, url)
    try:
        (batch,) = _email_batches(rt)
        assert delivery.deliver(rt, batch) is None, "nothing left to retry"
        records = list(_emails(rt, batch).values())
        assert {r.status for r in records} == {"failed"}
        assert {r.attempts for r in records} == {1}
        error = records[0].error or ""
        assert "does not offer AUTH" in error and "NOTIFIER_SMTP_URL" in error
        assert "s3cret-pw" not in error
        assert smtp_server.handler.count() == 0
    finally:
        rt.close()


def test_a_relay_without_starttls_when_the_url_asks_for_it_fails_at_once_naming_starttls(
    project: Project, redis_url: str, smtp_server: SmtpServer
) -> None:
    rt = _runtime(project, redis_url, f"{smtp_server.url}?starttls=1")
    try:
        (batch,) = _email_batches(rt)
        assert delivery.deliver(rt, batch) is None, "nothing left to retry"
        records = list(_emails(rt, batch).values())
        assert {(r.status, r.attempts) for r in records} == {("failed", 1)}
        assert "does not offer STARTTLS" in (records[0].error or "")
        assert smtp_server.handler.count() == 0, "nothing sent in the clear"
    finally:
        rt.close()
