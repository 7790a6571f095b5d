"""Send windows: scheduled events outside the days and hours, on a bank holiday or in a
blackout fire at the next opening, across both clock changes, and ``plan`` says so."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import pytest

from notifier.errors import InvalidValueError
from notifier.window import Blackout, SendWindow, next_day_opening, next_opening, parse_days, parse_hours
from tests.conftest import Project

LONDON = ZoneInfo("Europe/London")
OFFICE = SendWindow(
    days=parse_days("mon-fri"), opens=time(8), closes=time(18), region="england-and-wales", blackouts=()
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=LONDON)


def test_a_moment_inside_the_window_is_not_moved() -> None:
    opening = next_opening(OFFICE, at("2027-03-03 10:00"), LONDON)
    assert opening.at == at("2027-03-03 10:00")
    assert opening.reason is None


def test_a_saturday_event_fires_on_monday_at_eight() -> None:
    opening = next_opening(OFFICE, at("2027-03-06 10:00"), LONDON)
    assert opening.at == at("2027-03-08 08:00")
    assert opening.reason == "Saturdays are outside the send window"


def test_an_evening_event_fires_the_next_morning() -> None:
    opening = next_opening(OFFICE, at("2027-03-03 18:00"), LONDON)
    assert opening.at == at("2027-03-04 08:00")
    assert opening.reason == "after the window closes at 18:00"


def test_christmas_day_and_the_bank_holidays_after_it_are_skipped() -> None:
    # 2027: 25 Dec is a Saturday; the bank holidays are Mon 27 and Tue 28 December.
    opening = next_opening(OFFICE, at("2027-12-25 09:00"), LONDON)
    assert opening.at == at("2027-12-29 08:00")
    assert opening.reason == "Sat 25 Dec 2027 is a bank holiday (Christmas Day)"
    weekday = next_opening(OFFICE, at("2026-12-25 09:00"), LONDON)  # a Friday
    assert weekday.at == at("2026-12-29 08:00")
    assert weekday.reason == "Fri 25 Dec 2026 is a bank holiday (Christmas Day)"


def test_a_blackout_holds_events_until_the_day_after_it_ends() -> None:
    window = SendWindow(
        days=OFFICE.days,
        opens=OFFICE.opens,
        closes=OFFICE.closes,
        region=OFFICE.region,
        blackouts=(Blackout(date(2027, 4, 10), date(2027, 5, 7), "pre-election period"),),
    )
    opening = next_opening(window, at("2027-04-20 11:00"), LONDON)
    assert opening.at == at("2027-05-10 08:00")  # Sat 8, Sun 9, then Monday
    assert opening.reason == "blackout 10 Apr 2027 to 07 May 2027: pre-election period"


def test_the_spring_clock_change_of_2027_opens_at_eight_british_summer_time() -> None:
    # Sat 27 March is GMT; Good Friday 26 and Easter Monday 29 March; the clocks go forward on Sunday 28.
    opening = next_opening(OFFICE, at("2027-03-27 10:00"), LONDON)
    assert opening.at.astimezone(UTC) == datetime(2027, 3, 30, 7, 0, tzinfo=UTC)
    assert opening.at.tzname() == "BST"


def test_the_autumn_clock_change_of_2027_opens_at_eight_greenwich_mean_time() -> None:
    # 01:30 on Sunday 31 October happens twice; either way the next opening is Monday 08:00 GMT.
    for fold in (0, 1):
        moment = datetime(2027, 10, 31, 1, 30, tzinfo=LONDON, fold=fold)
        opening = next_opening(OFFICE, moment, LONDON)
        assert opening.at.astimezone(UTC) == datetime(2027, 11, 1, 8, 0, tzinfo=UTC)
        assert opening.at.tzname() == "GMT"


def test_the_next_day_of_a_daily_cap_starts_at_the_window_opening_across_the_clock_change() -> None:
    friday_evening = at("2027-10-29 17:00")
    assert next_day_opening(OFFICE, friday_evening, LONDON).astimezone(UTC) == datetime(2027, 11, 1, 8, tzinfo=UTC)
    assert next_day_opening(None, friday_evening, LONDON) == at("2027-10-30 00:00")


@pytest.mark.parametrize(
    ("days", "expected"),
    [("mon-fri", {0, 1, 2, 3, 4}), ("sat-sun", {5, 6}), ("mon,wed,fri", {0, 2, 4}), ("fri-mon", {4, 5, 6, 0})],
)
def test_days_are_read_as_ranges_and_lists(days: str, expected: set[int]) -> None:
    assert parse_days(days) == expected


@pytest.mark.parametrize("hours", ["8-18", "18:00-08:00", "08:00-25:00", "08:00"])
def test_bad_hours_are_refused(hours: str) -> None:
    with pytest.raises(InvalidValueError):
        parse_hours(hours)


WINDOWED = """
send_window:
  days: mon-fri
  hours: "08:00-18:00"
  skip_bank_holidays: england-and-wales
blackouts:
  - {from: 2027-04-10, to: 2027-05-07, reason: pre-election period}
"""
CONSULTATION = """title: Window test
url: https://www.pcc.example/consultations/window
summary: A consultation whose events fall outside the send window.
opens: 2027-03-27 10:00
closes: 2027-12-25 09:00
audience: [csp]
channels: [email]
events:
  opened: {at: opens}
  reminder: {at: 2027-04-20 11:00}
  closed: {at: closes, window: ignore}
  autumn: {at: 2027-10-31 01:30}
"""


def _plan_line(project: Project, event: str) -> str:
    out = project.run("plan", "window-2027", check=True).stdout
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if f" {event} " in line)
    end = first + 1
    while end < len(lines) and lines[end].count("│") > 2 and not lines[end].split("│")[2].strip():
        end += 1  # the event's cell is blank: the When cell goes on
    return " ".join(lines[first:end])


@pytest.fixture
def windowed(project: Project, redis_url: str) -> Project:
    project.env.update({"NOTIFIER_REDIS_URL": redis_url, "COLUMNS": "400"})
    main = project.config / "notifier.yaml"
    main.write_text(main.read_text() + WINDOWED)
    project.write("config/consultations/window-2027.yaml", CONSULTATION)
    return project


def test_plan_shows_the_configured_and_actual_time_and_why(windowed: Project) -> None:
    opened = _plan_line(windowed, "opened")
    assert "Tue 30 Mar 2027 08:00 BST" in opened
    assert "set for Sat 27 Mar 2027 10:00 GMT" in opened
    assert "Saturdays are outside the send window" in opened
    reminder = _plan_line(windowed, "reminder")
    assert "Mon 10 May 2027 08:00 BST" in reminder and "pre-election period" in reminder
    autumn = _plan_line(windowed, "autumn")
    assert "Mon 01 Nov 2027 08:00 GMT" in autumn


def test_an_event_that_ignores_the_window_keeps_its_time(windowed: Project) -> None:
    closed = _plan_line(windowed, "closed")
    assert "Sat 25 Dec 2027 09:00 GMT" in closed
    assert "set for" not in closed


def test_a_consultation_may_have_its_own_window(windowed: Project) -> None:
    text = CONSULTATION + 'send_window: {days: mon-sun, hours: "09:00-17:00"}\n'
    windowed.write("config/consultations/window-2027.yaml", text)
    opened = _plan_line(windowed, "opened")
    assert "Sat 27 Mar 2027 10:00 GMT" in opened and "set for" not in opened
    reminder = _plan_line(windowed, "reminder")  # the blackouts still apply
    assert "Sat 08 May 2027 09:00 BST" in reminder
