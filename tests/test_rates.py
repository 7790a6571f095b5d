"""Rate limits and daily caps: held in Redis across worker processes, counted per local
day, postponing without burning attempts, and slowed by a relay's "too many" replies."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from notifier import delivery
from notifier.channels.email.smtp import translate
from notifier.config import Settings
from notifier.errors import InvalidValueError, ThrottledError, TransientDeliveryError
from notifier.pace import HEADROOM, Limits, Pacer, Rate, finish
from notifier.runtime import Runtime
from notifier.service import Service
from notifier.window import SendWindow, parse_days
from tests.conftest import Project, ScriptedHandler, SmtpServer, free_port, wait_until

LONDON = ZoneInfo("Europe/London")


class TimedHandler(ScriptedHandler):
    """A ScriptedHandler that also notes when each message arrived (``time.monotonic``)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[float] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        with self.lock:
            self.arrivals.append(time.monotonic())
        return reply


@pytest.fixture
def timed_smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(TimedHandler(), free_port())
    server.start()
    yield server
    server.stop()


def _campaign(project: Project, redis_url: str, smtp: SmtpServer, people: int, email: str) -> None:
    """A consultation to ``people`` addresses, e-mail only, with ``email`` added to the email settings."""
    rows = "\n".join(f"Person {i},person{i}@many.example" for i in range(people))
    project.write("config/stakeholders/many.csv", "name,email\n" + rows + "\n")
    project.write(
        "config/consultations/many-2027.yaml",
        "title: A consultation for many\n"
        "url: https://www.pcc.example/consultations/many\n"
        "summary: A consultation with a rate-limited audience.\n"
        "opens: 2027-03-03 10:00\n"
        "closes: 2027-04-15 23:59\n"
        "audience: [many]\n"
        "channels: [email]\n",
    )
    main = project.config / "notifier.yaml"
    main.write_text(
        main.read_text().replace("  reply_to: policy@pcc.example\n", f"  reply_to: policy@pcc.example\n{email}")
    )
    project.env.update({"NOTIFIER_REDIS_URL": redis_url, "NOTIFIER_SMTP_URL": smtp.url, "COLUMNS": "300"})


def _busiest_second(arrivals: list[float]) -> int:
    """The most arrivals in any one-second span (closed at both ends)."""
    times, most, start = sorted(arrivals), 0, 0
    for end, t in enumerate(times):
        while t - times[start] > 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def _worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "notifier", "worker", "--threads", "4"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.mark.slow
def test_two_workers_together_keep_to_twenty_a_second_and_deliver_everyone(
    project: Project, redis_url: str, timed_smtp: SmtpServer
) -> None:
    _campaign(project, redis_url, timed_smtp, 200, "  rate: 20/second\n")
    service = Service(Settings.from_env(project.env))
    workers = [_worker(project.env), _worker(project.env)]
    try:
        occurrence = service.fire("many-2027", "opened", early=True)
        assert occurrence is not None
        wait_until(lambda: service.progress(occurrence).finished, 90, "every e-mail to be sent")
        progress = service.progress(occurrence)
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=60)
        service.close()
    handler = timed_smtp.handler
    assert isinstance(handler, TimedHandler)
    received = Counter(handler.recipients())
    assert len(received) == 200 and max(received.values()) == 1
    assert progress.counts["email"].get("sent") == 200
    assert _busiest_second(handler.arrivals) <= 22, sorted(handler.arrivals)
    # no attempt was burnt waiting for a slot
    records = Service(Settings.from_env(project.env))
    try:
        assert {r.attempts for r in records.ledger.records(occurrence)} == {1}
    finally:
        records.close()


class Clock:
    """A clock a test turns by hand: Unix seconds, starting at ``start`` and moving with real time."""

    def __init__(self, start: datetime) -> None:
        self.offset = start.timestamp() - time.time()

    def __call__(self) -> float:
        return time.time() + self.offset

    def turn_to(self, moment: datetime) -> None:
        self.offset = moment.timestamp() - time.time()


def _deliver_all(rt: Runtime, occurrence: str, message_id: str) -> list[float]:
    """Fan out (idempotently) and deliver every batch once in this process; each batch's wait until its retry."""
    waits = []
    for batch in delivery.fan_out(rt, occurrence):
        wait = delivery.deliver(rt, batch, message_id=message_id)
        if wait is not None:
            waits.append(wait)
    return waits


def test_a_daily_cap_sends_fifty_today_and_the_other_thirty_when_the_day_turns(
    project: Project, redis_url: str, smtp_server: SmtpServer
) -> None:
    _campaign(project, redis_url, smtp_server, 80, "  daily: 50\n")
    clock = Clock(datetime(2027, 3, 3, 10, 0, tzinfo=LONDON))
    service = Service(Settings.from_env(project.env))
    rt = Runtime(Settings.from_env(project.env), clock=clock)
    try:
        occurrence = service.fire("many-2027", "opened", early=True)
        assert occurrence is not None
        waits = _deliver_all(rt, occurrence, "message-1")
        assert smtp_server.handler.count() == 50
        statuses = Counter((r.status, r.attempts) for r in service.ledger.records(occurrence))
        assert statuses == {("sent", 1): 50, ("pending", 0): 30}
        # the batch comes back at midnight, local time: 14 hours on
        assert waits and abs(max(waits) - 14 * 3600) < 60
        assert _deliver_all(rt, occurrence, "message-1") and smtp_server.handler.count() == 50  # still today

        clock.turn_to(datetime(2027, 3, 4, 0, 0, 5, tzinfo=LONDON))
        assert _deliver_all(rt, occurrence, "message-1") == []
        received = Counter(smtp_server.handler.recipients())
        assert len(received) == 80 and max(received.values()) == 1
        assert service.progress(occurrence).counts["email"] == {"sent": 80}
    finally:
        rt.close()
        service.close()


