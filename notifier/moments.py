"""Moments in a consultation's time zone: the ``at`` grammar, dates as written, clock changes. Pure.

A leaf: it imports nothing of notifier's, so the config loader (which checks every ``at``)
and the timeline (which resolves them) both build on it without importing each other.

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
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from notifier.errors import InvalidValueError

_AT = re.compile(r"^\s*(opens|closes)(?:\s*([+-](?:\s*[+-]?\s*\d+\s*[dhm])+))?\s*$")
_OFFSET = re.compile(r"([+-]?)\s*(\d+)\s*([dhm])")


@dataclass(frozen=True, slots=True)
class At:
    """A parsed ``at`` expression: an anchor plus offsets, or a fixed moment."""

    anchor: str | None = None
    days: int = 0
    minutes: int = 0
    moment: datetime | None = None

    def resolve(self, opens: datetime, closes: datetime, tz: ZoneInfo) -> datetime:
        """The local, aware instant this expression names for a consultation that opens
        and closes at these moments."""
        if self.moment is not None:
            return normalise(self.moment, tz)
        base = opens if self.anchor == "opens" else closes
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
        raise InvalidValueError(
            f"at: {expression!r} is not 'opens' or 'closes' with an optional offset "
            "(e.g. 'closes - 7d', 'opens + 2h') nor a datetime (e.g. 2019-09-12 10:00)"
        ) from None
    return At(moment=moment if moment.tzinfo else moment.replace(tzinfo=tz))


def parse_moment(value: Any, tz: ZoneInfo) -> datetime:
    """``2019-07-09 09:00`` (local), a date, or ISO 8601 with an offset -> aware datetime."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidValueError(
                f"{value!r} is not a date and time (use 2019-07-09 09:00, or ISO 8601 with an offset)"
            ) from None
    else:
        raise InvalidValueError(f"{value!r} is not a date and time")
    return moment if moment.tzinfo else moment.replace(tzinfo=tz)


def clock_change_note(local: datetime, tz: ZoneInfo) -> str | None:
    """What the wall-clock time ``local`` (its date and time, read in ``tz``) means when the
    clocks change then, as ``2027-03-28 01:30 does not exist in ...``; None when it names
    exactly one moment.

    A time the clocks skip (01:30 on the day they go forward) is read as the same wall time
    before the change, which lands after it; a time that happens twice (01:30 on the day
    they go back) is its first occurrence. Both are quiet surprises, so ``validate`` says
    which moment will be used, with its offset.
    """
    naive = local.replace(tzinfo=None)
    first = naive.replace(tzinfo=tz, fold=0)
    used = first.astimezone(UTC).astimezone(tz)
    written = f"{naive:%Y-%m-%d %H:%M}"
    if used.replace(tzinfo=None) != naive:
        return f"{written} does not exist in {tz.key} (the clocks go forward then): it is read as {_with_offset(used)}"
    second = naive.replace(tzinfo=tz, fold=1)
    if first.utcoffset() != second.utcoffset():
        later = second.astimezone(UTC).astimezone(tz)
        return (
            f"{written} happens twice in {tz.key} (the clocks go back then): the first is used, "
            f"{_with_offset(used)}; write {later.isoformat(timespec='minutes')} for the second"
        )
    return None


def _with_offset(moment: datetime) -> str:
    """``2027-03-28 02:30 BST (+01:00)``."""
    return f"{moment:%Y-%m-%d %H:%M} {moment.tzname()} ({moment.isoformat()[-6:]})"
