"""Send windows: the days and hours messages may go out, less bank holidays and blackouts. Pure.

A public body's messages must not land at 2 a.m., on a Saturday, on Christmas Day or during
a pre-election period. A :class:`SendWindow` says when they may (``days: mon-fri``, ``hours:
"08:00-18:00"``, ``skip_bank_holidays: england-and-wales``, and the ``blackouts``);
:func:`next_opening` moves a moment outside it to the next moment inside it and says why.

Everything here works on aware datetimes read in the configured time zone: an opening is a
local wall-clock time (08:00 is 08:00 GMT in winter and 08:00 BST in summer), so a window
crosses the clock changes as a reader expects. Bank holidays come from the ``holidays``
package, whose data ships with it (no network). A leaf: it imports nothing of notifier's
but its errors, so the config loader and the timeline both build on it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays

from notifier.errors import InvalidValueError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL = {f"{day}day": day for day in ("mon", "fri", "sun")} | {
    "tuesday": "tue",
    "wednesday": "wed",
    "thursday": "thu",
    "saturday": "sat",
}
#: ``skip_bank_holidays`` names (GOV.UK's division names) and the ``holidays`` country and subdivision.
REGIONS = {
    "england-and-wales": ("GB", "ENG"),
    "scotland": ("GB", "SCT"),
    "northern-ireland": ("GB", "NIR"),
}
#: How far ahead :func:`next_opening` looks before deciding a window never opens.
HORIZON_DAYS = 800
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True, slots=True)
class Blackout:
    """Whole local days, ``start`` to ``end`` inclusive, when nothing scheduled goes out."""

    start: date
    end: date
    reason: str


@dataclass(frozen=True, slots=True)
class SendWindow:
    """When scheduled messages may go out: on ``days`` (0 is Monday), from ``opens`` until
    ``closes`` local time (None: until midnight), not on the bank holidays of ``region``
    (None: bank holidays are ordinary days) nor in a blackout."""

    days: frozenset[int] = frozenset(range(7))
    opens: time = time(0, 0)
    closes: time | None = None
    region: str | None = None
    blackouts: tuple[Blackout, ...] = ()


@dataclass(frozen=True, slots=True)
class Opening:
    """Where :func:`next_opening` put a moment: ``at``, and why it moved (None: it did not)."""

    at: datetime
    reason: str | None = None


def parse_days(value: str) -> frozenset[int]:
    """``mon-fri``, ``mon,wed,fri``, ``sat-sun`` or ``mon-fri, sat`` -> weekday numbers (Monday 0)."""
    found: set[int] = set()
    for part in str(value).lower().split(","):
        names = [_FULL.get(n.strip(), n.strip()) for n in part.split("-")]
        if len(names) > 2 or any(n not in DAYS for n in names):
            raise InvalidValueError(
                f"{value!r} is not a day or range of days (e.g. mon-fri, or mon,wed,fri; days are {', '.join(DAYS)})"
            )
        first, last = DAYS.index(names[0]), DAYS.index(names[-1])
        found.update(range(first, last + 1) if first <= last else [*range(first, 7), *range(last + 1)])
    return frozenset(found)


def parse_hours(value: str) -> tuple[time, time | None]:
    """``"08:00-18:00"`` -> (08:00, 18:00); an end of ``24:00`` is midnight (None)."""
    match = _HOURS.match(str(value))
    problem = f'{value!r} is not a range of local times like "08:00-18:00"'
    if not match:
        raise InvalidValueError(problem)
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2):
        raise InvalidValueError(problem)
    opens, closes = time(h1, m1), None if h2 == 24 else time(h2, m2)
    if closes is not None and closes <= opens:
        raise InvalidValueError(f"{value!r} ends before it starts (a window cannot span midnight)")
    return opens, closes


def check_region(value: str) -> str:
    """``skip_bank_holidays``: a known region name, returned as written; ValueError otherwise."""
    if value not in REGIONS:
        raise InvalidValueError(f"unknown region {value!r} (known: {', '.join(REGIONS)})")
    return value


@functools.lru_cache(maxsize=8)
def _calendar(region: str) -> holidays.HolidayBase:
    country, subdiv = REGIONS[region]
    return holidays.country_holidays(country, subdiv=subdiv)


def bank_holiday(region: str | None, day: date) -> str | None:
    """The name of the bank holiday on ``day`` in ``region`` (``Christmas Day``), or None."""
    if region is None:
        return None
    name = _calendar(region).get(day)
    return str(name) if name else None


def closed_day(window: SendWindow, day: date) -> str | None:
    """Why nothing goes out at all on local ``day`` (a blackout, a bank holiday, a day not in
    the window), or None when the window opens that day."""
    for blackout in window.blackouts:
        if blackout.start <= day <= blackout.end:
            return f"blackout {blackout.start:%d %b %Y} to {blackout.end:%d %b %Y}: {blackout.reason}"
    holiday = bank_holiday(window.region, day)
    if holiday is not None:
        return f"{day:%a %d %b %Y} is a bank holiday ({holiday})"
    if day.weekday() not in window.days:
        return f"{day:%A}s are outside the send window"
    return None


def _local(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The instant the clocks read ``at`` on ``day`` in ``tz`` (a time they skip: just after)."""
    return datetime.combine(day, at, tzinfo=tz).astimezone(UTC).astimezone(tz)


def next_opening(window: SendWindow, moment: datetime, tz: ZoneInfo) -> Opening:
    """``moment`` itself when the window is open then; otherwise the next moment it opens,
    with the reason it could not be ``moment`` (the first obstacle met)."""
    local = moment.astimezone(tz)
    day, reason = local.date(), None
    for _ in range(HORIZON_DAYS):
        closed = closed_day(window, day)
        if closed is None:
            opens = _local(day, window.opens, tz)
            closes = _local(day, window.closes, tz) if window.closes else _local(day + timedelta(days=1), time(), tz)
            if local < opens:
                return Opening(opens, reason or f"before the window opens at {window.opens:%H:%M}")
            if local < closes:
                return Opening(local, reason)
            reason = reason or f"after the window closes at {window.closes or time():%H:%M}"
        else:
            reason = reason or closed
        day += timedelta(days=1)
        local = _local(day, time(), tz)
    raise InvalidValueError(f"the send window does not open in the {HORIZON_DAYS} days after {moment:%Y-%m-%d}")


def next_day_opening(window: SendWindow | None, moment: datetime, tz: ZoneInfo) -> datetime:
    """The first moment of the local day after ``moment``'s, or the window's next opening from then."""
    tomorrow = _local(moment.astimezone(tz).date() + timedelta(days=1), time(), tz)
    return next_opening(window, tomorrow, tz).at if window is not None else tomorrow
