"""The scheduler on a real Redis: on time, once, with two schedulers, across restarts,
reloads and clock changes.

The example's events are in 2019, so each test gives the scheduler a clock that reads a
moment just before the event. APScheduler waits in real time, and a machine shared with
others can take seconds to start a scheduler: a :class:`HeldClock` stands still while the
test sets the scheduler up and only starts advancing, in real time, once the test releases
it, so whether the scheduler was ready before the event never depends on the machine's speed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis

from notifier import timeline
from notifier.config import Settings
from notifier.ledger import Ledger, Occurrence
from notifier.scheduler import LEADER_KEY, Scheduler, offset_clock, serve, state_of, status
from notifier.service import Service
from tests.conftest import ROOT, Project, wait_until

SOC = "soc-strategy-2019"
OPENED = datetime(2019, 7, 9, 8, 0, tzinfo=UTC)  # opens: 2019-07-09 09:00 BST
LONDON = ZoneInfo("Europe/London")
CONSULTATION = "config/consultations/soc-strategy-2019.yaml"


class HeldClock:
    """A clock that reads ``moment`` until :meth:`release`, then advances in real time from it."""

    def __init__(self, moment: datetime) -> None:
        self.moment = moment
        self.offset: timedelta | None = None

    def __call__(self) -> datetime:
        offset = self.offset
        return self.moment if offset is None else datetime.now(UTC) + offset

    def release(self) -> None:
        """Let time run, from the moment held."""
        self.offset = self.moment - datetime.now(UTC)


def occurrences(ledger: Ledger, consultation: str = SOC, event: str | None = None) -> list[Occurrence]:
    """Every occurrence of the consultation (of ``event`` only, if given)."""
    return [o for o in ledger.occurrences(consultation) if event is None or o.event == event]


def fired_on_clock(occurrence: Occurrence, clock: Callable[[], datetime]) -> datetime:
    """When the occurrence was claimed, on the (offset) clock rather than in real time."""
    return occurrence.fired_at + (clock() - datetime.now(UTC))


def edit(project: Project, relative: str, pattern: str, replacement: str) -> None:
    """Replace the one line of a project file matching ``pattern``."""
    path = project.root / relative
    text, n = re.subn(pattern, replacement, path.read_text(), count=1, flags=re.MULTILINE)
    assert n == 1, f"{pattern!r} not in {relative}"
    path.write_text(text)


def local(moment: datetime) -> str:
    """``moment`` as the config writes a local time, to the second."""
    return moment.astimezone(LONDON).strftime("%Y-%m-%d %H:%M:%S")


@pytest.fixture
def settings(project: Project, redis_url: str) -> Settings:
    """Settings of the example project on the test Redis."""
    project.env["NOTIFIER_REDIS_URL"] = redis_url
    return Settings.from_env(project.env)


@pytest.fixture
def services(settings: Settings) -> Iterator[Callable[[], Service]]:
    """Makes Services on the test project (one per scheduler process), closed afterwards."""
    made: list[Service] = []

    def make() -> Service:
        made.append(Service(settings))
        return made[-1]

    yield make
    for service in made:
        service.close()


@pytest.fixture
def service(services: Callable[[], Service]) -> Service:
    """A Service on the test project."""
    return services()


@pytest.fixture
def start(service: Service) -> Iterator[Callable[..., Scheduler]]:
    """Starts schedulers (fast reload and lease renewal) and stops them all afterwards."""
    started: list[Scheduler] = []

    def make(clock: Callable[[], datetime], svc: Service | None = None, **options: float) -> Scheduler:
        options = {"reload_every": 0.1, "renew_every": 0.2, **options}
        scheduler = Scheduler(svc or service, clock=clock, **options)  # type: ignore[arg-type]
        scheduler.start()
        started.append(scheduler)
        return scheduler

    yield make
    for scheduler in started:
        scheduler.stop()


# ---------------------------------------------------------------------------
# On time, once
# ---------------------------------------------------------------------------


def test_an_event_fires_within_a_second_of_its_time_and_is_delivered(
    service: Service, start: Callable[..., Scheduler]
) -> None:
    clock = HeldClock(OPENED - timedelta(seconds=1))
    with service.worker(threads=4):
        scheduler = start(clock)
        assert scheduler.is_leader
        assert scheduler.scheduled[f"{SOC}:opened"] == OPENED
        clock.release()
        wait_until(lambda: service.ledger.fired(SOC, "opened"), 3, "opened to fire")
        occurrence = service.ledger.occurrence(service.ledger.fired(SOC, "opened") or "")
        assert occurrence.at == OPENED
        assert not occurrence.late
        assert OPENED - timedelta(milliseconds=20) <= fired_on_clock(occurrence, clock) < OPENED + timedelta(seconds=1)
        progress = service.wait(occurrence.id, timeout=30)
    assert progress.finished, progress  # the fire message was enqueued, fanned out and delivered
    assert progress.total > 0
    assert [o.event for o in occurrences(service.ledger)] == ["opened"]  # the later events wait
    assert f"{SOC}:opened" not in scheduler.scheduled
    assert set(scheduler.scheduled) == {f"{SOC}:reminder", f"{SOC}:closed", f"{SOC}:outcome"}


def test_an_event_never_fires_before_its_time_on_the_clock_even_when_the_clock_stood_still(
    service: Service, start: Callable[..., Scheduler]
) -> None:
    clock = HeldClock(OPENED - timedelta(seconds=0.3))
    scheduler = start(clock)
    due_in_real_time = datetime.now(UTC) + timedelta(seconds=0.3)  # when APScheduler runs the job
    wait_until(lambda: datetime.now(UTC) > due_in_real_time + timedelta(seconds=0.2), 2, "the job's real time")
    assert service.ledger.fired(SOC, "opened") is None, "fired while the clock still read before its time"
    assert scheduler.scheduled[f"{SOC}:opened"] == OPENED, "the job still waits for its time"
    clock.release()
    wait_until(lambda: service.ledger.fired(SOC, "opened"), 3, "opened to fire")
    occurrence = service.ledger.occurrence(service.ledger.fired(SOC, "opened") or "")
    assert OPENED - timedelta(milliseconds=20) <= fired_on_clock(occurrence, clock) < OPENED + timedelta(seconds=1)


def test_two_schedulers_at_once_fire_once(services: Callable[[], Service], start: Callable[..., Scheduler]) -> None:
    clock = HeldClock(OPENED - timedelta(seconds=1))
    one, two = start(clock, services()), start(clock, services())
    assert [one.is_leader, two.is_leader].count(True) == 1
    assert f"{SOC}:opened" in one.scheduled and f"{SOC}:opened" in two.scheduled
    clock.release()
    ledger = one.ledger
    wait_until(lambda: ledger.fired(SOC, "opened"), 3, "opened to fire")
    wait_until(lambda: all(f"{SOC}:opened" not in s.scheduled for s in (one, two)), 3, "both jobs to run")
    for scheduler in (one, two):
        scheduler.stop()  # and with it every firing in progress and each loop's catch-up
    assert len(occurrences(ledger, event="opened")) == 1
    assert ledger.client.get(f"notifier:seq:{SOC}:opened") == b"1"


def test_a_clean_stop_hands_over_to_the_other_scheduler(
    services: Callable[[], Service], start: Callable[..., Scheduler]
) -> None:
    clock = HeldClock(OPENED - timedelta(seconds=1))
    leader, follower = start(clock, services()), start(clock, services())
    assert leader.is_leader and not follower.is_leader
    leader.stop()
    wait_until(lambda: follower.is_leader, 1, "the follower to take the lease")
    clock.release()
    wait_until(lambda: follower.ledger.fired(SOC, "opened"), 3, "opened to fire")
    occurrence = follower.ledger.occurrence(follower.ledger.fired(SOC, "opened") or "")
    assert fired_on_clock(occurrence, clock) < OPENED + timedelta(seconds=1)
    assert len(occurrences(follower.ledger)) == 1


_LEADER = """
import sys, threading
from datetime import datetime
from notifier.config import Settings
from notifier.scheduler import Scheduler
from notifier.service import Service

