"""Consultation files: one consultation per ``consultations/*.yaml``, its dates and its events' ``at``.

Dates written without an offset are local to the configured time zone; a local time that
the clocks skip or repeat is a warning that says which moment is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from notifier.config._checks import count_errors, is_http_url
from notifier.config._models import DEFAULT_EVENTS, ID, Consultation, Lines, Where
from notifier.config._yaml import pydantic_problems, read_yaml
from notifier.errors import Problem
from notifier.moments import clock_change_note, parse_at, parse_moment


def load_consultations(folder: Path, tz: ZoneInfo, problems: list[Problem]) -> dict[str, Consultation]:
    """Every consultation in ``folder`` that loads without an error, by id (its file stem);
    the problems of the others (and any warnings) added to ``problems``."""
    consultations: dict[str, Consultation] = {}
    if not folder.is_dir():
        return consultations
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".yaml", ".yml"):
            continue
        consultation_id = path.stem
        if consultation_id in consultations:
            problems.append(Problem.at(path, 1, f"duplicate consultation id {consultation_id!r}"))
            continue
        if not ID.match(consultation_id):
            problems.append(
                Problem.at(
                    path,
                    1,
                    f"consultation id {consultation_id!r} (the file name) must be lower-case letters, digits, - or _",
                )
            )
            continue
        data, lines = read_yaml(path, problems)
        if data is None:
            continue  # read_yaml said why
        if not isinstance(data, dict):
            problems.append(Problem.at(path, 1, "a consultation file is a mapping (title, url, opens, …)"))
            continue
        item = _consultation(consultation_id, data, _File(path, lines, tz, problems))
        if item is not None:
            consultations[consultation_id] = item
    return consultations


@dataclass(frozen=True, slots=True)
class _File:
    """The consultation file being read: where its keys are, the time zone its dates are
    local to, and the list its problems go to."""

    path: Path
    lines: Lines
    tz: ZoneInfo
    problems: list[Problem]


def _consultation(consultation_id: str, data: dict[str, Any], file: _File) -> Consultation | None:
    """The consultation ``data`` describes, or None when it has an error (added to
    ``file.problems``, with any warnings)."""
    path, lines, problems = file.path, file.lines, file.problems
    before = count_errors(problems)
    data = dict(data)
    for key in ("id", "where"):
        if key in data:
            problems.append(Problem.at(path, lines.line((key,)), f"unknown key {key!r}"))
            data.pop(key)
    moments = [_moment(data, key, file) for key in ("opens", "closes") if key in data]
    if not all(moments):
        return None
    events = _events(data.get("events"), file)
    if events is None:
        return None
    data["events"] = events
    try:
        consultation = Consultation.model_validate(data)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, path, lines))
        return None
    consultation = consultation.model_copy(update={"id": consultation_id, "where": Where(str(path), 1)})
    consultation._lines = lines
    _check_url_and_dates(consultation, file)
    _check_event_times(consultation, path, lines, file.tz, problems)
    return consultation if count_errors(problems) == before else None


def _events(raw_events: Any, file: _File) -> dict[str, Any] | None:
    """The ``events`` mapping ready to validate (each event's name and where it is added), the
    default events when there is none; None when it is not a mapping. An event with a bad
    name or that is not a mapping is reported and left out."""
    path, lines, problems = file.path, file.lines, file.problems
    if raw_events is None:
        raw_events = {name: {"at": at} for name, at in DEFAULT_EVENTS.items()}
    if not isinstance(raw_events, dict):
        problems.append(Problem.at(path, lines.line(("events",)), "events must map event names to settings"))
        return None
    events: dict[str, Any] = {}
    for name, raw in raw_events.items():
        at_line = lines.line(("events", name))
        if not ID.match(str(name)):
            problems.append(
                Problem.at(path, at_line, f"event name {name!r} must be lower-case letters, digits, - or _")
            )
            continue
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            problems.append(Problem.at(path, at_line, f"event {name!r} must be a mapping (at, channels, audience)"))
            continue
        events[name] = {**raw, "name": name, "where": Where(str(path), at_line)}
    return events


def _check_url_and_dates(consultation: Consultation, file: _File) -> None:
    """The consultation's url is an http(s) URL and it closes after it opens."""
    path, lines, problems = file.path, file.lines, file.problems
    if not is_http_url(consultation.url):
        problems.append(
            Problem.at(
                path,
                lines.value_line(("url",)),
                f"url must be an http(s) URL like https://www.example.org/consultations/…, not {consultation.url!r}",
            )
        )
    if consultation.opens >= consultation.closes:
        problems.append(
            Problem.at(
                path,
                lines.line(("closes",)),
                "closes must be after opens "
                f"({consultation.closes:%Y-%m-%d %H:%M} is not after {consultation.opens:%Y-%m-%d %H:%M})",
            )
        )


def _check_event_times(
    consultation: Consultation, path: Path, lines: Lines, tz: ZoneInfo, problems: list[Problem]
) -> None:
    """Each event's ``at``: an error if it cannot be read, a warning if the clocks skip or
    repeat the wall-clock time it names."""
    for event in consultation.events.values():
        if event.at is None:
            continue
        line = lines.value_line(("events", event.name, "at"))
        try:
            at = parse_at(event.at, tz)
        except ValueError as exc:
            problems.append(Problem.at(path, line, str(exc)))
            continue
        note = _event_clock_note(consultation, at.moment, at.anchor, at.days, tz)
        if note:
            if at.moment is None:  # "at: closes - 7d is 2027-10-31 01:30, which happens twice ..."
                day, time, rest = note.split(" ", 2)
                note = f"{event.at.strip()} is {day} {time}, which {rest}"
            problems.append(Problem.warn(path, line, f"at: {note}"))


def _event_clock_note(
    consultation: Consultation, moment: datetime | None, anchor: str | None, days: int, tz: ZoneInfo
) -> str | None:
    """:func:`clock_change_note` for the wall-clock time an event's ``at`` names: a local
    datetime as written, or opens/closes moved by whole days (which keep the wall time)."""
    if moment is not None:
        return clock_change_note(moment, tz) if moment.tzinfo is tz else None
    if not days:
        return None  # opens or closes itself (warned about there), or moved by elapsed hours
    base = consultation.opens if anchor == "opens" else consultation.closes
    return clock_change_note(base.astimezone(tz) + timedelta(days=days), tz)


def _moment(data: dict[str, Any], key: str, file: _File) -> bool:
    """Replace ``data[key]`` with the aware datetime it says; False (and a problem) if it cannot."""
    path, lines, tz, problems = file.path, file.lines, file.tz, file.problems
    try:
        data[key] = moment = parse_moment(data[key], tz)
    except ValueError as exc:
        problems.append(Problem.at(path, lines.value_line((key,)), f"{key}: {exc}"))
        return False
    note = clock_change_note(moment, tz) if moment.tzinfo is tz else None  # local time, no offset written
    if note:
        problems.append(Problem.warn(path, lines.value_line((key,)), f"{key}: {note}"))
    return True
