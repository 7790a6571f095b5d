"""Consultation responses from a CSV export (Citizen Space, SmartSurvey, Microsoft Forms…).

The file needs a header row with an ``email`` column; ``name``, ``organisation``, ``received``
and ``reference`` are read when present and any other column is ignored (an export carries the
answers too). Column names are compared without case or surrounding spaces.

* The file must be UTF-8 (a BOM, as Excel writes with "CSV UTF-8", is fine). Anything else,
  Windows-1252 say, is refused with the line of the first bad byte and how to re-save it:
  guessing an encoding would silently garble names.
* ``received`` is a date or a date and time, local to the configured timezone unless it has
  an offset: ``2019-08-01``, ``2019-08-01 14:30``, ``2019-08-01T14:30:00+01:00``, or the UK
  forms ``01/08/2019`` and ``01/08/2019 14:30``. A date alone means midnight.
* One response is the same as another of the same consultation when it has the same
  ``reference``, or, without one, the same address and ``received``: importing a file twice
  adds nothing. Two such rows in one file are an error (which one is right?).
* A file with any bad row imports nothing: every problem is reported as ``FILE:LINE: message``.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from email_validator import EmailNotValidError, validate_email

from notifier.config import read_csv_text
from notifier.errors import BadResponseError, InvalidValueError, Problem, ResponsesFileError
from notifier.store import NewResponse, Response, Store

COLUMNS = ("email", "name", "organisation", "received", "reference")
_UK_FORMATS = ("%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%d/%m/%Y")


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    response: NewResponse


def read(path: Path, tz: ZoneInfo) -> list[NewResponse]:
    """The responses in ``path``, or :class:`ResponsesFileError` listing every bad row."""
    problems: list[Problem] = []
    text = read_csv_text(path, problems, what="a responses file")
    rows = _rows(path, text, tz, problems) if text is not None else []
    if problems:
        raise ResponsesFileError(problems)
    return [row.response for row in rows]


def import_file(store: Store, consultation: str, path: Path, tz: ZoneInfo) -> list[Response]:
    """Record the responses in ``path``; returns only the NEW ones (to acknowledge).

    Nothing is recorded when the file has a bad row.
    """
    return store.add_responses(consultation, read(path, tz))


def _rows(path: Path, text: str, tz: ZoneInfo, problems: list[Problem]) -> list[_Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [cell.strip().lower() for cell in next(reader)]
    if "email" not in header:
        problems.append(Problem.at(path, 1, f"no 'email' column (the header has: {', '.join(header) or 'nothing'})"))
        return []
    repeated = sorted({h for h in header if h in COLUMNS and header.count(h) > 1})
    if repeated:
        problems.append(Problem.at(path, 1, f"column {repeated[0]!r} appears twice"))
        return []
    rows: list[_Row] = []
    seen: dict[str, int] = {}
    start = reader.line_num + 1
    for cells in reader:
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) > len(header):
            problems.append(Problem.at(path, line, f"row has more cells than the header ({len(header)})"))
            continue
        raw = dict(zip(header, (c.strip() for c in cells), strict=False))
        response = _response(raw, tz, path, line, problems)
        if response is None:
            continue
        if response.key in seen:
            problems.append(
                Problem.at(
                    path,
                    line,
                    f"duplicate of line {seen[response.key]} "
                    f"({'same reference' if response.reference else 'same address and received'})",
                )
            )
            continue
        seen[response.key] = line
        rows.append(_Row(line, response))
    return rows


def _response(
    raw: dict[str, str], tz: ZoneInfo, path: Path, line: int | None, problems: list[Problem]
) -> NewResponse | None:
    before = len(problems)
    email = raw.get("email", "")
    try:
        email = validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        problems.append(Problem.at(path, line, f"email: invalid e-mail address {email!r}: {exc}"))
    received = None
    if raw.get("received"):
        try:
            received = parse_received(raw["received"], tz)
        except ValueError as exc:
            problems.append(Problem.at(path, line, f"received: {exc}"))
    if len(problems) > before:
        return None
    reference = raw.get("reference") or None
    return NewResponse(
        key=response_key(email, received, reference),
        email=email,
        name=raw.get("name") or None,
        organisation=raw.get("organisation") or None,
        received=received,
        reference=reference,
    )


def from_fields(raw: object, tz: ZoneInfo, where: str = "body") -> NewResponse:
    """One response given as fields (the body of ``POST /api/consultations/<id>/responses``):
    ``email`` required; ``name``, ``organisation``, ``received``, ``reference`` optional strings
    (or null), read as the same columns of a file are. :class:`BadResponseError` names every
    bad field: an unknown one, a value that is not a string, a control character, a bad address
    or date."""
    if not isinstance(raw, dict):
        raise BadResponseError([Problem.at(where, None, "must be a JSON object with at least 'email'")])
    problems = [
        Problem.at(where, None, f"{key}: unknown field (known: {', '.join(COLUMNS)})")
        for key in raw
        if key not in COLUMNS
    ]
    text: dict[str, str] = {}
    for key in COLUMNS:
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            problems.append(Problem.at(where, None, f"{key}: must be a string, not {type(value).__name__}"))
        elif any(unicodedata.category(c) == "Cc" for c in value):
            problems.append(Problem.at(where, None, f"{key}: control characters (a line break, say) are not allowed"))
        else:
            text[key] = value.strip()
    response = None
    if text.get("email"):
        response = _response(text, tz, Path(where), None, problems)
    elif not any(p.message.startswith("email:") for p in problems):
        problems.append(Problem.at(where, None, "email: required"))
    if response is None or problems:
        raise BadResponseError(problems)
    return response


def response_key(email: str, received: datetime | None, reference: str | None) -> str:
    """What makes two responses to one consultation the same: the ``reference`` when there is
    one, else the address (without case) and when it was received. The console and the JSON
    API use it too, so a response recorded there is not added again by an import."""
    if reference:
        return f"ref:{reference}"
    return f"email:{email.lower()}|{received.astimezone(UTC).isoformat() if received else ''}"


def parse_received(value: str, tz: ZoneInfo) -> datetime:
    """A ``received`` cell as an aware datetime (local to ``tz`` unless it has an offset)."""
    moment: datetime | None = None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        for fmt in _UK_FORMATS:
            try:
                moment = datetime.strptime(value, fmt)
                break
            except ValueError:
                continue
    if moment is None:
        raise InvalidValueError(
            f"{value!r} is not a date (2019-08-01 or 01/08/2019, optionally with a time: 2019-08-01 14:30)"
        )
    return moment if moment.tzinfo else moment.replace(tzinfo=tz)
