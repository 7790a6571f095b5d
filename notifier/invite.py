"""Calendar invites: the ``.ics`` an event with ``attach_calendar: true`` attaches to its e-mails.

One VEVENT for the consultation's closing date (``icalendar``): an all-day event on that date
when the consultation closes at the end of a day (23:59, or midnight), else an event at its
time. Its UID is the same for every e-mail of a consultation, ``<id>-closes@<sender domain>``,
so a calendar that has it updates the entry rather than adding another when the deadline is
extended; SEQUENCE (the minutes from ``opens`` to ``closes``) grows as ``closes`` moves later,
which is the only move allowed once stakeholders were told (:mod:`notifier.extension`).
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from email.utils import parseaddr
from zoneinfo import ZoneInfo

import icalendar

from notifier.channels.base import Attachment
from notifier.config import Config, Consultation
from notifier.moments import normalise

PRODID = "-//notifier//consultation deadlines//EN"
_END_OF_DAY = (time(23, 59), time(0, 0))


def uid(consultation: Consultation, config: Config) -> str:
    """The consultation's one calendar UID."""
    domain = parseaddr(config.email.from_)[1].rpartition("@")[2] or "localhost"
    return f"{consultation.id}-closes@{domain}"


def sequence(consultation: Consultation) -> int:
    """Grows as ``closes`` moves later (the minutes from ``opens`` to ``closes``)."""
    return max(0, int((consultation.closes - consultation.opens).total_seconds() // 60))


def ics(consultation: Consultation, config: Config, *, now: datetime | None = None) -> bytes:
    """The ``.ics`` with the consultation's closing date."""
    tz: ZoneInfo = config.tz
    closes = normalise(consultation.closes, tz)
    event = icalendar.Event()
    event.add("uid", uid(consultation, config))
    event.add("dtstamp", now or datetime.now(UTC))
    event.add("sequence", sequence(consultation))
    event.add("summary", f"Consultation closes: {consultation.title}")
    event.add(
        "description", f"{consultation.title}: respond by {closes:%H:%M} on {closes:%d %B %Y}.\n{consultation.url}"
    )
    event.add("url", consultation.url)
    if closes.timetz().replace(tzinfo=None, second=0, microsecond=0) in _END_OF_DAY:
        day = closes.date() - timedelta(days=1) if closes.time() == time(0, 0) else closes.date()
        event.add("dtstart", day)
        event.add("dtend", day + timedelta(days=1))
    else:
        event.add("dtstart", closes.astimezone(UTC))
        event.add("dtend", closes.astimezone(UTC) + timedelta(minutes=30))
    event.add("transp", "TRANSPARENT")
    calendar = icalendar.Calendar()
    calendar.add("prodid", PRODID)
    calendar.add("version", "2.0")
    calendar.add("method", "PUBLISH")
    calendar.add_component(event)
    return bytes(calendar.to_ical())


def attachment(consultation: Consultation, config: Config) -> Attachment:
    """The invite as an e-mail attachment, ``<consultation id>.ics``."""
    return Attachment(
        filename=f"{consultation.id}.ics",
        content_type='text/calendar; charset="utf-8"; method=PUBLISH',
        data=ics(consultation, config),
    )