def test_a_capped_day_resumes_when_the_send_window_next_opens(
    project: Project, redis_url: str, smtp_server: SmtpServer
) -> None:
    _campaign(project, redis_url, smtp_server, 12, "  daily: 10\n")
    main = project.config / "notifier.yaml"
    main.write_text(main.read_text() + 'send_window: {days: mon-fri, hours: "08:00-18:00"}\n')
    friday = datetime(2027, 3, 5, 17, 0, tzinfo=LONDON)
    rt = Runtime(Settings.from_env(project.env), clock=Clock(friday))
    service = Service(Settings.from_env(project.env))
    try:
        occurrence = service.fire("many-2027", "opened", early=True)
        assert occurrence is not None
        waits = _deliver_all(rt, occurrence, "message-1")
        monday = datetime(2027, 3, 8, 8, 0, tzinfo=LONDON)
        assert smtp_server.handler.count() == 10
        assert abs(max(waits) - (monday - friday).total_seconds()) < 60
        pending = [r for r in service.ledger.records(occurrence) if r.status == "pending"]
        assert len(pending) == 2 and "continues Mon 08 Mar 08:00 GMT" in str(pending[0].error)
    finally:
        rt.close()
        service.close()


def test_a_relay_saying_too_many_slows_down_without_burning_an_attempt(
    project: Project, redis_url: str, smtp_server: SmtpServer
) -> None:
    _campaign(project, redis_url, smtp_server, 3, "  rate: 600/minute\n")
    smtp_server.handler.script["person1@many.example"] = ["421 4.7.0 Too many messages, slow down"]
    rt = Runtime(Settings.from_env(project.env))
    service = Service(Settings.from_env(project.env))
    try:
        occurrence = service.fire("many-2027", "opened", early=True)
        assert occurrence is not None
        waits = _deliver_all(rt, occurrence, "message-1")
        record = service.ledger.record(occurrence, "email", "person1@many.example")
        assert record is not None and record.status == "pending" and record.attempts == 0
        assert "slow down" in str(record.error)
        assert waits and max(waits) >= 30  # the relay is given time
        assert rt.client.get("notifier:pace:email:slow") == b"2"  # every worker now sends at half the rate
        assert _deliver_all(rt, occurrence, "message-1") == []
        assert sorted(smtp_server.handler.recipients()) == [f"person{i}@many.example" for i in range(3)]
    finally:
        rt.close()
        service.close()


def test_plan_shows_when_a_capped_campaign_will_finish(
    project: Project, redis_url: str, smtp_server: SmtpServer
) -> None:
    _campaign(project, redis_url, smtp_server, 36, "  rate: 30/minute\n  daily: 20\n")
    line = next(line for line in project.run("plan", "many-2027", check=True).stdout.splitlines() if " opened " in line)
    assert "Finishes" in project.run("plan", "many-2027", check=True).stdout
    # 20 on Wednesday from 10:00 (38 s), the other 16 from Thursday 00:00 (30 s)
    assert "Thu 04 Mar 2027 00:00 GMT" in line


def test_the_service_says_when_a_rate_limited_event_will_finish(
    project: Project, redis_url: str, smtp_server: SmtpServer
) -> None:
    _campaign(project, redis_url, smtp_server, 61, "  rate: 30/minute\n")
    service = Service(Settings.from_env(project.env))
    try:
        start = datetime(2027, 3, 3, 10, 0, tzinfo=LONDON)
        # 60 gaps of 2 s, and the 5% headroom that keeps arrivals under the relay's limit
        expected = start + timedelta(seconds=60 * 2 * HEADROOM)
        assert service.finishes("many-2027", "opened") == expected
        assert service.finishes("many-2027", "opened", start + timedelta(hours=1)) == expected + timedelta(hours=1)
        assert service.finishes("many-2027", "outcome") is None  # on demand: no time to start from
    finally:
        service.close()


def test_the_outbox_is_not_held_to_the_relays_rate(project: Project, redis_url: str, smtp_server: SmtpServer) -> None:
    _campaign(project, redis_url, smtp_server, 5, "  rate: 1/hour\n")
    del project.env["NOTIFIER_SMTP_URL"]  # e-mail goes to the Maildir outbox: no relay to overwhelm
    result = project.run("send", "many-2027", "opened", "--wait", "--early", timeout=60, check=True)
    assert "│ email   │    0 │      5 │" in result.stdout, result.stdout
    assert len(list((project.data / "outbox" / "email" / "new").iterdir())) == 5


