"""Deadline extensions: when ``closes`` moves later after ``opened`` fired, tell everyone once.

* **What was announced.** Every occurrence remembers, in its ledger hash, the ``closes`` of
  the config it fired with (:func:`remember`); an ``extended`` occurrence also keeps
  ``previous_closes``. Both are recorded in the database with the occurrence
  (:func:`notifier.archive.fired`), and put back with it into a Redis that lost them
  (:func:`notifier.archive.restore`), so an extension is still found after a ``FLUSHALL``.
  The closing date stakeholders were last told (:func:`announced`) is that of the latest
  ``extended`` occurrence, else the one ``opened`` fired with. (An ``opened`` that fired
  before this was kept is stamped with the current ``closes`` the first time it is looked
  at: no extension is invented for it.)
* **When it fires.** With the configured ``closes`` later than the announced one, an
  ``extended`` event is due at once, or at ``events: {extended: {at: …}}`` if that is later
  (:func:`pending`). The scheduler fires it (:func:`claim`) as a named occurrence whose id
  comes from the new date, ``<consultation>:extended:<minutes since the epoch>``: however
  often the config is reloaded, or several schedulers look, one date is announced once.
  A later extension again is a new date, and so a new occurrence.
* **Who is told.** Everyone ``opened`` reached: the recipients whose ``opened`` delivery was
  sent or written to the outbox, and the accounts it posted to (:func:`told`, from the ledger
  and the record), not the audience as it is now: someone added to a list since was never
  told the first date.
* **What moves.** ``reminder`` and ``closed`` are resolved from ``closes`` as before, so they
  move with it; one that fired already stays fired.
* **What is refused.** ``validate`` (:func:`problems`) refuses ``closes`` moved earlier than
  announced, and any change once ``closed`` has fired; the scheduler then announces nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from notifier.config import Config, Consultation
from notifier.errors import Problem
from notifier.ledger import Ledger
from notifier.moments import normalise, parse_at
from notifier.store import Store
from notifier.timeline import EXTENDED, Event, event

OPENED = "opened"
CLOSED = "closed"
#: The fields of an occurrence's ledger hash (and columns of its record) that keep what it told.
CLOSES_FIELD = "closes"
PREVIOUS_FIELD = "previous_closes"
_CLOSES = CLOSES_FIELD
_PREVIOUS = PREVIOUS_FIELD


#: The statuses of an ``opened`` delivery that told its recipient (or account) the first date.
REACHED = ("sent", "outbox")


@dataclass(frozen=True, slots=True)
class Told:
    """Who ``opened`` reached: (channel, recipient key) of each delivery sent or written to the
    outbox (an account's post has the recipient ``*``)."""

    deliveries: frozenset[tuple[str, str]]

    def recipients(self, channel: str) -> set[str]:
        """The recipient keys reached on ``channel``."""
        return {recipient for found, recipient in self.deliveries if found == channel}

    def posted(self, channel: str) -> bool:
        """Whether anything on ``channel`` was reached (an account posted to)."""
        return any(found == channel for found, _ in self.deliveries)


def told(ledger: Ledger, store: Store | None, consultation_id: str) -> Told:
    """Who every ``opened`` occurrence of the consultation reached, from the ledger (outcomes
    not yet archived) and the record (what Redis may have lost)."""
    found: set[tuple[str, str]] = set()
    ids = {o.id for o in ledger.occurrences(consultation_id) if o.event == OPENED}
    if store is not None:
        ids |= {o.id for o in store.occurrences(consultation_id) if o.event == OPENED}
        for occurrence_id in ids:
            found.update(store.reached(occurrence_id, REACHED))
    for occurrence_id in ids:
        found.update((r.channel, r.recipient) for r in ledger.records(occurrence_id) if r.status in REACHED)
    return Told(frozenset(found))


@dataclass(frozen=True, slots=True)
class Extension:
    """A move of ``closes`` to announce: from ``previous`` to ``closes``, due at ``at``."""

    consultation_id: str
    previous: datetime
    closes: datetime
    at: datetime

    @property
    def number(self) -> int:
        """The occurrence number: the new closing time in minutes since the epoch (fits 32 bits)."""
        return int(self.closes.timestamp() // 60)

    @property
    def occurrence_id(self) -> str:
        """The one occurrence that announces this date."""
        return f"{self.consultation_id}:{EXTENDED}:{self.number}"


def remember(ledger: Ledger, occurrence_id: str, closes: datetime) -> None:
    """Keep the ``closes`` an occurrence fired with, beside it (first value kept)."""
    ledger.keep_occurrence_field(occurrence_id, _CLOSES, closes.astimezone(UTC).isoformat())


def announced(ledger: Ledger, consultation: Consultation) -> datetime | None:
    """The closing date stakeholders were last told of, or None when ``opened`` has not fired."""
    latest = ledger.fired(consultation.id, EXTENDED)
    if latest is not None:
        value = ledger.occurrence_field(latest, _CLOSES)
        if value is not None:
            return datetime.fromisoformat(value)
    opened = ledger.fired(consultation.id, OPENED)
    if opened is None:
        return None
    remember(ledger, opened, consultation.closes)  # one fired before closes were remembered: as it is now
    value = ledger.occurrence_field(opened, _CLOSES)
    return datetime.fromisoformat(value) if value is not None else None


def previous_closes(ledger: Ledger, occurrence_id: str, tz: ZoneInfo) -> datetime | None:
    """The ``previous_closes`` an ``extended`` occurrence announced the move from."""
    value = ledger.occurrence_field(occurrence_id, _PREVIOUS)
    return normalise(datetime.fromisoformat(value), tz) if value is not None else None


def pending(ledger: Ledger, consultation: Consultation, tz: ZoneInfo, now: datetime) -> Extension | None:
    """The extension to announce for ``consultation``, if ``closes`` moved later than announced
    and ``closed`` has not fired; due at ``now`` or at the configured ``extended.at``."""
    previous = announced(ledger, consultation)
    if previous is None or consultation.closes <= previous or ledger.fired(consultation.id, CLOSED) is not None:
        return None
    at = now
    spec = consultation.events.get(EXTENDED)
    if spec is not None and spec.at is not None:
        at = max(now, parse_at(spec.at, tz).resolve(consultation.opens, consultation.closes, tz))
    return Extension(consultation.id, normalise(previous, tz), normalise(consultation.closes, tz), at)


def claim(ledger: Ledger, extension: Extension) -> str | None:
    """Start the occurrence announcing ``extension``, once: its id, or None when it exists already."""
    started = ledger.claim_named_occurrence(
        extension.occurrence_id,
        extension.consultation_id,
        EXTENDED,
        number=extension.number,
        at=extension.at,
        extra={
            _CLOSES: extension.closes.astimezone(UTC).isoformat(),
            _PREVIOUS: extension.previous.astimezone(UTC).isoformat(),
        },
    )
    if not started:
        return None
    ledger.set_latest(extension.consultation_id, EXTENDED, extension.occurrence_id)
    return extension.occurrence_id


def plan_events(
    ledger: Ledger, consultation: Consultation, tz: ZoneInfo, now: datetime, events: list[Event]
) -> list[Event]:
    """``events`` as ``plan`` shows them: with the ``extended`` event where one is due or has
    fired (at its time), and without it otherwise."""
    found = [e for e in events if e.name != EXTENDED]
    due = pending(ledger, consultation, tz, now)
    at = due.at if due is not None else None
    if at is None:
        latest = ledger.latest([(consultation.id, EXTENDED)])[0]
        at = latest.at if latest is not None else None
    if at is None:
        return found
    found.append(replace(event(consultation, EXTENDED, tz), at=at))
    return sorted(found, key=lambda e: (e.at is None, e.at or datetime.max.replace(tzinfo=UTC)))


def problems(ledger: Ledger, config: Config) -> list[Problem]:
    """``closes`` moved earlier than announced, or changed after ``closed`` fired: errors at its line."""
    found = []
    for consultation in config.consultations.values():
        previous = announced(ledger, consultation)
        if previous is None or consultation.closes == previous:
            continue
        where = consultation.where.path, consultation.line(_CLOSES) or consultation.where.line
        told = f"{normalise(previous, config.tz):%a %d %b %Y %H:%M %Z}"
        if ledger.fired(consultation.id, CLOSED) is not None:
            found.append(Problem.at(*where, f"closes cannot change: the consultation closed {told} (closed fired)"))
        elif consultation.closes < previous:
            found.append(
                Problem.at(
                    *where,
                    f"closes cannot move earlier than announced: stakeholders were told it closes {told}; "
                    "a deadline can only be extended",
                )
            )
    return found
