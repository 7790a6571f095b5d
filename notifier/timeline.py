"""A consultation's events and when they fire. Pure.

``at`` is ``opens`` or ``closes`` with optional ``+``/``-`` offsets in days, hours or
minutes (``closes - 7d``, ``opens + 1d 2h``), or a datetime. Day offsets keep the local
wall-clock time (a reminder 7 days before a 23:59 close is at 23:59 even across a clock
change); hour and minute offsets are elapsed time. A local time that does not exist (the
spring-forward gap) is read as the same wall time before the change, which lands after
it; an ambiguous one (autumn) is its first occurrence. Either way an event is one instant
and fires once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from notifier.config import EMAIL_CHANNEL, Consultation
from notifier.errors import Problem, TooEarlyError

#: The acknowledgement of a recorded response (see :mod:`notifier.acknowledgement`): never
#: scheduled, fired once per response, to that respondent alone, by e-mail only.
RESPONSE_RECEIVED = "response_received"
_AT = re.compile(r"^\s*(opens|closes)(?:\s*([+-](?:\s*[+-]?\s*\d+\s*[dhm])+))?\s*$")
_OFFSET = re.compile(r"([+-]?)\s*(\d+)\s*([dhm])")


@dataclass(frozen=True, slots=True)
class At:
    """A parsed ``at`` expression: an anchor plus offsets, or a fixed moment."""

    anchor: str | None = None
    days: int = 0
    minutes: int = 0
    moment: datetime | None = None

    def resolve(self, consultation: Consultation, tz: ZoneInfo) -> datetime:
        """The local, aware instant this expression names for ``consultation``."""
        if self.moment is not None:
            return normalise(self.moment, tz)
        base = consultation.opens if self.anchor == "opens" else consultation.closes
        local = normalise(base, tz)
        shifted = normalise(local + timedelta(days=self.days), tz)  # wall clock
        return (shifted.astimezone(UTC) + timedelta(minutes=self.minutes)).astimezone(tz)


def normalise(moment: datetime, tz: ZoneInfo) -> datetime:
    """``moment`` as a real instant in ``tz`` (gap times move forward past the change)."""
    return moment.astimezone(UTC).astimezone(tz)


def parse_at(expression: str, tz: ZoneInfo) -> At:
    """Parse an ``at`` expression; ValueError says what is wrong and what would be right."""
    match = _AT.match(expression)
    if match:
        days = minutes = 0
        current = "+"
        for sign, number, unit in _OFFSET.findall(match.group(2) or ""):
            current = sign or current  # "closes - 1d 2h" takes 1d and 2h off
            n = int(number) * (-1 if current == "-" else 1)
            if unit == "d":
                days += n
            else:
                minutes += n * 60 if unit == "h" else n
        return At(anchor=match.group(1), days=days, minutes=minutes)
    try:
        moment = datetime.fromisoformat(expression.strip())
    except ValueError:
        raise ValueError(
            f"at: {expression!r} is not 'opens' or 'closes' with an optional offset "
            "(e.g. 'closes - 7d', 'opens + 2h') nor a datetime (e.g. 2019-09-12 10:00)"
        ) from None
    return At(moment=moment if moment.tzinfo else moment.replace(tzinfo=tz))


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a consultation: when it fires (None: only on demand) and to whom, how."""

    consultation_id: str
    name: str
    at: datetime | None
    channels: tuple[str, ...]
    audience: tuple[str, ...]
    #: Who to leave out (``responded``: those with a recorded response), from the event's ``skip``.
    skip: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """``consultation:event``, the name of this event in the ledger."""
        return f"{self.consultation_id}:{self.name}"


def events(consultation: Consultation, tz: ZoneInfo) -> list[Event]:
    """Every configured event of ``consultation``, scheduled ones in time order first."""
    found = [event(consultation, name, tz) for name in consultation.events]
    return sorted(found, key=lambda e: (e.at is None, e.at or datetime.max.replace(tzinfo=UTC)))


def event(consultation: Consultation, name: str, tz: ZoneInfo) -> Event:
    """The event ``name`` of ``consultation``; one not configured fires on demand only, to
    the consultation's audience on its channels (an ``outcome``, say)."""
    spec = consultation.events.get(name)
    if name == RESPONSE_RECEIVED:  # one e-mail to one respondent, who need not be on any list
        return Event(consultation_id=consultation.id, name=name, at=None, channels=(EMAIL_CHANNEL,), audience=())
    at = None
    if spec is not None and spec.at is not None:
        at = parse_at(spec.at, tz).resolve(consultation, tz)
    return Event(
        consultation_id=consultation.id,
        name=name,
        at=at,
        channels=(spec.channels if spec and spec.channels else consultation.channels),
        audience=(spec.audience if spec and spec.audience else consultation.audience),
        skip=spec.skip if spec else (),
    )


def days_left(consultation: Consultation, moment: datetime, tz: ZoneInfo) -> int:
    """Whole calendar days from ``moment`` to the close, never negative."""
    closes = normalise(consultation.closes, tz).date()
    return max(0, (closes - normalise(moment, tz).date()).days)



def check_timing(
    consultation: Consultation, event: Event, now: datetime, tz: ZoneInfo, *, early: bool
) -> list[Problem]:
    """Whether ``event`` may be fired by hand at ``now``: the warnings, if any.

    A scheduled event before its time raises :class:`TooEarlyError` unless ``early``: once
    fired it is done and does not go again at its time, so sending early must be meant. An
    on-demand event (an ``outcome``) before the consultation has closed is only a warning.
    """
    if event.at is not None:
        if now < event.at and not early:
            raise TooEarlyError(
                f"{event.key} is scheduled for {event.at:%a %d %b %Y %H:%M %Z}: firing it now sends it early, "
                "and it will then not go at its time. Use --early to send it now anyway."
            )
        return []
    closes = normalise(consultation.closes, tz)
    if now < closes:
        return [consultation.where.warning(
            f"event {event.name!r} is sent before the consultation closes ({closes:%a %d %b %Y %H:%M %Z})"
        )]
    return []
