"""The consultation record wired into the delivery path: what settles reaches the database in
batches, and losing Redis (``FLUSHDB`` of the test database, as ``FLUSHALL`` would) loses no
record: ``report`` and ``evidence`` still show every settled delivery, a fired event is not
sent again, and an unsubscribed person stays unsubscribed. Real Redis, a real SMTP server
(aiosmtpd), real SQLite and PostgreSQL (tests/record_fixtures.py)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import event

from notifier.config import Settings
from notifier.scheduler import Scheduler, offset_clock
from notifier.service import Service
from notifier.store import Store, make_engine
from tests.conftest import Project, SmtpServer, wait_until
from tests.test_web import Servers

SOC = "soc-strategy-2019"
JANE = "jane.smith@telford-wrekin-csp.example"


@pytest.fixture
def production(project: Project, redis_url: str, smtp_server: SmtpServer, database: str) -> Project:
    """The example as production runs it: NOTIFIER_REDIS_URL, NOTIFIER_SMTP_URL and
    NOTIFIER_DATABASE_URL (a migrated SQLite file, or PostgreSQL)."""
    project.env.update(
        {
            "NOTIFIER_REDIS_URL": redis_url,
            "NOTIFIER_SMTP_URL": smtp_server.url,
            "NOTIFIER_DATABASE_URL": database,
            "COLUMNS": "300",
        }
    )
    return project


def _report(project: Project) -> dict[str, Any]:
    result = project.run("report", SOC, "--format", "json")
    assert result.returncode in (0, 2), result.stderr  # 2: a delivery failed for good
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def _flush(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()


def test_after_redis_is_flushed_report_and_evidence_show_every_delivery_and_the_event_is_not_sent_again(
    production: Project,
    redis_url: str,
    smtp_server: SmtpServer,
) -> None:
    production.run("send", SOC, "opened", "--wait", check=True)
    sent = smtp_server.handler.count()
    before = _report(production)
    assert sent > 30 and len(before["deliveries"]) > sent  # e-mails, posts, one suppressed

    _flush(redis_url)

    after = _report(production)
    assert after["deliveries"] == before["deliveries"]
    assert after["summary"] == before["summary"]
    evidence = production.run("evidence", SOC, "--out", str(production.root / "pack"), check=True)
    assert "Serious and Organised Crime Strategy" in evidence.stdout
    with (production.root / "pack" / "deliveries.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(before["deliveries"])
    jane = next(r for r in rows if r["recipient"] == JANE)
    assert jane["status"] == "sent" and jane["message_id"] == str(smtp_server.handler.to(JANE)[0]["Message-ID"])

    again = production.run("send", SOC, "opened", "--wait")
    assert again.returncode == 0, again.stderr
    assert "already fired (soc-strategy-2019:opened:1)" in again.stdout
    assert smtp_server.handler.count() == sent, "a fired event was sent again after Redis lost it"

    plan = production.run("plan", SOC, check=True).stdout.splitlines()
    assert "fired" in next(line for line in plan if " opened " in line)

    anew = production.run("send", SOC, "opened", "--again", check=True)
    assert "fired soc-strategy-2019:opened:2" in anew.stdout, "--again numbers after what the record holds"


def test_an_unsubscribed_person_stays_unsubscribed_after_redis_is_flushed(
    production: Project,
    redis_url: str,
    smtp_server: SmtpServer,
) -> None:
    production.run("send", SOC, "opened", "--wait", check=True)
    link = str(smtp_server.handler.to(JANE)[0]["List-Unsubscribe"]).strip("<>")
    settings = Settings.from_env(production.settings_env())
    servers = Servers()  # a live `notifier web` (starlette's TestClient warns that it is deprecated)
    try:
        base = servers.start(settings.model_copy(update={"web_bind": "127.0.0.1:0"}))
        assert httpx.post(base + link.removeprefix(settings.public_url), timeout=30).status_code == 200
    finally:
        servers.stop()

    _flush(redis_url)
    production.run("send", SOC, "reminder", "--wait", check=True)

    assert len(smtp_server.handler.to(JANE)) == 1, "the reminder went to someone who had unsubscribed"
    jane = [r for r in _report(production)["deliveries"] if r["recipient"] == JANE]
    assert [(r["occurrence"], r["status"], r["last_error"]) for r in jane] == [
        (f"{SOC}:opened:1", "sent", ""),
        (f"{SOC}:reminder:1", "suppressed", "unsubscribed"),
    ]
    store = Store(make_engine(production.env["NOTIFIER_DATABASE_URL"]))
    try:
        suppression = store.suppression(JANE)
        assert suppression is not None and suppression.source == "unsubscribe"
        assert store.suppression("aled.morgan@wwm-crc.example") is not None  # subscribed: false, source config
        actions = [(e.actor.split(":")[0], e.action) for e in store.audit_entries(SOC)]
        assert actions == [("cli", "send reminder"), ("cli", "send opened")]
    finally:
        store.close()


def test_a_bounced_address_stays_suppressed_after_redis_is_flushed(
    production: Project,
    redis_url: str,
    smtp_server: SmtpServer,
) -> None:
    smtp_server.handler.always[JANE] = "550 5.1.1 no such user"
    assert production.run("send", SOC, "opened", "--wait").returncode == 2  # a delivery failed for good
    tried = smtp_server.handler.rcpt_attempts[JANE]

    _flush(redis_url)
    production.run("send", SOC, "reminder", "--wait", check=True)

    assert smtp_server.handler.rcpt_attempts[JANE] == tried, "the reminder was tried on an address that bounced"
    jane = {r["occurrence"]: r for r in _report(production)["deliveries"] if r["recipient"] == JANE}
    assert jane[f"{SOC}:opened:1"]["status"] == "failed"
    assert jane[f"{SOC}:reminder:1"]["status"] == "suppressed"
    assert jane[f"{SOC}:reminder:1"]["last_error"].startswith("bounced: 550 5.1.1")
    store = Store(make_engine(production.env["NOTIFIER_DATABASE_URL"]))
    try:
        suppression = store.suppression(JANE)
        assert suppression is not None and suppression.source == "bounce"
    finally:
        store.close()


def test_retry_after_redis_is_flushed_sends_the_failed_deliveries_from_the_record_once(
    production: Project,
    redis_url: str,
    smtp_server: SmtpServer,
) -> None:
    production.env["NOTIFIER_MAX_ATTEMPTS"] = "1"
    smtp_server.handler.always[JANE] = "451 4.3.0 relay unavailable"  # out of attempts: failed
    assert production.run("send", SOC, "opened", "--wait").returncode == 2
    delivered = smtp_server.handler.count()

    _flush(redis_url)
    del smtp_server.handler.always[JANE]  # the relay is back
    result = production.run("retry", SOC, "opened", "--wait")
    assert result.returncode == 0, result.stderr
    assert f"retrying 1 failed delivery of {SOC}:opened:1" in result.stdout
    assert smtp_server.handler.count() == delivered + 1 and len(smtp_server.handler.to(JANE)) == 1

    again = production.run("retry", SOC, "opened", "--wait")
    assert again.returncode == 0 and "no failed deliveries; nothing to retry" in again.stdout
    _flush(redis_url)
    assert "nothing to retry" in production.run("retry", SOC, "opened", "--wait", check=True).stdout
    assert smtp_server.handler.count() == delivered + 1, "a retried delivery was sent twice"
    jane = [r for r in _report(production)["deliveries"] if r["recipient"] == JANE]
    assert [(r["occurrence"], r["status"]) for r in jane] == [(f"{SOC}:opened:1", "sent")]


@pytest.fixture
def crowd(project: Project, redis_url: str, smtp_server: SmtpServer, database: str) -> Iterator[Service]:
    """A Service on the example with 600 more people on the media list, on a real SMTP server."""
    with (project.config / "stakeholders" / "media.csv").open("a", newline="") as f:
        writer = csv.writer(f)
        for i in range(600):
            writer.writerow([f"reader{i}@papers.example", f"Reader {i}", "Papers", "Reader"])
    env = {
        **project.settings_env(),
        "NOTIFIER_REDIS_URL": redis_url,
        "NOTIFIER_SMTP_URL": smtp_server.url,
        "NOTIFIER_DATABASE_URL": database,
    }
    service = Service(Settings.from_env(env))
    try:
        yield service
    finally:
        service.close()


def test_outcomes_reach_the_database_in_a_few_batches_not_one_commit_per_email(
    crowd: Service,
    smtp_server: SmtpServer,
) -> None:
    store = crowd.store
    commits: list[int] = []
    rows: list[int] = []
    event.listen(store.engine, "commit", lambda conn: commits.append(1))
    event.listen(
        store.engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, params, context, executemany: rows.append(
            (len(params) if executemany else 1) if statement.startswith("INSERT INTO deliveries") else 0
        ),
    )

    occurrence_id = crowd.fire(SOC, "opened", actor="test")
    assert occurrence_id is not None
    commits.clear()  # those of recording the firing (consultation, lists, occurrence, audit)
    with crowd.worker(threads=4):
        crowd.wait(occurrence_id, timeout=120)
    crowd.archive(occurrence_id)

    emails = smtp_server.handler.count()
    assert emails > 600
    archived = {s.recipient: s.status for event_name, s in store.deliveries(SOC) if s.channel == "email"}
    assert sum(status == "sent" for status in archived.values()) == emails
    batches = [n for n in rows if n]
    assert sum(batches) >= emails
    print(f"{emails} e-mails: {len(commits)} commits, archive batches {batches}")
    assert len(commits) <= emails / 20, f"{len(commits)} commits for {emails} e-mails"
    assert len(batches) <= emails / 20, f"{len(batches)} archive statements for {emails} e-mails"


def test_the_scheduler_does_not_fire_again_what_the_record_says_fired_after_redis_is_flushed(
    crowd: Service,
    smtp_server: SmtpServer,
    redis_url: str,
) -> None:
    occurrence_id = crowd.fire(SOC, "opened", actor="test")
    assert occurrence_id is not None
    with crowd.worker(threads=4):
        crowd.wait(occurrence_id, timeout=120)
    crowd.archive(occurrence_id)
    sent = smtp_server.handler.count()
    opened = crowd.config().consultation(SOC).opens
    assert opened is not None

    _flush(redis_url)
    scheduler = Scheduler(crowd, clock=offset_clock(opened + timedelta(minutes=1)), reload_every=0.1, renew_every=0.2)
    scheduler.start()
    try:
        states = {s.event.name: s for s in scheduler.status()}
        assert states["opened"].state == "fired"
        assert states["opened"].occurrence is not None and states["opened"].occurrence.id == occurrence_id
        wait_until(lambda: scheduler.is_leader, 5, "the scheduler to lead")
    finally:
        scheduler.stop()  # waits for a tick in progress
    assert crowd.ledger.fired(SOC, "opened") == occurrence_id
    assert smtp_server.handler.count() == sent
    assert [e.actor for e in crowd.store.audit_entries(SOC)] == ["test"]
