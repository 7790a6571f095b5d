"""Delivery end to end: a real Redis, a real SMTP server (aiosmtpd) and real Dramatiq workers.

Each test fires an event of a copy of the example through :class:`notifier.service.Service`
(the path ``send`` and the scheduler use) or the ``notifier`` command itself, and checks
what the SMTP server received and what the ledger says.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import dramatiq
import pytest

from notifier.actors import QUEUE
from notifier.channels.email import LANES
from notifier.config import Settings
from notifier.service import Service
from notifier.tokens import verify
from tests.conftest import Project, SmtpServer, wait_until

JANE = "jane.smith@telford-wrekin-csp.example"  # in both the csp and socjag lists
ZOE = "zoe.olafsdottir@shropshire-csp.example"  # a name with accents
UNSUBSCRIBED = "aled.morgan@wwm-crc.example"  # subscribed: false in the example


def example_emails(project: Project) -> set[str]:
    """Every address the example's opened event goes to, from `notifier preview`-free means:
    the resolved audience, via the library (pure, no Redis)."""
    from notifier.audience import resolve
    from notifier.config import load_config
    from notifier.timeline import event

    config = load_config(project.config)
    consultation = config.consultation("soc-strategy-2019")
    audience = resolve(config.lists, event(consultation, "opened", config.tz).audience)
    return {r.key for r in audience.recipients}


@pytest.fixture
def env(project: Project, redis_url: str, smtp_server: SmtpServer) -> dict[str, str]:
    """The project's environment on the test Redis and the test SMTP server."""
    project.env.update({"NOTIFIER_REDIS_URL": redis_url, "NOTIFIER_SMTP_URL": smtp_server.url})
    return project.env


@pytest.fixture
def service(env: dict[str, str]) -> Iterator[Service]:
    """A Service on the test project, closed afterwards."""
    svc = Service(Settings.from_env(env))
    yield svc
    svc.close()


def fire_and_deliver(service: Service, event: str = "opened", *, timeout: float = 60) -> str:
    """Fire ``event`` and run an in-process worker until every delivery is final."""
    occurrence = service.fire("soc-strategy-2019", event)
    assert occurrence is not None
    with service.worker(threads=4):
        progress = service.wait(occurrence, timeout=timeout)
    assert progress.finished, f"not finished in {timeout}s: {progress}"
    return occurrence


# ---------------------------------------------------------------------------
# Who gets what
# ---------------------------------------------------------------------------


def drained(service: Service, worker: dramatiq.Worker) -> None:
    """Wait until the queue is empty and the worker has finished every message it took."""
    service.broker.join(QUEUE, timeout=60_000)
    worker.join()


def test_everyone_in_the_audience_gets_exactly_one_email(
    project: Project, service: Service, smtp_server: SmtpServer
) -> None:
    occurrence = fire_and_deliver(service)

    received = Counter(smtp_server.handler.recipients())
    assert set(received) == example_emails(project)
    assert max(received.values()) == 1
    record = service.ledger.record(occurrence, "email", JANE)
    assert record is not None and record.status == "sent"
    assert set(record.lists) == {"csp", "socjag"}, "the report must show every list that brought her in"


def test_subscribed_false_and_unsubscribed_people_are_not_emailed(service: Service, smtp_server: SmtpServer) -> None:
    service.ledger.suppress(ZOE, "unsubscribed")

    occurrence = fire_and_deliver(service)

    received = set(smtp_server.handler.recipients())
    assert UNSUBSCRIBED not in received
    assert ZOE not in received
    statuses = {r.recipient: r.status for r in service.ledger.records(occurrence)}
    assert statuses[UNSUBSCRIBED] == "suppressed"
    assert statuses[ZOE] == "suppressed"
    assert JANE in received


