"""A consultation's agenda: the rows ``notifier plan`` prints and the console's timeline shows.

Each row is an event (with the ``extended`` one where :func:`notifier.extension.plan_events` says
so), when it fires (and, when the send window moved it, when it was set for and why), how many it
tells (:func:`notifier.audience.resolve` less the suppressed and :func:`notifier.responders.skipped`),
when its last message goes at its channels' pace, and its state (:func:`notifier.scheduler.status`).
Nothing here prints or writes: ``cli.py`` draws the rows as a table, the console as HTML. The
caller puts back what Redis lost first (:func:`notifier.archive.restore`), as that writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from notifier import extension, timeline
from notifier.audience import resolve
from notifier.channels import registry
from notifier.config import Config, Consultation
from notifier.ledger import Ledger
from notifier.moments import normalise
from notifier.responders import RESPONDED, Responders, skipped
from notifier.scheduler import EventStatus, status
from notifier.timeline import Event

ConsultationState = Literal["upcoming", "open", "closed"]

#: Who the responders of a consultation are (by its id), for an event's ``skip``; None when unknown.
ResponderSource = Callable[[str], Responders | None]


@dataclass(frozen=True, slots=True)
class Row:
    """One row of the agenda: an event, when, to how many, at what pace, and where it stands."""

    event: Event
    #: When it fires, in local time (``on demand`` without a time).
    when: str
    audience: int
    #: Who is left out: ``3 suppressed``, ``2 skipped: responded``.
    notes: tuple[str, ...]
    #: Where it stands (None: the state is unknown, no ledger could be read).
    status: EventStatus | None
    #: When its last message should go at its channels' pace, local (``-``: no channel is paced).
    finishes: str
    #: When the send window moved it: the local time it was set for (None: not moved).
    configured: str | None = None

    @property
    def moved_because(self) -> str:
        """Why the send window moved it (empty when it was not moved)."""
        return self.event.moved_because or ""


@dataclass(frozen=True, slots=True)
class ListCount:
    """One list of a consultation's audience, and how many of its members are told."""

    id: str
    name: str
    told: int
    suppressed: int


@dataclass(frozen=True, slots=True)
class Agenda:
    """A consultation's state, its rows, and (when asked for) its audience by list."""

    consultation: Consultation
    state: ConsultationState
    events: list[Row]
    lists: list[ListCount] = field(default_factory=list)
    #: Whether a channel of the consultation keeps to a rate (the rows then say when each finishes).
    paced: bool = False

    @property
    def next(self) -> Row | None:
        """The next event still to fire at its time, if any."""
        return next((r for r in self.events if r.status and r.status.state in ("scheduled", "due")), None)


@dataclass(frozen=True, slots=True)
class Reach:
    """Who an event would tell if fired now: e-mails, and the accounts it posts on."""

    emails: int
    accounts: tuple[str, ...]
    notes: tuple[str, ...]
    #: Whether the event has e-mail among its channels.
    by_email: bool


def local(moment: datetime | None, config: Config, none: str = "on demand") -> str:
    """A time as ``plan`` prints it: ``Tue 09 Jul 2019 09:00 BST``, or ``none`` without one."""
    if moment is None:
        return none
    return f"{normalise(moment, config.tz):%a %d %b %Y %H:%M %Z}"


def state_of(consultation: Consultation, now: datetime) -> ConsultationState:
    """Upcoming before it opens, open until it closes, closed after."""
    if now < consultation.opens:
        return "upcoming"
    return "open" if now < consultation.closes else "closed"


def describe(found: EventStatus | None, config: Config, *, by_hand: str) -> str:
    """An event's state in words; ``by_hand`` names what fires a missed event (``?``: unknown)."""
    if found is None:
        return "?"
    if found.state == "fired" and found.occurrence is not None:
        return f"fired {local(found.occurrence.fired_at, config)}" + (" (late)" if found.late else "")
    if found.state == "missed":
        return f"missed (only {by_hand} fires it)"
    if found.state == "due":
        return "due: fires late when the scheduler runs"
    return str(found.state)


def agenda(  # noqa: PLR0913 - what the rows are read from; all from the caller's process
    config: Config,
    consultation: Consultation,
    ledger: Ledger | None,
    suppressed: dict[str, str],
    responded: ResponderSource,
    now: datetime,
    *,
    grace: timedelta,
    by_list: bool = False,
) -> Agenda:
    """The agenda of ``consultation`` at ``now``; without a ledger, states unknown and no ``extended``.
    ``responded`` is asked only when an event skips those who responded."""
    events = timeline.events(consultation, config.tz)
    if ledger is not None:
        events = extension.plan_events(ledger, consultation, config.tz, now, events)
    states: list[EventStatus | None] = [None] * len(events)
    if ledger is not None:
        states = list(status(ledger, events, now, grace=grace))
    reasons = responded(consultation.id) if any(RESPONDED in e.skip for e in events) else None
    rows = [_row(config, event, found, suppressed, reasons) for event, found in zip(events, states, strict=True)]
    lists = _by_list(config, consultation, suppressed) if by_list else []
    paced = any(config.limits(channel) for channel in consultation.channels)
    return Agenda(consultation, state_of(consultation, now), rows, lists, paced)


def _row(
    config: Config, event: Event, found: EventStatus | None, suppressed: dict[str, str], reasons: Responders | None
) -> Row:
    size, notes = audience(config, event, suppressed, reasons)
    configured = None if event.configured is None else local(event.configured, config)
    finishes = local(timeline.finishes(config, event, size), config, "-")
    return Row(event, local(event.at, config), size, notes, found, finishes, configured)


def audience(
    config: Config, event: Event, suppressed: dict[str, str], reasons: Responders | None
) -> tuple[int, tuple[str, ...]]:
    """How many the event e-mails (after de-duplication, suppression and ``skip``), and notes
    on who is left out."""
    found = resolve(config.lists, event.audience, suppressed=suppressed)
    left_out = skipped(event.skip, reasons, found.recipients)
    notes = [f"{len(found.suppressed)} suppressed"] * bool(found.suppressed)
    notes += [f"{len(left_out)} skipped: responded"] * bool(left_out)
    return len(found) - len(left_out), tuple(notes)


def reach(config: Config, event: Event, suppressed: dict[str, str], reasons: Responders | None) -> Reach:
    """What firing ``event`` now would send: the confirmation's "36 e-mails and 4 posts"."""
    by_email = any(registry.per_recipient(c) for c in event.channels)
    size, notes = audience(config, event, suppressed, reasons) if by_email else (0, ())
    accounts = tuple(c for c in event.channels if not registry.per_recipient(c))
    return Reach(size, accounts, notes, by_email)


def _by_list(config: Config, consultation: Consultation, suppressed: dict[str, str]) -> list[ListCount]:
    """Each list of the consultation's audience (with the lists it includes) and its count."""
    counts = []
    for list_id in consultation.audience:
        found = resolve(config.lists, [list_id], suppressed=suppressed)
        name = config.lists[list_id].name or list_id
        counts.append(ListCount(list_id, str(name), len(found), len(found.suppressed)))
    return counts
