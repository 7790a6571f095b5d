"""The scheduler keeps to the send window: an event set for a Saturday fires on Monday at
the window's opening, not at the time its ``at`` names."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from notifier.config import Settings
from notifier.scheduler import Scheduler
from notifier.service import Service
from tests.conftest import Project, wait_until
from tests.test_scheduler import HeldClock, fired_on_clock

SOC = "soc-strategy-2019"
MONDAY = datetime(2019, 7, 15, 7, 0, tzinfo=UTC)  # 08:00 BST, the window's opening


@pytest.fixture
def service(project: Project, redis_url: str) -> Iterator[Service]:
    project.env["NOTIFIER_REDIS_URL"] = redis_url
    main = project.config / "notifier.yaml"
    main.write_text(main.read_text() + 'send_window: {days: mon-fri, hours: "08:00-18:00"}\n')
    path = project.config / "consultations" / f"{SOC}.yaml"
    path.write_text(re.sub(r"^opens: .*$", "opens: 2019-07-13 09:00", path.read_text(), count=1, flags=re.MULTILINE))
    svc = Service(Settings.from_env(project.env))
    yield svc
    svc.close()


def test_a_saturday_event_is_scheduled_and_fired_at_monday_opening(service: Service) -> None:
    clock = HeldClock(MONDAY - timedelta(seconds=1))
    scheduler = Scheduler(service, clock=clock, reload_every=0.1, renew_every=0.2)
    scheduler.start()
    try:
        assert scheduler.scheduled[f"{SOC}:opened"] == MONDAY
        clock.release()
        wait_until(lambda: service.ledger.fired(SOC, "opened"), 5, "opened to fire")
        occurrence = service.ledger.occurrence(service.ledger.fired(SOC, "opened") or "")
        assert occurrence.at == MONDAY
        assert MONDAY - timedelta(milliseconds=20) <= fired_on_clock(occurrence, clock) < MONDAY + timedelta(seconds=2)
    finally:
        scheduler.stop()
