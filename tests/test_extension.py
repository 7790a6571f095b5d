"""Deadline extensions: moving ``closes`` later after ``opened`` fired announces it once, through
the real scheduler, workers, Redis and SMTP server (aiosmtpd), however often the config is
reloaded; moving it earlier is refused by ``validate``."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from notifier import extension
from notifier.config import Settings, load_config
from notifier.ledger import Ledger
from notifier.scheduler import Scheduler, offset_clock
from notifier.service import Service
from tests.conftest import Project, SmtpServer, wait_until
from tests.test_scheduler import CONSULTATION, LONDON, SOC, edit

ACCOUNTS = ("pcc-x", "pcc-facebook", "pcc-website", "police-website")
EXTENDED = "Deadline extended"


@pytest.fixture
def example(project: Project, redis_url: str, smtp_server: SmtpServer) -> Project:
    """The bundled example on the test Redis and SMTP server, its ``opened`` sent."""
    project.env.update({"NOTIFIER_REDIS_URL": redis_url, "NOTIFIER_SMTP_URL": smtp_server.url, "COLUMNS": "300"})
    project.run("send", SOC, "opened", "--wait", check=True)
    return project


@pytest.fixture
def service(example: Project) -> Iterator[Service]:
    found = Service(Settings.from_env(example.env))
    yield found
    found.close()


def posts(project: Project, account: str, event: str) -> list[dict[str, object]]:
    path = project.data / "outbox" / "social" / f"{account}.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [entry for entry in map(json.loads, lines) if entry["event"] == event]


def extended_to(smtp: SmtpServer) -> Counter[str]:
    with smtp.handler.lock:
        return Counter(str(m["To"]) for m in smtp.handler.messages if str(m["Subject"]).startswith(EXTENDED))


def test_extending_a_consultation_tells_each_stakeholder_and_account_once_however_often_it_is_reloaded(
    example: Project, smtp_server: SmtpServer, service: Service
) -> None:
    told = smtp_server.handler.count()
    edit(example, CONSULTATION, r"^closes: .*$", "closes: 2019-08-22 23:59")
    plan = example.run("plan", SOC, check=True).stdout
    assert "extended" in plan and "due" in plan

    scheduler = Scheduler(service, clock=offset_clock(datetime(2019, 8, 1, 12, 0, tzinfo=UTC)), reload_every=0.1)
    with service.worker(threads=4):
        scheduler.start()
        try:
            for n in range(4):  # the config reloaded again and again: still one announcement
                (example.config / "consultations" / f"{SOC}.yaml").write_text(
                    (example.config / "consultations" / f"{SOC}.yaml").read_text() + f"\n# reloaded {n}\n"
                )
                assert scheduler.reload()
                scheduler.catch_up()
            occurrence = service.ledger.fired(SOC, "extended")
            assert occurrence is not None
            wait_until(lambda: service.progress(occurrence).finished, 60, "the extension to be delivered")
            assert scheduler.scheduled[f"{SOC}:reminder"] == datetime(2019, 8, 15, 22, 59, tzinfo=UTC)
            assert scheduler.scheduled[f"{SOC}:closed"] == datetime(2019, 8, 22, 22, 59, tzinfo=UTC)
        finally:
            scheduler.stop()

    counts = extended_to(smtp_server)
    assert len(counts) == told and set(counts.values()) == {1}, "one e-mail per stakeholder told of the opening"
    assert all(len(posts(example, account, "extended")) == 1 for account in ACCOUNTS)
    message = next(m for m in smtp_server.handler.messages if str(m["Subject"]).startswith(EXTENDED))
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "now closes at 11:59pm on 22 August 2019, instead of 11:59pm on 15 August 2019" in text
    assert [o.event for o in service.ledger.occurrences(SOC)].count("extended") == 1
    assert "fired" in example.run("plan", SOC, check=True).stdout.split("extended", 1)[1].splitlines()[0]


def test_moving_closes_earlier_after_opened_fired_is_refused_by_validate(example: Project) -> None:
    edit(example, CONSULTATION, r"^closes: .*$", "closes: 2019-08-10 23:59")
    result = example.run("validate")
    assert result.returncode == 1
    assert "soc-strategy-2019.yaml:" in result.stdout + result.stderr
    assert "closes cannot move earlier than announced" in result.stdout + result.stderr
    assert "15 Aug 2019" in result.stdout + result.stderr


def test_changing_closes_after_closed_fired_is_refused_by_validate(example: Project) -> None:
    example.run("send", SOC, "closed", "--wait", check=True)
    edit(example, CONSULTATION, r"^closes: .*$", "closes: 2019-08-30 23:59")
    result = example.run("validate")
    assert result.returncode == 1 and "closes cannot change: the consultation closed" in result.stdout + result.stderr


def test_an_extension_with_its_own_at_waits_for_it_and_plan_shows_it_scheduled(
    project: Project, redis_url: str
) -> None:
    project.env["NOTIFIER_REDIS_URL"] = redis_url
    ledger = Ledger(redis.Redis.from_url(redis_url))
    config = load_config(project.config)
    opened = ledger.claim_occurrence(SOC, "opened", at=datetime(2019, 7, 9, 8, 0, tzinfo=UTC))
    assert opened is not None
    extension.remember(ledger, opened, config.consultation(SOC).closes)
    edit(project, CONSULTATION, r"^closes: .*$", "closes: 2019-08-22 23:59")
    edit(project, CONSULTATION, r"^  closed:$", "  extended:\n    at: 2030-01-07 09:00\n  closed:")
    moved = load_config(project.config).consultation(SOC)
    due = extension.pending(ledger, moved, LONDON, datetime(2019, 8, 1, tzinfo=UTC))
    assert due is not None and due.at == datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
    assert due.previous == datetime(2019, 8, 15, 22, 59, tzinfo=UTC)
    row = next(line for line in project.run("plan", SOC, check=True).stdout.splitlines() if "extended" in line)
    assert "07 Jan 2030 09:00" in row and "scheduled" in row


def test_an_extension_after_redis_lost_everything_is_still_announced(example: Project, redis_url: str) -> None:
    redis.Redis.from_url(redis_url).flushdb()  # as FLUSHALL: the record alone knows opened told 15 August
    edit(example, CONSULTATION, r"^closes: .*$", "closes: 2019-08-22 23:59")
    row = next((line for line in example.run("plan", SOC, check=True).stdout.splitlines() if "extended" in line), "")
    assert "due" in row, "the record remembers the closes opened told, so the move is an extension"
    service = Service(Settings.from_env(example.env))
    try:
        moved = load_config(example.config).consultation(SOC)
        due = extension.pending(service.ledger, moved, LONDON, datetime(2019, 8, 1, tzinfo=UTC))
        assert due is not None and due.previous == datetime(2019, 8, 15, 22, 59, tzinfo=UTC)
    finally:
        service.close()


def test_an_extension_tells_only_those_the_opening_reached(
    example: Project, smtp_server: SmtpServer, service: Service
) -> None:
    told = smtp_server.handler.count()
    newcomer = "new.person@telford-wrekin-csp.example"
    edit(
        example,
        "config/stakeholders/community-safety.yaml",
        r"^    members:$",
        f"    members:\n      - {{name: New Person, organisation: Telford & Wrekin CSP, email: {newcomer}}}",
    )
    edit(example, CONSULTATION, r"^closes: .*$", "closes: 2019-08-22 23:59")
    scheduler = Scheduler(service, clock=offset_clock(datetime(2019, 8, 1, 12, 0, tzinfo=UTC)), reload_every=0.1)
    with service.worker(threads=4):
        scheduler.start()
        try:
            scheduler.catch_up()
            occurrence = service.ledger.fired(SOC, "extended")
            assert occurrence is not None
            wait_until(lambda: service.progress(occurrence).finished, 60, "the extension to be delivered")
        finally:
            scheduler.stop()
    counts = extended_to(smtp_server)
    assert len(counts) == told, "everyone the opening told, once"
    assert not any(newcomer in to for to in counts), "someone added since was never told the first date"
    assert all(len(posts(example, account, "extended")) == 1 for account in ACCOUNTS)