held = datetime.fromisoformat(sys.argv[1])  # its clock never moves: it is killed before the event
scheduler = Scheduler(Service(Settings.from_env()), clock=lambda: held, lease_ms=1000, renew_every=0.2)
scheduler.start()
print("leader" if scheduler.is_leader else "follower", flush=True)
threading.Event().wait()  # until killed
"""


@pytest.mark.slow
def test_a_killed_leader_is_replaced_and_the_event_fires_once(
    project: Project, settings: Settings, service: Service, start: Callable[..., Scheduler]
) -> None:
    clock = HeldClock(OPENED - timedelta(seconds=1))
    process = subprocess.Popen(
        [sys.executable, "-c", _LEADER, clock().isoformat()],
        env=project.env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "leader"
        follower = start(clock, lease_ms=1000)
        assert not follower.is_leader
        process.kill()  # no clean stop: its lease has to lapse
        process.wait()
        wait_until(lambda: follower.is_leader, 2, "the follower to take over")
        clock.release()
        wait_until(lambda: service.ledger.fired(SOC, "opened"), 5, "opened to fire")
        occurrence = service.ledger.occurrence(service.ledger.fired(SOC, "opened") or "")
        assert OPENED - timedelta(milliseconds=20) <= fired_on_clock(occurrence, clock) < OPENED + timedelta(seconds=1)
        wait_until(lambda: f"{SOC}:opened" not in follower.scheduled, 3, "the follower's job to run")
        follower.stop()
        assert len(occurrences(service.ledger)) == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()


# ---------------------------------------------------------------------------
# Restarts: late within the grace period, missed beyond it
# ---------------------------------------------------------------------------


def test_a_restart_within_the_grace_period_fires_once_flagged_late(
    services: Callable[[], Service], start: Callable[..., Scheduler]
) -> None:
    clock = offset_clock(OPENED + timedelta(hours=1))
    first = start(clock, services())
    ledger = first.ledger
    wait_until(lambda: ledger.fired(SOC, "opened"), 2, "the missed event to fire on start-up")
    occurrence = ledger.occurrence(ledger.fired(SOC, "opened") or "")
    assert occurrence.late
    assert occurrence.at == OPENED
    first.stop()
    second = start(clock, services())  # a restart: nothing fires again
    assert second.is_leader
    second.catch_up()  # what its loop does every tick, done to the end
    assert len(occurrences(ledger)) == 1
    states = {s.event.name: s for s in second.status()}
    assert states["opened"].state == "fired" and states["opened"].late
    assert states["opened"].describe(LONDON).endswith("(late)")


@pytest.mark.parametrize(("grace_hours", "late_by"), [(None, timedelta(hours=25)), ("0.5", timedelta(hours=1))])
def test_an_event_missed_beyond_the_grace_period_is_recorded_and_not_fired(
    project: Project, redis_url: str, grace_hours: str | None, late_by: timedelta
) -> None:
    if grace_hours:
        project.env["NOTIFIER_GRACE_HOURS"] = grace_hours
    project.env["NOTIFIER_REDIS_URL"] = redis_url
    service = Service(Settings.from_env(project.env))
    scheduler = Scheduler(service, clock=offset_clock(OPENED + late_by), reload_every=0.1, renew_every=0.2)
    try:
        scheduler.start()
        wait_until(lambda: service.ledger.missed(SOC, "opened"), 2, "opened to be recorded missed")
        assert service.ledger.missed(SOC, "opened") == OPENED
        scheduler.catch_up()  # once more, to the end: still not fired
        assert service.ledger.fired(SOC, "opened") is None
        assert occurrences(service.ledger) == []
        assert {s.event.name: s.state for s in scheduler.status()}["opened"] == "missed"
    finally:
        scheduler.stop()
        service.close()


# ---------------------------------------------------------------------------
# Reloads
# ---------------------------------------------------------------------------


def test_a_moved_date_fires_at_the_new_time_not_the_old(
    project: Project, service: Service, start: Callable[..., Scheduler]
) -> None:
    clock = HeldClock(OPENED - timedelta(seconds=0.5))
    scheduler = start(clock, reload_every=3600)  # only the explicit reload below
    assert scheduler.scheduled[f"{SOC}:opened"] == OPENED
    moved = OPENED + timedelta(seconds=1)
    edit(project, CONSULTATION, r"^opens: .*$", f"opens: {local(moved)}")
    assert scheduler.reload()
    assert scheduler.scheduled[f"{SOC}:opened"] == moved
    clock.release()
    wait_until(lambda: service.ledger.fired(SOC, "opened"), 4, "opened to fire at its new time")
    occurrence = service.ledger.occurrence(service.ledger.fired(SOC, "opened") or "")
    assert occurrence.at == moved
    assert moved - timedelta(milliseconds=20) <= fired_on_clock(occurrence, clock) < moved + timedelta(seconds=1)
    assert len(occurrences(service.ledger)) == 1


def test_an_edited_file_is_picked_up_and_an_added_event_fires(
    project: Project, service: Service, start: Callable[..., Scheduler]
) -> None:
    shutil.copytree(project.templates / "opened", project.templates / "briefing")
    clock = HeldClock(OPENED - timedelta(seconds=1))
    scheduler = start(clock)
    at = OPENED + timedelta(seconds=1)
    edit(project, CONSULTATION, r"^events:$", f'events:\n  briefing:\n    at: "{local(at)}"')
    wait_until(lambda: f"{SOC}:briefing" in scheduler.scheduled, 2, "the file watch to schedule the new event")
    assert scheduler.scheduled[f"{SOC}:briefing"] == at
    clock.release()
    wait_until(lambda: service.ledger.fired(SOC, "briefing"), 3, "the added event to fire")
    occurrence = service.ledger.occurrence(service.ledger.fired(SOC, "briefing") or "")
    assert at - timedelta(milliseconds=20) <= fired_on_clock(occurrence, clock) < at + timedelta(seconds=1)


def test_a_removed_event_is_unscheduled(project: Project, service: Service, start: Callable[..., Scheduler]) -> None:
    clock = HeldClock(OPENED - timedelta(seconds=0.5))
    scheduler = start(clock, reload_every=3600)
    assert f"{SOC}:opened" in scheduler.scheduled
    edit(project, CONSULTATION, r"^  opened:\n    at: opens\n", "")
    assert scheduler.reload()
    assert f"{SOC}:opened" not in scheduler.scheduled
    assert f"{SOC}:reminder" in scheduler.scheduled
    clock.release()
    wait_until(lambda: clock() > OPENED, 2, "the old time to pass")
    scheduler.catch_up()
    scheduler.stop()  # its jobs and loop, run to the end
    assert service.ledger.fired(SOC, "opened") is None


def test_an_event_that_already_fired_never_fires_again(
    project: Project, service: Service, start: Callable[..., Scheduler]
) -> None:
    first = service.fire(SOC, "opened")  # `notifier send`, before its time
    clock = HeldClock(OPENED - timedelta(seconds=0.5))
    scheduler = start(clock, reload_every=3600)
    assert f"{SOC}:opened" not in scheduler.scheduled
    edit(project, CONSULTATION, r"^opens: .*$", f"opens: {local(OPENED + timedelta(seconds=0.5))}")
    assert scheduler.reload()  # a moved date does not make it fire again
    assert f"{SOC}:opened" not in scheduler.scheduled
    clock.release()
    wait_until(lambda: clock() > OPENED + timedelta(seconds=0.5), 2, "both times to pass")
    scheduler.catch_up()
    scheduler.stop()
    assert [o.id for o in occurrences(service.ledger)] == [first]


def test_an_invalid_config_on_reload_keeps_the_last_good_schedule(
    project: Project, service: Service, start: Callable[..., Scheduler], caplog: pytest.LogCaptureFixture
) -> None:
    clock = HeldClock(OPENED - timedelta(seconds=1))
    scheduler = start(clock)
    before = scheduler.scheduled
    assert f"{SOC}:opened" in before
    with caplog.at_level(logging.ERROR, logger="notifier.scheduler"):
        edit(project, CONSULTATION, r"^opens: .*$", "opens: next tuesday")
        assert not scheduler.reload()
        assert scheduler.scheduled == before
        clock.release()
        wait_until(lambda: service.ledger.fired(SOC, "opened"), 3, "opened to fire on the last good schedule")
    assert scheduler.scheduled == {k: v for k, v in before.items() if k != f"{SOC}:opened"}
    assert "soc-strategy-2019.yaml" in caplog.text
    assert scheduler.is_leader  # still running


def test_an_event_the_leaders_catch_up_fires_leaves_the_schedule_at_once(
    service: Service, start: Callable[..., Scheduler]
) -> None:
    clock = HeldClock(OPENED - timedelta(seconds=1))
    scheduler = start(clock)
    assert scheduler.is_leader and f"{SOC}:opened" in scheduler.scheduled
    clock.moment = OPENED  # its time comes before its job wakes: the leader's catch-up fires it

    scheduler.catch_up()

    assert service.ledger.fired(SOC, "opened")
    assert f"{SOC}:opened" not in scheduler.scheduled, "fired, yet still listed as waiting for its time"


def test_events_without_at_are_never_scheduled(
    project: Project, service: Service, start: Callable[..., Scheduler]
) -> None:
    edit(project, CONSULTATION, r"^    at: 2019-09-12 10:00\n", "")
    scheduler = start(offset_clock(datetime(2019, 9, 12, 9, 0, tzinfo=UTC)))
    assert f"{SOC}:outcome" not in scheduler.scheduled
    assert {s.event.name: s.state for s in scheduler.status()}["outcome"] == "on demand"
    scheduler.catch_up()
    assert service.ledger.fired(SOC, "outcome") is None


def test_sighup_reloads_the_config_in_serve(project: Project, settings: Settings, service: Service) -> None:
    clock = offset_clock(OPENED - timedelta(seconds=30))
    stop = threading.Event()
    failures: list[str] = []

    def operator() -> None:
        try:
            wait_until(lambda: signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL, 5, "serve to handle SIGHUP")
            moved = (clock() + timedelta(seconds=1.5)).replace(microsecond=0)
            edit(project, CONSULTATION, r"^opens: .*$", f"opens: {local(moved)}")
            os.kill(os.getpid(), signal.SIGHUP)
            wait_until(lambda: service.ledger.fired(SOC, "opened"), 4, "opened to fire after SIGHUP")
        except BaseException as exc:  # pytest.fail raises outside Exception
            failures.append(repr(exc))
        finally:
            stop.set()

    previous = signal.getsignal(signal.SIGHUP)
    helper = threading.Thread(target=operator)
    helper.start()
    serve(settings, stop=stop, clock=clock, service=service, reload_every=3600)  # no file watch
    helper.join()
    assert signal.getsignal(signal.SIGHUP) == previous
    assert not failures, failures
    assert service.client.get(LEADER_KEY) is None  # released on the way out


# ---------------------------------------------------------------------------
# Clock changes
# ---------------------------------------------------------------------------

_DST = """\
title: Clock changes
url: https://www.pcc.example/consultations/dst
summary: Events on the days the clocks change.
opens: 2019-03-01 09:00
closes: 2019-11-30 09:00
audience: [csp]
channels: [email]
events:
  opened: {at: "2019-03-31 01:30"}
  reminder: {at: "2019-03-31 09:00"}
  closed: {at: "2019-10-27 01:30"}
  outcome: {at: "2019-10-27 09:00"}
