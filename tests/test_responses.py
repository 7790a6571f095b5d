"""Consultation responses: reading CSV exports, recording them once, listing them.

``tests/bad_responses/`` is a corpus of broken response files: each ``NAME.csv`` comes with
``NAME.expect``, whose lines are ``LINE: TEXT`` (or just ``TEXT`` where no line applies)
that must be reported as ``FILE:LINE: ...TEXT...``. A bad file records nothing.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from notifier import responses
from notifier.errors import ResponsesFileError
from notifier.store import Store
from tests.conftest import Project
from tests.record_fixtures import SOC

CORPUS = Path(__file__).resolve().parent / "bad_responses"
CASES = sorted(p.stem for p in CORPUS.glob("*.csv"))
LONDON = ZoneInfo("Europe/London")


def _expected(case: str) -> list[str]:
    path = CORPUS / f"{case}.csv"
    lines = (CORPUS / f"{case}.expect").read_text(encoding="utf-8").splitlines()
    out = []
    for line in lines:
        number, sep, text = line.partition(": ")
        out.append(f"{path}:{number}: {text}" if sep and number.isdigit() else f"{path}: {line}")
    return out


@pytest.mark.parametrize("case", CASES)
def test_each_bad_response_file_is_refused_naming_file_line_and_problem(case: str) -> None:
    with pytest.raises(ResponsesFileError) as caught:
        responses.read(CORPUS / f"{case}.csv", LONDON)
    reported = [str(p) for p in caught.value.problems]
    for expected in _expected(case):
        assert any(r.startswith(expected) for r in reported), f"{expected!r} not in {reported}"
    assert len(reported) == len(_expected(case)), reported


def test_a_file_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffEmail,Name,Organisation\nccg@telford.example,Zoë,Telford & Wrekin CCG\n".encode())
    [response] = responses.read(path, LONDON)
    assert (response.email, response.name, response.organisation) == (
        "ccg@telford.example",
        "Zoë",
        "Telford & Wrekin CCG",
    )


@pytest.mark.parametrize(
    ("cell", "utc"),
    [
        ("01/08/2019 14:30", datetime(2019, 8, 1, 13, 30, tzinfo=UTC)),
        ("2019-08-01 14:30", datetime(2019, 8, 1, 13, 30, tzinfo=UTC)),
        ("2019-08-01", datetime(2019, 7, 31, 23, 0, tzinfo=UTC)),
        ("01/12/2019", datetime(2019, 12, 1, 0, 0, tzinfo=UTC)),
        ("2019-08-01T14:30:00+00:00", datetime(2019, 8, 1, 14, 30, tzinfo=UTC)),
    ],
)
def test_received_is_read_as_local_time_unless_it_has_an_offset(cell: str, utc: datetime) -> None:
    assert responses.parse_received(cell, LONDON) == utc


def test_importing_the_same_file_twice_adds_nothing(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "responses.csv"
    path.write_text(
        "email,name,received,reference\n"
        "ccg@telford.example,Telford CCG,01/08/2019 14:30,\n"
        "anon@example.org,,,R-2\n"
        "ccg@telford.example,Telford CCG,02/08/2019 09:00,\n",
        encoding="utf-8",
    )
    first = responses.import_file(store, SOC, path, LONDON)
    assert [r.email for r in first] == ["ccg@telford.example", "anon@example.org", "ccg@telford.example"]
    assert responses.import_file(store, SOC, path, LONDON) == []
    path.write_text(path.read_text() + "new@example.org,,,\n", encoding="utf-8")
    assert [r.email for r in responses.import_file(store, SOC, path, LONDON)] == ["new@example.org"]
    assert len(store.responses(SOC)) == 4
    assert store.responses("another-consultation") == []


def test_a_file_with_one_bad_row_records_nothing(store: Store) -> None:
    with pytest.raises(ResponsesFileError):
        responses.import_file(store, SOC, CORPUS / "several-problems.csv", LONDON)
    assert store.responses(SOC) == []


def _use(project: Project, database: str) -> None:
    if database.startswith("postgresql"):
        project.env["NOTIFIER_DATABASE_URL"] = database  # the sqlite case uses the embedded default


def test_responses_import_records_new_ones_and_list_shows_them_in_each_format(project: Project, database: str) -> None:
    _use(project, database)
    path = project.write(
        "responses.csv",
        "\ufeffEmail,Name,Organisation,Received,Reference,Answer 1\n"
        "ccg@telford.example,Jo Bloggs,Telford & Wrekin CCG,01/08/2019 14:30,R-1,Sensible\n",
    )
    assert project.run("responses", "import", SOC, str(path), check=True).stdout.startswith("1 new response")
    assert project.run("responses", "import", SOC, str(path), check=True).stdout.startswith("0 new response")
    listed = json.loads(project.run("responses", "list", SOC, "--format", "json", check=True).stdout)
    acknowledged = listed["responses"][0].pop("acknowledged")  # the thank-you went (to the Maildir outbox)
    assert datetime.fromisoformat(acknowledged) <= datetime.now(UTC)
    assert listed["responses"] == [
        {
            "email": "ccg@telford.example",
            "name": "Jo Bloggs",
            "organisation": "Telford & Wrekin CCG",
            "received": "2019-08-01T13:30:00+00:00",
            "reference": "R-1",
        }
    ]
    rows = list(
        csv.DictReader(io.StringIO(project.run("responses", "list", SOC, "--format", "csv", check=True).stdout))
    )
    assert [r["organisation"] for r in rows] == ["Telford & Wrekin CCG"]
    assert "Jo Bloggs" in project.run("responses", "list", SOC, check=True).stdout


def test_responses_import_of_a_bad_file_exits_1_naming_the_line_and_records_nothing(project: Project) -> None:
    bad = CORPUS / "bad-address.csv"
    result = project.run("responses", "import", SOC, str(bad))
    assert result.returncode == 1
    assert f"{bad}:2: email: invalid e-mail address 'not-an-address'" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(project.run("responses", "list", SOC, "--format", "json", check=True).stdout)["responses"] == []


def test_responses_import_for_an_unknown_consultation_exits_1(project: Project) -> None:
    result = project.run("responses", "import", "no-such-thing", str(CORPUS / "bad-address.csv"))
    assert result.returncode == 1 and "unknown consultation 'no-such-thing'" in result.stderr
