"""Stakeholder lists from CSV files: one list per file, a header row naming at least ``email``.

Each problem names its file and the line its row starts on (a quoted cell may span lines).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from notifier.config._models import ID, Member, StakeholderList, Where
from notifier.errors import Problem
from notifier.memo import collector_paused

_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0"}


def list_from_csv(path: Path, problems: list[Problem]) -> StakeholderList | None:
    """The list in one CSV file (id = file stem), or None when it has a problem."""
    list_id = path.stem
    where = Where(str(path), 1)
    if not ID.match(list_id):
        problems.append(
            where.problem(f"list id {list_id!r} (the file name) must be lower-case letters, digits, - or _")
        )
        return None
    text = read_csv_text(path, problems)
    if text is None:
        return None
    # At 100,000 rows the cyclic collector would otherwise run full passes over the growing
    # heap of members several times.
    with collector_paused():
        return _csv_list(list_id, path, text, where, problems)


def _csv_list(list_id: str, path: Path, text: str, where: Where, problems: list[Problem]) -> StakeholderList | None:
    """The list made of a CSV file's rows, or None when it has a problem (added to ``problems``)."""
    before = len(problems)
    reader = csv.reader(io.StringIO(text, newline=""))
    members: list[Member] = []
    try:
        header = [h.strip() for h in next(reader, [])]
        if "email" not in header:
            problems.append(where.problem("the header row must have an 'email' column"))
            return None
        if len(set(header)) != len(header):
            problems.append(where.problem("the header row repeats a column name"))
            return None
        file = str(path)
        while True:
            line = reader.line_num + 1  # where the next row starts: a quoted cell may span lines
            cells = next(reader, None)
            if cells is None:
                break
            member = _csv_member(header, cells, file, line, problems)
            if member is not None:
                members.append(member)
    except csv.Error as exc:
        problems.append(Problem.at(path, reader.line_num, f"cannot read CSV: {exc}"))
        return None
    if len(problems) != before:
        return None
    return StakeholderList(id=list_id, name=None, members=tuple(members), where=where)


def read_csv_text(path: Path, problems: list[Problem], *, what: str = "a CSV list") -> str | None:
    """The text of a CSV file (a UTF-8 BOM dropped), or None with a problem saying what is
    wrong: unreadable, not UTF-8 (with the line of the first bad byte and how to save it as
    UTF-8), or empty (``what`` names the kind of file in that message)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.append(Problem.at(path, None, f"cannot read {what}: {exc.strerror}"))
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problems.append(
            Problem.at(
                path,
                line,
                f"not UTF-8 (byte 0x{data[exc.start]:02x} on this line): save the file as "
                '"CSV UTF-8" (in Excel: File > Save As > CSV UTF-8 (Comma delimited))',
            )
        )
        return None
    if not text.strip():
        problems.append(Problem.at(path, None, f"empty file: {what} needs a header row with an 'email' column"))
        return None
    return text


def _csv_member(header: list[str], cells: list[str], path: str, line: int, problems: list[Problem]) -> Member | None:
    """The member in one CSV row, or None for a blank row or one with a problem (added to
    ``problems`` at ``path``:``line``)."""
    if len(cells) != len(header):
        if len(cells) > len(header):
            problems.append(Problem.at(path, line, f"row has more cells than the header ({len(header)})"))
            return None
        cells = cells + [""] * (len(header) - len(cells))
    raw: dict[str, Any] = dict(zip(header, map(str.strip, cells), strict=True))
    if not any(raw.values()):
        return None
    for key in _BLANK_IS_NONE:  # a blank name or organisation is no name or organisation
        if raw.get(key) == "":
            del raw[key]
    subscribed = raw.get("subscribed")
    if subscribed is not None:
        subscribed = subscribed.lower()
        if subscribed in _TRUE or subscribed == "":
            raw["subscribed"] = True
        elif subscribed in _FALSE:
            raw["subscribed"] = False
        else:
            problems.append(Problem.at(path, line, f"subscribed must be true or false, not {subscribed!r}"))
            return None
    try:
        return Member.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            field_name = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(Problem.at(path, line, f"{field_name}: {msg}"))
        return None


_BLANK_IS_NONE = ("name", "organisation")