def test_firing_the_same_event_twice_sends_one_email_per_person(service: Service, smtp_server: SmtpServer) -> None:
    fire_and_deliver(service)
    first = smtp_server.handler.count()

    assert service.fire("soc-strategy-2019", "opened") is None
    with service.worker(threads=2) as worker:
        drained(service, worker)  # anything a second fire enqueued has run
    assert smtp_server.handler.count() == first
    assert max(Counter(smtp_server.handler.recipients()).values()) == 1


def test_duplicate_delivery_messages_in_one_worker_send_each_email_once(
    project: Project, service: Service, smtp_server: SmtpServer
) -> None:
    from notifier import delivery

    occurrence = service.fire("soc-strategy-2019", "opened")
    assert occurrence is not None
    # What a second fire (or a redelivered one) enqueues: every batch again, for the same worker.
    for batch in delivery.fan_out(service.runtime, occurrence):
        service.actors.deliver.send(batch.occurrence_id, batch.channel, list(batch.recipients))
    service.actors.fire.send(occurrence)
    with service.worker(threads=8) as worker:
        assert service.wait(occurrence, timeout=60).finished
        drained(service, worker)  # every duplicate message has run

    received = Counter(smtp_server.handler.recipients())
    assert set(received) == example_emails(project)
    assert max(received.values()) == 1


def test_send_twice_on_the_command_line_says_already_fired(
    env: dict[str, str], project: Project, smtp_server: SmtpServer
) -> None:
    first = project.run("send", "soc-strategy-2019", "opened", "--wait", check=True)
    assert "fired soc-strategy-2019:opened:1" in first.stdout
    count = smtp_server.handler.count()
    assert count == len(example_emails(project))

    second = project.run("send", "soc-strategy-2019", "opened", "--wait")
    assert second.returncode == 0
    assert "already fired" in second.stdout
    assert smtp_server.handler.count() == count

    again = project.run("send", "soc-strategy-2019", "opened", "--wait", "--again", check=True)
    assert "soc-strategy-2019:opened:2" in again.stdout
    assert smtp_server.handler.count() == 2 * count


#: ``notifier send --wait`` processes started at once, and how many times over (see the test).
CONCURRENT_SENDS = 6
CONCURRENT_ROUNDS = 3


