"""A consultation's timeline and audience as the console shows them: what ``notifier plan`` prints.

Built from the same parts as the command: :func:`notifier.timeline.events` for when each event
fires, :func:`notifier.audience.resolve` less the suppressed and :func:`notifier.responders.skipped`
for its audience size, :func:`notifier.scheduler.status` for its state, after
:func:`notifier.archive.restore` has put back what Redis lost. Synchronous: handlers call it
through :func:`notifier.web.console.blocking`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from notifier import archive, timeline
from notifier.audience import resolve
from notifier.channels import registry
from notifier.config import Config, Consultation, Settings
from notifier.ledger import Ledger
from notifier.moments import normalise
from notifier.responders import RESPONDED, Responders, responders, skipped
from notifier.scheduler import EventStatus, status
from notifier.store import Store
from notifier.timeline import Event

ConsultationState = Literal["upcoming", "open", "closed"]


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """One row of the timeline: an event, when, to how many, and where it stands."""

    event: Event
    when: str
    audience: int
    notes: tuple[str, ...]
    state: str
    status: EventStatus
    #: When the send window moved it: when it was set for, and why.
    moved: str | None = None
    #: When its last message should go at its channels' pace (None: no channel is paced).
    finishes: str | None = None

    @property
    def fired(self) -> bool:
        """Whether the event has fired (at least once)."""
        return self.status.occurrence is not None


@dataclass(frozen=True, slots=True)
class ListCount:
    """One list of a consultation's audience, and how many of its members are told."""

    id: str
    name: str
    told: int
    suppressed: int


@dataclass(frozen=True, slots=True)
class Plan:
    """A consultation's state, timeline and audience by list."""

    consultation: Consultation
    state: ConsultationState
    events: list[PlannedEvent]
    lists: list[ListCount] = field(default_factory=list)
    #: Whether a channel of the consultation keeps to a rate (the timeline then says when each finishes).
    paced: bool = False

    @property
    def next(self) -> PlannedEvent | None:
        """The next event still to fire at its time, if any."""
        return next((p for p in self.events if p.status.state in ("scheduled", "due")), None)


def local(moment: datetime | None, config: Config) -> str:
    """A time as ``plan`` prints it: ``Tue 09 Jul 2019 09:00 BST``, or ``on demand``."""
    if moment is None:
        return "on demand"
    return f"{normalise(moment, config.tz):%a %d %b %Y %H:%M %Z}"


def state_of(consultation: Consultation, now: datetime) -> ConsultationState:
    """Upcoming before it opens, open until it closes, closed after."""
    if now < consultation.opens:
        return "upcoming"
    return "open" if now < consultation.closes else "closed"


def describe(found: EventStatus, config: Config) -> str:
    """An event's state in the words of ``plan``."""
    if found.state == "fired" and found.occurrence is not None:
        return f"fired {local(found.occurrence.fired_at, config)}" + (" (late)" if found.late else "")
    if found.state == "missed":
        return "missed (only a send by hand fires it)"
    if found.state == "due":
        return "due: fires late when the scheduler runs"
    return str(found.state)


def plan(  # noqa: PLR0913 - the parts plan reads, and whether to count by list; all from the app
    settings: Settings,
    ledger: Ledger,
    store: Store,
    config: Config,
    consultation: Consultation,
    *,
    by_list: bool = False,
) -> Plan:
    """The timeline of ``consultation`` as ``notifier plan CONSULTATION`` computes it."""
    archive.restore(ledger, store, consultation.id)
    suppressed = ledger.suppressed()
    now = datetime.now(UTC)
    events = timeline.events(consultation, config.tz)
    states = status(ledger, events, now, grace=settings.grace)
    reasons = responders(store, consultation.id, config.tz) if any(RESPONDED in e.skip for e in events) else None
    paced = any(config.limits(channel) for channel in consultation.channels)
    rows = []
    for event, found in zip(events, states, strict=True):
        size, notes = _audience(config, event, suppressed, reasons)
        moved = None
        if event.configured is not None:
            moved = f"set for {local(event.configured, config)}; moved: {event.moved_because}"
        rows.append(
            PlannedEvent(
                event=event,
                when=local(event.at, config),
                audience=size,
                notes=notes,
                state=describe(found, config),
                status=found,
                moved=moved,
                finishes=_finishes(config, event, size) if paced else None,
            )
        )
    lists = _by_list(config, consultation, suppressed) if by_list else []
    return Plan(consultation, state_of(consultation, now), rows, lists, paced)


def _finishes(config: Config, event: Event, size: int) -> str:
    moment = timeline.finishes(config, event, size)
    return "-" if moment is None else local(moment, config)


def _audience(
    config: Config, event: Event, suppressed: dict[str, str], reasons: Responders | None
) -> tuple[int, tuple[str, ...]]:
    """How many the event e-mails (after de-duplication, suppression and ``skip``), and notes
    on who is left out, as ``plan`` counts them."""
    audience = resolve(config.lists, event.audience, suppressed=suppressed)
    left_out = skipped(event.skip, reasons, audience.recipients)
    notes = [f"{len(audience.suppressed)} suppressed"] * bool(audience.suppressed)
    notes += [f"{len(left_out)} skipped: responded"] * bool(left_out)
    return len(audience) - len(left_out), tuple(notes)


@dataclass(frozen=True, slots=True)
class Reach:
    """Who an event would tell if fired now: e-mails, and the accounts it posts on."""

    emails: int
    accounts: tuple[str, ...]
    notes: tuple[str, ...]
    #: Whether the event has e-mail among its channels.
    by_email: bool


def reach(ledger: Ledger, store: Store, config: Config, consultation: Consultation, event: Event) -> Reach:
    """What firing ``event`` now would send: the confirmation page's "36 e-mails and 4 posts"."""
    suppressed = ledger.suppressed()
    reasons = responders(store, consultation.id, config.tz) if RESPONDED in event.skip else None
    by_email = any(registry.per_recipient(c) for c in event.channels)
    size, notes = _audience(config, event, suppressed, reasons) if by_email else (0, ())
    accounts = tuple(c for c in event.channels if not registry.per_recipient(c))
    return Reach(size, accounts, notes, by_email)


def _by_list(config: Config, consultation: Consultation, suppressed: dict[str, str]) -> list[ListCount]:
    """Each list of the consultation's audience (with the lists it includes) and its count."""
    counts = []
    for list_id in consultation.audience:
        audience = resolve(config.lists, [list_id], suppressed=suppressed)
        name = config.lists[list_id].name or list_id
        counts.append(ListCount(list_id, str(name), len(audience), len(audience.suppressed)))
    return counts
