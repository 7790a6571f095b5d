"""Timeline: at expressions, default events, narrowing, time zones and DST."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from notifier.config import Consultation, EventSpec
from notifier.moments import parse_at
from notifier.timeline import days_left, event, events

LONDON = ZoneInfo("Europe/London")


def consultation(**changes: object) -> Consultation:
    base: dict[str, object] = {
        "id": "c",
        "title": "T",
        "url": "https://x.example",
        "summary": "S",
        "opens": datetime(2019, 7, 9, 9, 0, tzinfo=LONDON),
        "closes": datetime(2019, 8, 15, 23, 59, tzinfo=LONDON),
        "audience": ("a",),
        "channels": ("email", "pcc-x"),
        "events": {
            n: EventSpec(name=n, at=a)
            for n, a in (("opened", "opens"), ("reminder", "closes - 7d"), ("closed", "closes"))
        },
    }
    base.update(changes)
    return Consultation(**base)


def dates(item: Consultation) -> tuple[datetime, datetime]:
    """When ``item`` opens and closes, which ``at`` expressions are relative to."""
    return item.opens, item.closes


def test_default_events_fire_at_opens_a_week_before_close_and_at_close_in_bst() -> None:
    found = events(consultation(), LONDON)
    assert [(e.name, e.at.isoformat() if e.at else None) for e in found] == [
        ("opened", "2019-07-09T09:00:00+01:00"),
        ("reminder", "2019-08-08T23:59:00+01:00"),
        ("closed", "2019-08-15T23:59:00+01:00"),
    ]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("opens + 2h", "2019-07-09T11:00:00+01:00"),
        ("opens+1d 30m", "2019-07-10T09:30:00+01:00"),
        ("closes - 1d", "2019-08-14T23:59:00+01:00"),
        ("2019-09-12 10:00", "2019-09-12T10:00:00+01:00"),
        ("2019-09-12T09:00:00+00:00", "2019-09-12T10:00:00+01:00"),
    ],
)
def test_at_expressions(expression: str, expected: str) -> None:
    assert parse_at(expression, LONDON).resolve(*dates(consultation()), LONDON).isoformat() == expected


@pytest.mark.parametrize("expression", ["closes minus 7 days", "opens - 7w", "tomorrow", "2019-13-01 10:00"])
def test_bad_at_expressions_say_what_would_be_right(expression: str) -> None:
    with pytest.raises(ValueError, match="closes - 7d"):
        parse_at(expression, LONDON)


def test_day_offsets_keep_the_wall_clock_across_the_autumn_change() -> None:
    item = consultation(
        opens=datetime(2019, 10, 1, 9, 0, tzinfo=LONDON), closes=datetime(2019, 10, 30, 23, 59, tzinfo=LONDON)
    )
    reminder = parse_at("closes - 7d", LONDON).resolve(*dates(item), LONDON)
    assert reminder.isoformat() == "2019-10-23T23:59:00+01:00"  # BST, a week before a GMT close


def test_a_time_in_the_spring_gap_is_one_real_instant_after_the_change() -> None:
    at = parse_at("2019-03-31 01:30", LONDON).resolve(*dates(consultation()), LONDON)
    assert at.astimezone(UTC) == datetime(2019, 3, 31, 1, 30, tzinfo=UTC)
    assert at.isoformat() == "2019-03-31T02:30:00+01:00"


def test_an_ambiguous_autumn_time_is_its_first_occurrence() -> None:
    at = parse_at("2019-10-27 01:30", LONDON).resolve(*dates(consultation()), LONDON)
    assert at.astimezone(UTC) == datetime(2019, 10, 27, 0, 30, tzinfo=UTC)


def test_events_narrow_channels_and_audience_and_unknown_events_fire_on_demand() -> None:
    item = consultation(events={"outcome": EventSpec(name="outcome", channels=("email",), audience=("b",))})
    outcome = event(item, "outcome", LONDON)
    assert (outcome.at, outcome.channels, outcome.audience) == (None, ("email",), ("b",))
    adhoc = event(item, "update", LONDON)
    assert (adhoc.at, adhoc.channels, adhoc.audience) == (None, ("email", "pcc-x"), ("a",))


def test_days_left_counts_calendar_days_and_never_goes_negative() -> None:
    item = consultation()
    assert days_left(item, datetime(2019, 8, 8, 23, 59, tzinfo=LONDON), LONDON) == 7
    assert days_left(item, datetime(2019, 9, 1, tzinfo=LONDON), LONDON) == 0