def test_sends_started_together_on_one_data_dir_email_everyone_once(project: Project, smtp_server: SmtpServer) -> None:
    """Several ``send --wait`` at once on a fresh embedded data dir: one fires, the others find
    it fired and only wait; with no worker alive each delivers in-process, and still every
    address gets one message. (Before the fix each "already fired" process queued the fan-out
    again and a claim of a worker that had not beaten yet was taken over: doubles.)"""
    expected = example_emails(project)
    project.env["NOTIFIER_SMTP_URL"] = smtp_server.url
    command = [sys.executable, "-m", "notifier", "send", "soc-strategy-2019", "opened", "--wait"]
    for round_ in range(CONCURRENT_ROUNDS):
        env = {**project.env, "NOTIFIER_DATA_DIR": str(project.root / f"var-{round_}")}  # fresh each round
        before = len(smtp_server.handler.recipients())
        sends = [
            subprocess.Popen(
                command, cwd=project.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(CONCURRENT_SENDS)
        ]
        outputs = [p.communicate(timeout=180) for p in sends]
        assert [p.returncode for p in sends] == [0] * CONCURRENT_SENDS, outputs
        assert sum("fired soc-strategy-2019:opened:1" in out for out, _ in outputs) == 1, "one fired it"
        received = Counter(smtp_server.handler.recipients()[before:])
        assert set(received) == expected, f"round {round_}"
        twice = sorted(address for address, n in received.items() if n > 1)
        assert twice == [], f"round {round_}: e-mailed more than once: {twice}"


# ---------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------


def test_a_451_is_retried_and_then_sent_with_the_same_message_id(service: Service, smtp_server: SmtpServer) -> None:
    smtp_server.handler.data_script[ZOE] = ["451 4.3.0 mailbox busy, try later"]

    occurrence = fire_and_deliver(service)

    [refused] = smtp_server.handler.refused
    [accepted] = smtp_server.handler.to(ZOE)
    assert refused["Message-ID"] == accepted["Message-ID"]
    record = service.ledger.record(occurrence, "email", ZOE)
    assert record is not None
    assert (record.status, record.attempts) == ("sent", 2)
    assert record.provider_id == accepted["Message-ID"]


def test_a_550_is_failed_at_once_and_never_retried(service: Service, smtp_server: SmtpServer) -> None:
    smtp_server.handler.always[ZOE] = "550 5.1.1 no such user here"

    occurrence = fire_and_deliver(service)

    record = service.ledger.record(occurrence, "email", ZOE)
    assert record is not None
    assert record.status == "failed"
    assert record.attempts == 1
    assert "550" in (record.error or "") and "no such user" in (record.error or "")
    assert smtp_server.handler.rcpt_attempts[ZOE] == 1
    assert service.progress(occurrence).failed == 1
    # a hard bounce is suppressed from the next event
    assert (service.ledger.suppression(ZOE) or "").startswith("bounced")


def test_send_wait_exits_2_and_report_shows_the_failure(
    env: dict[str, str], project: Project, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.always[ZOE] = "550 5.1.1 no such user here"

    result = project.run("send", "soc-strategy-2019", "opened", "--wait")

    assert result.returncode == 2, result.stderr
    assert ZOE in result.stderr and "550" in result.stderr
    report = project.run("report", "soc-strategy-2019", "--format", "json")
    assert report.returncode == 2
    rows = {(r["channel"], r["recipient"]): r for r in json.loads(report.stdout)["deliveries"]}
    assert rows[("email", ZOE)]["status"] == "failed"
    assert rows[("email", JANE)]["status"] == "sent"
    assert rows[("email", JANE)]["lists"] == "csp socjag"
    assert rows[("email", JANE)]["provider_id"].startswith("<")
    assert rows[("pcc-x", "*")]["status"] == "outbox", "no token: written to the outbox, not posted"


def test_smtp_server_down_then_up_delivers_everything(
    project: Project, service: Service, smtp_server: SmtpServer
) -> None:
    smtp_server.stop()
    occurrence = service.fire("soc-strategy-2019", "opened")
    assert occurrence is not None
    with service.worker(threads=4):
        wait_until(
            lambda: any(r.attempts >= 1 and r.error for r in service.ledger.records(occurrence)),
            30,
            "a failed attempt while the server is down",
        )
        assert smtp_server.handler.count() == 0
        smtp_server.start()
        progress = service.wait(occurrence, timeout=60)

    assert progress.finished and progress.failed == 0
    received = Counter(smtp_server.handler.recipients())
    assert set(received) == example_emails(project)
    assert max(received.values()) == 1


# ---------------------------------------------------------------------------
# The e-mail itself
# ---------------------------------------------------------------------------


def test_headers_name_the_recipient_and_offer_one_click_unsubscribe(service: Service, smtp_server: SmtpServer) -> None:
    fire_and_deliver(service)

    [message] = smtp_server.handler.to(ZOE)
    assert message["To"].addresses[0].display_name == "Zoë Ólafsdóttir"
    assert message["To"].addresses[0].addr_spec == ZOE
    assert message["From"].addresses[0].addr_spec == "policy@pcc.example"
    assert message["Reply-To"] is not None
    assert message["Date"] is not None
    assert "\n" not in str(message["Subject"]) and str(message["Subject"])
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = str(message["List-Unsubscribe"]).strip("<>")
    assert link.startswith("https://notify.pcc.example/unsubscribe/")
    assert verify(b"test-secret-key", link.rsplit("/", 1)[1]) == ZOE
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert "Zoë" in text.get_content()
    assert "Zoë" in html.get_content()
    assert link in text.get_content()


# ---------------------------------------------------------------------------
# A worker killed mid fan-out
# ---------------------------------------------------------------------------

BULK = 2_000
THREADS = 4


def _bulk_project(project: Project) -> None:
    """A consultation whose audience is one CSV list of BULK people."""
    rows = "\n".join(f"Person {i},Org {i % 17},person{i}@bulk.example" for i in range(BULK))
    project.write("config/stakeholders/bulk.csv", "name,organisation,email\n" + rows + "\n")
    project.write(
        "config/consultations/bulk-2019.yaml",
        "title: Bulk consultation\n"
        "url: https://www.pcc.example/consultations/bulk\n"
        "summary: A consultation with a large audience.\n"
        "opens: 2019-07-09 09:00\n"
        "closes: 2019-08-15 23:59\n"
        "audience: [bulk]\n"
        "channels: [email]\n",
    )


def _worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "notifier", "worker", "--threads", str(THREADS)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@contextlib.contextmanager
def _bulk_fan_out(
    env: dict[str, str], project: Project, smtp_server: SmtpServer, *, delay: float, started: int
) -> Iterator[tuple[Service, str, subprocess.Popen[bytes]]]:
    """Fire the bulk consultation and start a worker on it: yields once ``started`` e-mails
    have arrived, for the test to stop that worker its own way."""
    _bulk_project(project)
    smtp_server.handler.delay = delay  # slow enough that the stop lands mid fan-out
    service = Service(Settings.from_env(env))
    try:
        occurrence = service.fire("bulk-2019", "opened")
        assert occurrence is not None
        first = _worker(env)
        try:
            wait_until(lambda: smtp_server.handler.count() >= started, 60, "the first worker to get going")
            yield service, occurrence, first
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
                first.wait()
    finally:
        service.close()


def _finish_with_a_new_worker(env: dict[str, str], service: Service, occurrence: str) -> float:
    """Start another worker, wait until the occurrence is delivered; how long it took."""
    began = time.monotonic()
    second = _worker(env)
    try:
        wait_until(lambda: service.progress(occurrence).finished, 60, "a new worker to deliver every remaining e-mail")
        return time.monotonic() - began
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)


@pytest.mark.slow
def test_a_worker_killed_mid_fan_out_loses_nothing_and_resends_at_most_what_it_had_in_flight(
    env: dict[str, str], project: Project, smtp_server: SmtpServer
) -> None:
    with _bulk_fan_out(env, project, smtp_server, delay=0.01, started=300) as (service, occurrence, first):
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        assert smtp_server.handler.count() < BULK, "the kill must land mid fan-out"
        recovered_in = _finish_with_a_new_worker(env, service, occurrence)
        progress = service.progress(occurrence)

    assert recovered_in < 60
    received = Counter(smtp_server.handler.recipients())
    assert len(received) == BULK, "every recipient got the e-mail"
    twice = [address for address, n in received.items() if n > 1]
    assert max(received.values()) <= 2
    # only e-mails in flight at the kill (accepted, the reply not yet read) may repeat:
    # one per SMTP connection, two connections a thread
    assert len(twice) <= THREADS * LANES, twice
    assert progress.counts["email"].get("sent") == BULK


@pytest.mark.slow
def test_a_worker_stopped_with_sigterm_finishes_cleanly_and_nothing_repeats(
    env: dict[str, str], project: Project, smtp_server: SmtpServer
) -> None:
    with _bulk_fan_out(env, project, smtp_server, delay=0.005, started=200) as (service, occurrence, first):
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0, "a worker told to stop exits cleanly"
        assert smtp_server.handler.count() < BULK, "the stop must land mid fan-out"
        _finish_with_a_new_worker(env, service, occurrence)

    received = Counter(smtp_server.handler.recipients())
    assert len(received) == BULK
    assert max(received.values()) == 1, "a clean stop records everything it sent: no repeats"
