"""``notifier scheduler``: fire every scheduled event occurrence once, on time.

Jobs only enqueue. Each fires through :meth:`notifier.service.Service.fire`, which claims
the occurrence in the ledger (``SET NX``) and enqueues the ``fire`` actor, so an event fired
by the scheduler and one fired by ``send`` take the same path and neither fires twice.

* **On time.** Every event with an ``at`` that has not fired is an APScheduler
  ``DateTrigger`` job at its absolute instant (the timeline resolves local times, DST
  included, to instants). Events without ``at`` are on demand and never scheduled.
* **One leader.** Several schedulers may run; only the holder of a Redis lease fires: a
  redis-py :class:`redis.lock.Lock` on :data:`LEADER_KEY` (its value is the holder's random
  token, which ``/healthz`` reports), renewed every ``renew_every`` seconds and released on a
  clean stop; a leader that stops renewing loses it after ``lease_ms``. Followers keep the
  same schedule so that taking over is immediate. A failover can never fire twice: the
  occurrence claim is the last word.
* **Catch-up.** Every second or so the leader also looks for occurrences whose time has
  come and that have not fired (it just started, it just became leader, a job hit a Redis
  error): less than the grace period (``NOTIFIER_GRACE_HOURS``, 24 h) late, they fire,
  flagged ``late`` when more than :data:`LATE_AFTER` late; later than that they are
  recorded missed and only ``send`` fires them.
* **Reload.** On SIGHUP and when a file of the config or templates changes (the service's
  :class:`~notifier.source.ConfigSource`, looked at every ``reload_every`` seconds), the
  schedule is rebuilt from the new config: moved events move, removed ones go, added ones
  come, fired ones never fire again. An invalid config is logged and the last good
  schedule kept.
* **Extensions.** The leader also announces each deadline extension once, when ``closes``
  moved later after ``opened`` fired (:mod:`notifier.extension`).
* **Bounces.** With ``email.bounce_mailbox`` set, the leader reads it every
  :data:`BOUNCES_EVERY_S` (:func:`notifier.bounces.poll_imap`).
* **Sweep.** An occurrence claimed but never fanned out (the process died between the
  claim and the enqueue) gets its ``fire`` message sent again after :data:`SWEEP_AFTER_S`.

Time: ``clock`` is a callable giving the current aware datetime. APScheduler waits in real
time, so a job for instant ``at`` runs at ``real now + (at - clock())``: a test may pass
:func:`offset_clock` to live in 2019. The clock may also stand still for a while (a test
holding it while the scheduler starts): a job that runs before the clock reads its instant
waits for it, so nothing ever fires before its time on the clock.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import redis
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from redis.exceptions import LockError, LockNotOwnedError

from notifier import archive, bounces, extension, timeline
from notifier.broker import NAMESPACE, workers_alive
from notifier.config import Config, Settings
from notifier.errors import ConfigError, MailboxError
from notifier.ledger import Ledger, Occurrence
from notifier.service import Service

log = logging.getLogger(__name__)

LEADER_KEY = f"{NAMESPACE}:scheduler:leader"
#: How long a leader's lease lasts without renewal: the longest a crashed leader stalls firing.
LEASE_MS = 10_000
RENEW_EVERY_S = 2.0
#: An occurrence fired later than this after its time is flagged ``late`` in the ledger.
LATE_AFTER = timedelta(seconds=60)
#: An occurrence still claimed, with nothing fanned out, this long after its claim is re-sent.
SWEEP_AFTER_S = 30.0
SWEEP_EVERY_S = 10.0
#: How often the leader reads ``email.bounce_mailbox`` (IMAP) for bounces.
BOUNCES_EVERY_S = 60.0
#: The same occurrence is re-sent at most this often (the first re-send may just be queued).
SWEEP_RETRY_S = 300.0

Clock = Callable[[], datetime]
State = Literal["scheduled", "due", "fired", "missed", "on demand"]


def real_clock() -> datetime:
    """Now, UTC: the default clock."""
    return datetime.now(UTC)


def offset_clock(now: datetime) -> Clock:
    """A clock that reads ``now`` at once and then advances in real time (for tests and
    rehearsals of a past timeline)."""
    offset = now - datetime.now(UTC)
    return lambda: datetime.now(UTC) + offset


# ---------------------------------------------------------------------------
# Status (pure, for ``plan``)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventStatus:
    """Where one event stands: ``scheduled`` (in the future), ``due`` (its time has come, it
    has not fired, and a scheduler will fire it late), ``fired``, ``missed`` (more than the
    grace period late: only ``send`` fires it), or ``on demand`` (no ``at``)."""

    event: timeline.Event
    state: State
    occurrence: Occurrence | None = None

    @property
    def late(self) -> bool:
        """Fired, but late (after a restart or a long outage)."""
        return self.occurrence is not None and self.occurrence.late

    def describe(self, tz: Any = UTC) -> str:
        """``fired 2019-07-09 09:00 (late)``, ``scheduled``, ... with times in ``tz``."""
        if self.occurrence is None:
            return self.state
        fired_at = self.occurrence.fired_at.astimezone(tz).strftime("%Y-%m-%d %H:%M")
        return f"fired {fired_at}" + (" (late)" if self.late else "")


def state_of(event: timeline.Event, occurrence: Occurrence | None, now: datetime, grace: timedelta) -> State:
    """The state of ``event`` at ``now`` given its latest occurrence. Pure."""
    if occurrence is not None:
        return "fired"
    if event.at is None:
        return "on demand"
    if event.at > now:
        return "scheduled"
    return "due" if now - event.at <= grace else "missed"


def status(
    ledger: Ledger, events: Iterable[timeline.Event], now: datetime, *, grace: timedelta = timedelta(hours=24)
) -> list[EventStatus]:
    """Each event's status at ``now`` from the ledger (two round trips in all), in order.
    ``plan`` passes ``settings.grace``."""
    events = list(events)
    latest = ledger.latest([(e.consultation_id, e.name) for e in events])
    return [EventStatus(e, state_of(e, o, now, grace), o) for e, o in zip(events, latest, strict=True)]


# ---------------------------------------------------------------------------
# Scheduler
# ---------------------------------------------------------------------------


class Scheduler:
    """Fires each scheduled event occurrence of the config once, on time (see the module doc).

    ``start()`` loads the config (raising :class:`~notifier.errors.ConfigError` if it is
    invalid) and returns; the work happens in background threads until ``stop()``.
    """

    def __init__(  # noqa: PLR0913 - keyword-only tuning knobs with defaults, set by tests
        self,
        service: Service,
        *,
        clock: Clock | None = None,
        reload_every: float = 1.0,
        lease_ms: int = LEASE_MS,
        renew_every: float = RENEW_EVERY_S,
        sweep_after: float = SWEEP_AFTER_S,
    ) -> None:
        self.service = service
        self.ledger = service.ledger
        self.clock: Clock = clock or real_clock
        self.reload_every = reload_every
        self.renew_every = renew_every
        self.lease_ms = lease_ms
        self.sweep_after = sweep_after
        #: The leader lease; ``thread_local=False``: the loop renews what ``start`` took.
        self.lease = service.client.lock(LEADER_KEY, timeout=lease_ms / 1000, blocking=False, thread_local=False)
        self.token = uuid.uuid4().hex  # the value of LEADER_KEY while this scheduler leads
        self._lease_until = 0.0  # monotonic time the lease surely lasts until (0: not held)
        self._lock = threading.RLock()  # config, events, jobs; and one firing at a time
        self._changed = threading.Condition(self._lock)  # the schedule changed or the scheduler stops
        self._config: Config | None = None
        self._generation = -1  # the config source's generation last installed or found invalid
        self._events: dict[str, timeline.Event] = {}  # every event with an ``at``, by key
        self._planned: dict[str, datetime] = {}  # key -> the instant its job waits for (until it runs)
        self._requeued: dict[str, float] = {}  # occurrence id -> when the sweep last re-sent it
        self._noted_missed: set[tuple[str, datetime]] = set()
        self._aps: BackgroundScheduler | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._reload_requested = threading.Event()

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Load the config, build the schedule and start firing (as leader, if the lease is free)."""
        self._stop.clear()
        generation = self.service.source.check(within=0)
        config = self.service.config()
        self._aps = BackgroundScheduler(
            timezone=config.tz,
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )
        self._aps.start()
        try:
            with self._lock:
                self._planned.clear()  # a restart: the jobs went with the last APScheduler
                self._install(config, generation)
            self._refresh_lease()
        except BaseException:
            self.stop()
            raise
        self._thread = threading.Thread(target=self._run, name="notifier-scheduler", daemon=True)
        self._thread.start()
        log.info("scheduler started (%s), %d event(s) scheduled", config.timezone, len(self._planned))

    def stop(self) -> None:
        """Stop firing, wait for a firing in progress, and hand the lease over."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            self._changed.notify_all()  # jobs waiting for the clock give up
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._aps is not None:
            self._aps.shutdown(wait=True)
            self._aps = None
        with self._lock, contextlib.suppress(LockError, redis.RedisError, OSError):  # not held, or lost
            self._lease_until = 0.0
            self.lease.release()
        log.info("scheduler stopped")

    def request_reload(self) -> None:
        """Reload soon, on the scheduler's own thread (safe from a signal handler)."""
        self._reload_requested.set()
        self._wake.set()

    def reload(self) -> bool:
        """Re-read the config and reschedule now; False (and the last good schedule kept,
        its problems logged) when the new config is invalid."""
        generation = self.service.source.check(within=0)
        try:
            config = self.service.config()
        except ConfigError as exc:
            self._generation = generation  # don't re-read the same broken files every second
            log.error("config invalid, keeping the last good schedule:\n%s", exc)
            return False
        with self._lock:
            self._install(config, generation)
        log.info("config reloaded, %d event(s) scheduled", len(self.scheduled))
        return True

    @property
    def is_leader(self) -> bool:
        """True while this scheduler holds the leader lease (and so fires)."""
        return time.monotonic() < self._lease_until

    @property
    def scheduled(self) -> dict[str, datetime]:
        """``consultation:event`` -> the UTC instant of each occurrence still waiting for its time.

        An occurrence leaves this table when its job has run (fired, or found it fired or moved
        meanwhile): an event missing from it will not fire on time from this scheduler."""
        with self._lock:
            return dict(self._planned)

    def status(self, now: datetime | None = None) -> list[EventStatus]:
        """Every event of the current config and where it stands."""
        with self._lock:
            config = self._config
        if config is None:
            return []
        events = [e for c in config.consultations.values() for e in timeline.events(c, config.tz)]
        return status(self.ledger, events, now or self.clock(), grace=self.service.settings.grace)

    # -- the loop -----------------------------------------------------------

    def _run(self) -> None:
        tick = min(self.reload_every, self.renew_every, 1.0)
        next_renew = next_watch = next_sweep = next_bounces = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_renew:
                    next_renew = now + self.renew_every
                    self._refresh_lease()
                if self._reload_requested.is_set() or now >= next_watch:
                    next_watch = now + self.reload_every
                    changed = self.service.source.check(within=self.reload_every) != self._generation
                    if self._reload_requested.is_set() or changed:
                        self._reload_requested.clear()
                        self.reload()
                if self.is_leader:
                    self.catch_up()
                    if now >= next_bounces:
                        next_bounces = now + BOUNCES_EVERY_S
                        self._poll_bounces()
                    if now >= next_sweep:
                        next_sweep = now + min(SWEEP_EVERY_S, max(self.sweep_after, tick))
                        self._sweep()
            except Exception:  # Redis down, a bug: log, keep going, try again next tick
                log.exception("scheduler tick failed")
            self._wake.wait(tick)
            self._wake.clear()

    def _refresh_lease(self) -> None:
        was = self.is_leader
        started = time.monotonic()  # Redis starts the TTL after this, so the lease outlives our view
        try:
            self._lease_until = started + self.lease_ms / 1000 if self._take_lease() else 0.0
        except (redis.RedisError, OSError) as exc:  # keep what we surely have; it lapses on its own
            log.warning("cannot renew the leader lease: %s", exc)
        held = self.is_leader
        if held and not was:
            log.info("leading: this scheduler fires (%s)", self.token)
        elif was and not held:
            log.warning("lost the leader lease: another scheduler fires")

    def _take_lease(self) -> bool:
        """Renew the lease if this scheduler has it, else try to take it: whether it holds it now."""
        if self._lease_until:
            with contextlib.suppress(LockNotOwnedError):  # it lapsed and maybe another took it
                return bool(self.lease.reacquire())
        return bool(self.lease.acquire(token=self.token))

    # -- the schedule -------------------------------------------------------

    def _install(self, config: Config, generation: int) -> None:
        """Make the jobs match ``config``: add, move and remove. Holds ``_lock``."""
        assert self._aps is not None
        self._config, self._generation = config, generation
        events = [e for c in config.consultations.values() for e in timeline.events(c, config.tz) if e.at]
        self._events = {e.key: e for e in events}
        for consultation in config.consultations:  # what the record says fired, if Redis has lost it
            archive.restore(self.ledger, self.service.store, consultation)
        now = self.clock()
        wanted = {
            s.event.key: s.event.at.astimezone(UTC)
            for s in status(self.ledger, events, now, grace=self.service.settings.grace)
            if s.state == "scheduled" and s.event.at is not None
        }
        for key in [k for k in self._planned if k not in wanted]:
            self._unplan(key)
            log.info("unscheduled %s", key)
        for key, at in wanted.items():
            if self._planned.get(key) == at:
                continue
            moved = self._unplan(key)
            # One job id per instant: a moved event's old job, still running, never blocks the new one.
            self._aps.add_job(
                self._on_time,
                DateTrigger(run_date=self._real(at)),
                args=(key, at),
                id=f"{key}@{at.isoformat()}",
                name=key,
            )
            log.info("%s %s at %s", "rescheduled" if moved else "scheduled", key, at.astimezone(config.tz))
            self._planned[key] = at
        self._changed.notify_all()  # jobs waiting for a moved or removed instant give up

    def _unplan(self, key: str) -> bool:
        """Drop ``key``'s job, if any: whether there was one. Holds ``_lock``."""
        assert self._aps is not None
        at = self._planned.pop(key, None)
        if at is not None:
            with contextlib.suppress(JobLookupError):  # it is running (and will find itself unplanned)
                self._aps.remove_job(f"{key}@{at.isoformat()}")
        return at is not None

    def _real(self, at: datetime) -> datetime:
        """The real instant at which the clock will read ``at``."""
        delay = at - self.clock()
        return datetime.now(UTC) + delay  # read after the clock: the job never runs before ``at``

    # -- firing -------------------------------------------------------------

    def _on_time(self, key: str, at: datetime) -> None:
        """An APScheduler job: fire ``key`` once the clock reads ``at``, unless the schedule
        moved on meanwhile; either way ``key`` leaves :attr:`scheduled`."""
        try:
            with self._lock:
                if not self._until(key, at):
                    return  # moved or removed by a reload racing this job, or stopping
                del self._planned[key]
                event = self._events.get(key)
                if event is None or event.at != at:
                    return
                now = max(self.clock(), at)
                if status(self.ledger, [event], now, grace=self.service.settings.grace)[0].state == "due":
                    self._fire(event, now)
        except Exception:  # the leader's catch-up tries again within a second
            log.exception("firing %s failed", key)

    def _until(self, key: str, at: datetime) -> bool:
        """Wait, the lock released, until the clock reads ``at``: False if ``key`` stops being
        planned for ``at`` or the scheduler stops meanwhile. Holds ``_lock``.

        APScheduler runs the job at the real instant computed when it was planned; if the clock
        stood still since (a test holding it while the scheduler starts) it reads less than ``at``
        then, and firing anyway would fire early."""
        while self._planned.get(key) == at and not self._stop.is_set():
            remaining = (at - self.clock()).total_seconds()
            if remaining <= 0:
                return True
            self._changed.wait(remaining)
        return False

    def catch_up(self) -> None:
        """Fire what is due and has not fired; record as missed what is past the grace period.

        The leader's loop runs this every tick; it fires nothing unless this scheduler leads.
        Returns when done, so a caller knows that nothing due at the clock's present is left."""
        with self._lock:
            now = self.clock()
            self._extend(now)
            for s in status(self.ledger, self._events.values(), now, grace=self.service.settings.grace):
                if s.state == "due":
                    self._fire(s.event, now)
                    if s.event.key in self._planned and self._aps is not None:  # fired here first
                        self._unplan(s.event.key)  # so it no longer waits for its time
                        self._changed.notify_all()
                elif s.state == "missed" and s.event.at is not None:
                    key = s.event.key
                    if (key, s.event.at) in self._noted_missed:
                        continue
                    self._noted_missed.add((key, s.event.at))
                    if self.ledger.missed(s.event.consultation_id, s.event.name) is None:
                        self.ledger.mark_missed(s.event.consultation_id, s.event.name, s.event.at)
                        log.warning(
                            "missed %s (due %s, more than %s ago); fire it with `notifier send`",
                            key,
                            s.event.at.isoformat(),
                            self.service.settings.grace,
                        )

    def _poll_bounces(self) -> None:
        """Record the bounces waiting in ``email.bounce_mailbox`` (IMAP), if one is set."""
        config = self._config
        if config is None or not config.email.bounce_mailbox:
            return
        password = self.service.settings.env.get(bounces.PASSWORD_VARIABLE, "")
        book = bounces.BounceBook(self.ledger, self.service.store, self.service.settings.secret_key())
        try:
            tally = bounces.poll_imap(bounces.ImapMailbox.parse(config.email.bounce_mailbox), password, book)
        except MailboxError as exc:
            log.warning("could not read bounces: %s", exc)
            return
        if tally.read:
            log.info("bounce mailbox: %s", tally)

    def _extend(self, now: datetime) -> None:
        """Announce each deadline extension that is due, once (:mod:`notifier.extension`). Holds ``_lock``."""
        config = self._config
        if config is None or not self.is_leader:
            return
        for consultation in config.consultations.values():
            due = extension.pending(self.ledger, consultation, config.tz, now)
            if due is None or due.at > now:
                continue
            occurrence_id = extension.claim(self.ledger, due)
            if occurrence_id is None:
                continue
            try:
                archive.fired(self.service.store, config, self.ledger, occurrence_id, actor="scheduler")
            finally:  # claimed is claimed: it goes out
                self.service.actors.fire.send(occurrence_id)
            log.info("fired %s: closes moved from %s to %s", occurrence_id, due.previous, due.closes)

    def _fire(self, event: timeline.Event, now: datetime) -> str | None:
        """Fire one due event through Service.fire, if this scheduler leads. Holds ``_lock``."""
        if not self.is_leader or event.at is None:
            return None
        late = now - event.at > LATE_AFTER
        # Due by this scheduler's clock (which `run --now` may set): never "early".
        occurrence_id = self.service.fire(
            event.consultation_id, event.name, late=late, early=True, config=self._config, actor="scheduler"
        )
        if occurrence_id is not None:
            log.info("fired %s%s", occurrence_id, f" late, {now - event.at} after its time" if late else "")
        return occurrence_id

    def _sweep(self) -> None:
        """Re-send ``fire`` for occurrences claimed but never fanned out."""
        with self._lock:
            config = self._config
        if config is None or not workers_alive(self.service.client):
            return  # with no worker alive a queued message just waits; re-sending adds nothing
        window = max(self.service.settings.grace.total_seconds(), self.sweep_after + 1)
        stale = self.ledger.unstarted(config.consultations, older_than=self.sweep_after, within=window)
        now = time.monotonic()
        self._requeued = {k: t for k, t in self._requeued.items() if now - t < SWEEP_RETRY_S}
        for occurrence in stale:
            if occurrence.id in self._requeued:
                continue
            self._requeued[occurrence.id] = now
            self.service.actors.fire.send(occurrence.id)
            log.warning(
                "re-sent fire for %s: claimed at %s and never fanned out",
                occurrence.id,
                occurrence.fired_at.isoformat(),
            )


def serve(
    settings: Settings,
    *,
    stop: threading.Event,
    clock: Clock | None = None,
    service: Service | None = None,
    reload_every: float = 1.0,
) -> None:
    """Run a scheduler until ``stop`` is set: ``notifier scheduler``, and part of ``notifier run``.

    On the main thread, SIGHUP reloads the config. ``service`` shares an existing Service
    (``run``); otherwise one is made from ``settings`` and closed at the end. Raises
    ConfigError when the config is invalid at start.
    """
    own = service is None
    service = service or Service(settings)
    scheduler = Scheduler(service, clock=clock, reload_every=reload_every)
    previous: Any = None
    on_main = hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread()
    try:
        scheduler.start()
        if on_main:
            previous = signal.signal(signal.SIGHUP, lambda signum, frame: scheduler.request_reload())
        while not stop.wait(1.0):
            pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)
        scheduler.stop()
        if own:
            service.close()