def test_a_relay_that_keeps_saying_too_many_pauses_a_channel_without_a_rate_and_burns_no_attempt(
    project: Project, redis_url: str, smtp_server: SmtpServer
) -> None:
    _campaign(project, redis_url, smtp_server, 3, "")
    for i in range(3):
        smtp_server.handler.always[f"person{i}@many.example"] = "451 4.7.500 Server busy, too many messages"
    rt = Runtime(Settings.from_env(project.env))
    service = Service(Settings.from_env(project.env))
    try:
        occurrence = service.fire("many-2027", "opened", early=True)
        assert occurrence is not None
        for _ in range(3):
            _deliver_all(rt, occurrence, "message-1")
        records = service.ledger.records(occurrence)
        assert {(r.status, r.attempts) for r in records} == {("pending", 0)}
        assert all("paused" in str(r.error) for r in records), [r.error for r in records]
        assert max(smtp_server.handler.rcpt_attempts.values()) == 2  # the third round did not ask the relay
    finally:
        rt.close()
        service.close()


@pytest.mark.parametrize(
    ("text", "per_second"), [("30/minute", 0.5), ("20/second", 20.0), ("500/hour", 500 / 3600), ("2 / minutes", 1 / 30)]
)
def test_a_rate_is_read_per_second_minute_or_hour(text: str, per_second: float) -> None:
    rate = Rate.parse(text)
    assert rate.limit / rate.period == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["30", "30/day", "0/minute", "-1/second", "thirty/minute"])
def test_a_rate_without_a_count_per_second_minute_or_hour_is_refused(text: str) -> None:
    with pytest.raises(InvalidValueError, match="per second, minute or hour"):
        Rate.parse(text)


def test_a_campaign_over_the_daily_cap_finishes_on_a_later_working_day() -> None:
    window = SendWindow(days=parse_days("mon-fri"), opens=dtime(8), closes=dtime(18))
    limits = Limits(rate=None, daily=100, tz=LONDON, window=window)
    friday = datetime(2027, 10, 29, 9, 0, tzinfo=LONDON)
    # 100 on Friday, 100 on Monday 1 November (after the clocks went back), the last 50 on Tuesday
    assert finish(limits, 250, friday) == datetime(2027, 11, 2, 8, 0, tzinfo=LONDON)
    assert finish(limits, 100, friday) == friday
    assert finish(Limits(rate=None, daily=None, tz=LONDON), 100, friday) is None


def test_a_batch_behind_another_workers_waits_for_its_slots_and_keeps_them_for_its_retry(
    project: Project, redis_url: str, smtp_server: SmtpServer
) -> None:
    _campaign(project, redis_url, smtp_server, 30, "  rate: 10/second\n")
    clock = Clock(datetime(2027, 3, 3, 10, 0, tzinfo=LONDON))
    rt = Runtime(Settings.from_env(project.env), clock=clock)
    service = Service(Settings.from_env(project.env))
    rate = Rate.parse("10/second")
    limits = Limits(rate, None, LONDON)
    try:
        occurrence = service.fire("many-2027", "opened", early=True)
        assert occurrence is not None
        began = clock()
        # another worker's batch takes the next 5 s of slots (its thread does not wait here)
        other = Pacer(rt.client, "email", limits, "another-workers-message", clock=clock, sleep=lambda _: None)
        other.send(list(range(50)), lambda _: None, lambda _i, _e: None, wanted=50, most=1)
        ahead = float(rt.client.get("notifier:pace:email:tat") or 0)

        waits = _deliver_all(rt, occurrence, "message-1")
        assert smtp_server.handler.count() == 0
        assert {(r.status, r.attempts) for r in service.ledger.records(occurrence)} == {("pending", 0)}
        assert waits and 3.0 < max(waits) < 5.0  # back a little before its first slot, 5 s on

        clock.turn_to(datetime.fromtimestamp(began + max(waits), LONDON))
        assert _deliver_all(rt, occurrence, "message-1") == []
        assert smtp_server.handler.count() == 30
        # it sent on the slots it had reserved: the schedule did not move on
        assert float(rt.client.get("notifier:pace:email:tat") or 0) == pytest.approx(ahead + 30 * rate.interval)
    finally:
        rt.close()
        service.close()


@pytest.mark.parametrize(
    ("code", "reply", "throttled"),
    [
        (421, b"4.7.0 Too many connections from your IP", True),
        (451, b"4.7.500 Server busy. Please try again later", True),
        (451, b"4.7.1 Message throttled, rate limit exceeded", True),
        (451, b"4.7.1 greylisted, try later", False),
        (421, b"4.3.2 Service shutting down", False),
        (450, b"4.2.1 too many messages for this mailbox", False),
    ],
)
def test_only_a_421_or_451_about_sending_too_fast_slows_the_channel(code: int, reply: bytes, throttled: bool) -> None:
    error = translate(smtplib.SMTPRecipientsRefused({"a@b.example": (code, reply)}))
    assert isinstance(error, TransientDeliveryError)
    assert isinstance(error, ThrottledError) is throttled
