"""The operations behind the commands: fire an event, wait for it, run workers.

``send``, the scheduler and ``run`` all fire through :meth:`Service.fire`, so an event fired
by hand and one fired on time take the same path: claim the occurrence in the ledger
(exactly once), then enqueue ``fire`` for the workers.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import dramatiq
import redis
from dramatiq.worker import ConsumerThread, WorkerThread

from notifier import acknowledgement, actors, archive, extension, timeline
from notifier.audience import resolve
from notifier.broker import NotifierBroker, connect, make_broker, workers_alive
from notifier.config import Config, Settings
from notifier.delivery import BATCH
from notifier.errors import ConfigError, Problem, UsageError
from notifier.ledger import FANNED_OUT, FINAL, Ledger
from notifier.runtime import Runtime
from notifier.source import ConfigSource
from notifier.store import Store
from notifier.timeline import Event
from notifier.validation import check_event

if TYPE_CHECKING:
    from notifier.store import Response

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Progress:
    """How far an occurrence has got."""

    total: int
    done: int
    counts: dict[str, dict[str, int]]
    fanned_out: bool

    @property
    def finished(self) -> bool:
        """Fanned out and every delivery final."""
        return self.fanned_out and self.done >= self.total

    @property
    def failed(self) -> int:
        """Deliveries that failed permanently."""
        return sum(c.get("failed", 0) for c in self.counts.values())


def _log_warning(problem: Problem) -> None:
    log.warning("%s", problem)


class Service:
    """One process' handle on Redis, the broker and the actors."""

    def __init__(self, settings: Settings, *, worker_id: str | None = None) -> None:
        self.settings = settings
        self.client: redis.Redis = connect(settings)
        #: The process' one config source: this service, its runtime and a scheduler share it.
        self.source = ConfigSource(settings)
        self.runtime = Runtime(settings, client=self.client, worker_id=worker_id, source=self.source)
        self.ledger: Ledger = self.runtime.ledger
        self.broker: NotifierBroker = make_broker(settings, worker_id=self.runtime.worker_id)
        self.actors = actors.declare(self.broker, lambda: self.runtime)
        # The record opens (and the embedded SQLite migrates) now, not in the middle of the
        # first firing: a scheduler started just before an event's time is ready for it.
        store = self.runtime.store
        assert store is not None  # a Service is never a rehearsal
        self.store: Store = store
        self.broker.add_middleware(archive.ArchiveMiddleware(self.runtime.archiver))

    def config(self) -> Config:
        """The current, validated config; ConfigError when templates would fail. The files'
        signature is looked at now (a command acts on the files as they are), but they are
        loaded and checked only when they changed since the source last did."""
        return self.source.validated(within=0)

    def finishes(self, consultation_id: str, event_name: str, start: datetime | None = None) -> datetime | None:
        """When the last message of the event should go, at its channels' rates and daily
        caps (from ``start``, or its scheduled time); None when none of its channels is
        limited or it has no time. What ``plan`` shows, for the console."""
        config = self.config()
        event = timeline.event(config.consultation(consultation_id), event_name, config.tz)
        audience = resolve(config.lists, event.audience, suppressed=self.ledger.suppressed())
        return timeline.finishes(config, event, len(audience), start)

    def fire(  # noqa: PLR0913 - the event and keyword-only flags the CLI and scheduler pass through
        self,
        consultation_id: str,
        event_name: str,
        *,
        again: bool = False,
        late: bool = False,
        early: bool = False,
        config: Config | None = None,
        warn: Callable[[Problem], None] | None = None,
        actor: str | None = None,
    ) -> str | None:
        """Fire an event now: the new occurrence id, or None if it already fired (in Redis,
        or in the database when Redis has lost it).

        A scheduled event before its time needs ``early`` (:class:`TooEarlyError` otherwise);
        warnings (a stakeholder named differently on two lists, an outcome before the close)
        go to ``warn`` (the log by default) and never stop the firing. ``actor`` (the person at
        the command line by default, ``scheduler``) goes into the audit log.
        """
        if event_name == timeline.RESPONSE_RECEIVED:
            raise UsageError(
                f"{event_name} is sent to each respondent when their response is recorded "
                "(notifier responses import, or POST /api/consultations/<id>/responses), not fired"
            )
        if event_name == timeline.EXTENDED:
            raise UsageError(f"{event_name} is fired by the scheduler, once, when a consultation's closes moves later")
        config = config or self.config()
        consultation = config.consultation(consultation_id)
        event = timeline.event(consultation, event_name, config.tz)
        store = self.store
        archive.restore(self.ledger, store, consultation_id, [event_name])
        for problem in self.preflight(config, event, again=again, early=early):
            (warn or _log_warning)(problem)
        at = event.at if event.at is not None and not again else datetime.now(UTC)
        occurrence_id = self.ledger.claim_occurrence(consultation_id, event_name, at=at, again=again, late=late)
        if occurrence_id is not None:
            extension.remember(self.ledger, occurrence_id, consultation.closes)  # what this told them
            try:
                archive.fired(store, config, self.ledger, occurrence_id, actor=actor or archive.actor())
            finally:  # claimed is claimed: it goes out, and its outcomes wait in Redis for the database
                self.actors.fire.send(occurrence_id)
            log.info("fired %s", occurrence_id)
        return occurrence_id

    def preflight(self, config: Config, event: Event, *, again: bool, early: bool) -> list[Problem]:
        """What stops ``event`` firing by hand now (raised: errors, or too early), and the
        warnings that do not. An event configured in the consultation was checked with the
        config; one fired on demand (an ``outcome``) is checked here."""
        consultation = config.consultation(event.consultation_id)
        warnings: list[Problem] = []
        if event.name not in consultation.events:
            problems = check_event(config, self.runtime.renderer, consultation, event)
            errors = [p for p in problems if p.severity == "error"]
            if errors:
                raise ConfigError(errors)
            warnings += problems
        if again or self.ledger.fired(event.consultation_id, event.name) is None:  # else a no-op anyway
            warnings += timeline.check_timing(consultation, event, datetime.now(UTC), config.tz, early=early)
        return warnings

    def retry(self, consultation_id: str, event_name: str, *, actor: str | None = None) -> tuple[str, int]:
        """Put the failed deliveries of the event's latest occurrence back to pending and
        queue only those: the occurrence id and how many. UsageError if it never fired."""
        self.config().consultation(consultation_id)  # an unknown consultation is named as such
        store = self.store
        archive.restore(self.ledger, store, consultation_id, [event_name])
        occurrence_id = self.ledger.fired(consultation_id, event_name)
        if occurrence_id is None:
            raise UsageError(f"{consultation_id} {event_name} has not fired: there is nothing to retry")
        by_channel: dict[str, list[str]] = {}
        for field in self.ledger.requeue_failed(occurrence_id):
            channel, recipient = field.split("|", 1)
            by_channel.setdefault(channel, []).append(recipient)
        for channel, recipients in by_channel.items():
            for start in range(0, len(recipients), BATCH):
                self.actors.deliver.send(occurrence_id, channel, recipients[start : start + BATCH])
        count = sum(map(len, by_channel.values()))
        store.audit(
            actor or archive.actor(),
            f"retry {event_name}",
            consultation=consultation_id,
            detail=f"{occurrence_id}: {count} failed",
        )
        log.info("retrying %d failed deliveries of %s", count, occurrence_id)
        return occurrence_id, count

    def acknowledge(self, consultation_id: str, responses: Iterable[Response]) -> list[str]:
        """Thank each respondent once (event ``response_received``): start and enqueue the
        acknowledgement of each response not asked for before; their occurrence ids."""
        started = acknowledgement.request(self.ledger, consultation_id, responses)
        for occurrence_id in started:
            self.actors.fire.send(occurrence_id)
        log.info("acknowledging %d response(s) to %s", len(started), consultation_id)
        return started

    def progress(self, occurrence_id: str) -> Progress:
        """Counts of an occurrence's deliveries."""
        counts = self.ledger.counts(occurrence_id)
        total = sum(sum(c.values()) for c in counts.values())
        done = sum(n for c in counts.values() for status, n in c.items() if status in FINAL)
        state = self.ledger.occurrence(occurrence_id).state
        return Progress(total=total, done=done, counts=counts, fanned_out=state == FANNED_OUT)

    def archive(self, occurrence_id: str) -> int:
        """Archive every settled outcome of the occurrence still waiting in Redis now (``send
        --wait`` before its summary); how many this process archived."""
        archiver = self.runtime.archiver()
        assert archiver is not None
        return archiver.flush(occurrence_id)

    def workers_alive(self) -> list[str]:
        """Workers (other than this process) seen alive lately."""
        return [w for w in workers_alive(self.client) if w != self.runtime.worker_id]

    @contextlib.contextmanager
    def worker(self, *, threads: int = 8) -> Iterator[dramatiq.Worker]:
        """A Dramatiq worker in this process for the duration of the block.

        It is whole before anything can stop it: a Ctrl-C or SIGTERM that comes while it
        starts is acted on once every thread it started has begun its loop (see
        :func:`_started`), and then stops them all.
        """
        worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=200)
        try:
            with _signals_deferred(signal.SIGINT, signal.SIGTERM):
                worker.start()
                _started(worker)
            yield worker
        finally:
            worker.stop(timeout=actors.TIME_LIMIT_MS)  # in-flight messages finish or are requeued

    def wait(
        self,
        occurrence_id: str,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        timeout: float | None = None,
        poll: float = 0.2,
    ) -> Progress:
        """Block until every delivery of the occurrence is final (or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            progress = self.progress(occurrence_id)
            if on_progress:
                on_progress(progress)
            if progress.finished or (deadline and time.monotonic() > deadline):
                return progress
            time.sleep(poll)

    def close(self) -> None:
        """Release channels and connections."""
        self.runtime.close()
        self.broker.close()


@contextlib.contextmanager
def _signals_deferred(*signals: signal.Signals) -> Iterator[None]:
    """Hold back ``signals`` that arrive during the block and raise them once it ends, to the
    handlers that were there before (an ignored one stays ignored). Only the main thread
    receives signals, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


def _started(worker: dramatiq.Worker) -> None:
    """Wait until each thread ``worker`` started has begun its loop.

    Dramatiq's threads set their ``running`` flag first thing in ``run()``, and its
    ``Worker.stop`` clears that flag and joins them: a stop that comes between a thread's
    start and its first line is undone by that line, and the thread runs on while ``stop``
    waits for it (up to the four-minute time limit: ``send --wait`` stopped at once by
    Ctrl-C hung). A thread that has begun its loop sees the stop.
    """
    threads: list[ConsumerThread | WorkerThread] = [*worker.consumers.values(), *worker.workers]
    for thread in threads:
        while thread.ident is not None and thread.is_alive() and not thread.running:
            time.sleep(0.001)  # a new thread's first line: microseconds, unless the machine is busy
