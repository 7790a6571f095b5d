"""A consultation's events and when they fire. Pure.

The ``at`` grammar, and how a local time reads when the clocks change, are in
:mod:`notifier.moments`; this module applies them to a consultation's events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from notifier.config import EMAIL_CHANNEL, Config, Consultation
from notifier.errors import Problem, TooEarlyError
from notifier.moments import normalise, parse_at
from notifier.pace import finish
from notifier.window import next_opening

#: The acknowledgement of a recorded response (see :mod:`notifier.acknowledgement`): never
#: scheduled, fired once per response, to that respondent alone, by e-mail only.
RESPONSE_RECEIVED = "response_received"


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
    #: The time its ``at`` names, when the send window moved it to ``at``; None: it was not moved.
    configured: datetime | None = None
    #: Why it was moved (``Saturdays are outside the send window``).
    moved_because: str | None = None

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
    at, configured, why = None, None, None
    if spec is not None and spec.at is not None:
        at = parse_at(spec.at, tz).resolve(consultation.opens, consultation.closes, tz)
        if consultation.window is not None and spec.window != "ignore":
            opening = next_opening(consultation.window, at, tz)
            if opening.at != at:
                at, configured, why = opening.at, at, opening.reason
    return Event(
        consultation_id=consultation.id,
        name=name,
        at=at,
        channels=(spec.channels if spec and spec.channels else consultation.channels),
        audience=(spec.audience if spec and spec.audience else consultation.audience),
        skip=spec.skip if spec else (),
        configured=configured,
        moved_because=why,
    )


def finishes(config: Config, event: Event, recipients: int, start: datetime | None = None) -> datetime | None:
    """When the last message of ``event`` should go, at its channels' rates and daily caps, to
    ``recipients`` people (one post per account); None when no channel of it is limited.
    From ``start``, or the event's time."""
    begin = start or event.at
    if begin is None:
        return None
    ends = [
        finish(config.limits(channel), recipients if channel == EMAIL_CHANNEL else 1, begin)
        for channel in event.channels
    ]
    found = [end for end in ends if end is not None]
    return max(found) if found else None


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
        return [
            consultation.where.warning(
                f"event {event.name!r} is sent before the consultation closes ({closes:%a %d %b %Y %H:%M %Z})"
            )
        ]
    return []