"""

# 31 March 2019: 01:00 GMT becomes 02:00 BST, so 01:30 does not exist; it is read as the
# same wall time before the change (01:30 GMT = 02:30 BST). 27 October 2019: 02:00 BST
# becomes 01:00 GMT, so 01:30 happens twice; the first (BST, 00:30 UTC) is the one.
DST_INSTANTS = {
    "opened": datetime(2019, 3, 31, 1, 30, tzinfo=UTC),
    "reminder": datetime(2019, 3, 31, 8, 0, tzinfo=UTC),
    "closed": datetime(2019, 10, 27, 0, 30, tzinfo=UTC),
    "outcome": datetime(2019, 10, 27, 9, 0, tzinfo=UTC),
}


@pytest.mark.parametrize("event", list(DST_INSTANTS))
def test_events_on_clock_change_days_fire_at_the_right_instant_once(
    project: Project, service: Service, start: Callable[..., Scheduler], event: str
) -> None:
    project.write("config/consultations/dst.yaml", _DST)
    instant = DST_INSTANTS[event]
    clock = HeldClock(instant - timedelta(seconds=0.8))
    scheduler = start(clock)
    assert scheduler.scheduled[f"dst:{event}"] == instant
    clock.release()
    wait_until(lambda: service.ledger.fired("dst", event), 3, f"{event} to fire")
    occurrence = service.ledger.occurrence(service.ledger.fired("dst", event) or "")
    assert occurrence.at == instant and not occurrence.late
    assert instant - timedelta(milliseconds=20) <= fired_on_clock(occurrence, clock) < instant + timedelta(seconds=1)
    assert len(occurrences(service.ledger, "dst", event)) == 1  # (earlier ones fire too, late)


def test_the_repeated_autumn_hour_does_not_fire_twice(
    project: Project, services: Callable[[], Service], start: Callable[..., Scheduler]
) -> None:
    project.write("config/consultations/dst.yaml", _DST)
    first = datetime(2019, 10, 27, 0, 30, tzinfo=UTC)  # 01:30 BST
    clock = HeldClock(first - timedelta(seconds=0.5))
    one = start(clock, services())
    assert "dst:closed" in one.scheduled
    clock.release()
    wait_until(lambda: one.ledger.fired("dst", "closed"), 2, "closed to fire at the first 01:30")
    one.stop()
    second = first + timedelta(hours=1)  # 01:30 GMT, the same wall time again
    clock = HeldClock(second - timedelta(seconds=0.3))
    two = start(clock, services())
    assert "dst:closed" not in two.scheduled
    clock.release()
    wait_until(lambda: clock() > second, 2, "the second 01:30 to pass")
    two.catch_up()
    two.stop()
    assert [o.at for o in occurrences(two.ledger, "dst", "closed")] == [first]


# ---------------------------------------------------------------------------
# Sweep
# ---------------------------------------------------------------------------


def test_an_occurrence_claimed_but_never_enqueued_is_swept_and_delivered(
    service: Service, start: Callable[..., Scheduler]
) -> None:
    # A process that died between the claim and the enqueue left this behind.
    occurrence_id = service.ledger.claim_occurrence(SOC, "opened", at=OPENED)
    assert occurrence_id is not None
    with service.worker(threads=4):
        start(offset_clock(datetime(2019, 1, 1, tzinfo=UTC)), sweep_after=0.3)
        wait_until(
            lambda: service.ledger.occurrence(occurrence_id).state == "fanned-out", 5, "the sweep to re-send fire"
        )
        progress = service.wait(occurrence_id, timeout=30)
    assert progress.finished
    assert len(occurrences(service.ledger)) == 1


def test_unstarted_lists_only_stale_claims_with_nothing_fanned_out(service: Service) -> None:
    ledger = service.ledger
    fresh = ledger.claim_occurrence(SOC, "opened", at=OPENED)
    done = ledger.claim_occurrence(SOC, "reminder", at=OPENED)
    started = ledger.claim_occurrence(SOC, "closed", at=OPENED)
    assert fresh and done and started
    ledger.set_state(done, "fanned-out")
    ledger.client.hset(f"notifier:st:{started}", "email|x@example.org", "pending")
    assert ledger.unstarted([SOC], older_than=5, within=60) == []
    assert [o.id for o in ledger.unstarted([SOC], older_than=0, within=60)] == [fresh]


# ---------------------------------------------------------------------------
# Lease and status
# ---------------------------------------------------------------------------


def test_a_leader_that_stops_renewing_loses_the_lease_to_the_standby_which_then_fires(
    services: Callable[[], Service], start: Callable[..., Scheduler], redis_client: redis.Redis
) -> None:
    clock = HeldClock(OPENED - timedelta(seconds=1))
    stalled = start(clock, services(), lease_ms=2000, renew_every=3600)  # takes the lease, never renews it
    assert redis_client.get(LEADER_KEY) == stalled.token.encode(), "/healthz reads the leader's token here"
    standby = start(clock, services())
    wait_until(lambda: standby.is_leader, 5, "the standby to take the lapsed lease")
    assert not stalled.is_leader
    assert redis_client.get(LEADER_KEY) == standby.token.encode()
    third = start(clock, services())
    assert not third.is_leader, "one holder at a time"
    stalled.stop()  # it cannot release a lease it lost
    assert redis_client.get(LEADER_KEY) == standby.token.encode()
    clock.release()
    wait_until(lambda: standby.ledger.fired(SOC, "opened"), 3, "opened to fire")
    wait_until(lambda: all(f"{SOC}:opened" not in s.scheduled for s in (standby, third)), 3, "both jobs to run")
    for scheduler in (standby, third):
        scheduler.stop()
    assert len(occurrences(standby.ledger)) == 1
    assert redis_client.get(LEADER_KEY) is None, "the leader hands the lease over on a clean stop"


def test_state_of_covers_every_state() -> None:
    at = OPENED
    event = timeline.Event(SOC, "opened", at, ("email",), ("csp",))
    grace = timedelta(hours=24)
    fired = Occurrence("x", SOC, "opened", 1, at, at)
    assert state_of(event, None, at - timedelta(seconds=1), grace) == "scheduled"
    assert state_of(event, None, at, grace) == "due"
    assert state_of(event, None, at + grace, grace) == "due"
    assert state_of(event, None, at + grace + timedelta(seconds=1), grace) == "missed"
    assert state_of(event, fired, at + 2 * grace, grace) == "fired"
    on_demand = timeline.Event(SOC, "outcome", None, ("email",), ("csp",))
    assert state_of(on_demand, None, at, grace) == "on demand"


def test_status_reads_the_ledger(service: Service) -> None:
    config = service.config()
    events = timeline.events(config.consultation(SOC), config.tz)
    service.fire(SOC, "opened", late=True, config=config)
    found = status(service.ledger, events, datetime(2019, 8, 9, 12, 0, tzinfo=UTC), grace=timedelta(hours=24))
    states = {s.event.name: s for s in found}
    assert states["opened"].state == "fired" and states["opened"].late
    assert states["opened"].occurrence is not None and states["opened"].occurrence.at == OPENED
    assert states["reminder"].state == "due"  # 2019-08-08 23:59 BST, 13 hours earlier
    assert states["closed"].state == "scheduled"
    assert states["outcome"].state == "scheduled"
    assert states["closed"].describe() == "scheduled"
