"""The evidence pack, from the database alone, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

from notifier import evidence
from notifier.store import NewResponse, Store, make_engine
from tests.conftest import Project
from tests.record_fixtures import SOC, seed

OVERVIEW = (
    "The Serious and Organised Crime Strategy consultation was open from 9 July 2019 to 15 August 2019 "
    "(5 weeks and 2 days). It was publicised by e-mail (first sent 9 July 2019: 4 sent, 2 failed) and "
    "pcc-x (first sent 9 July 2019: 2 sent). E-mails went to 2 stakeholder lists: Community Safety "
    "Partnerships (2) and NHS (1). 2 stakeholders were told in all. 2 deliveries failed and 2 were not "
    "sent to suppressed addresses. 1 response was received and 1 acknowledgement sent."
)


def _with_response(store: Store) -> None:
    [new] = store.add_responses(
        SOC,
        [
            NewResponse(
                "ref:R-1",
                "ccg@telford.example",
                "Jo",
                "Telford & Wrekin CCG",
                datetime(2019, 8, 1, 13, 30, tzinfo=UTC),
                "R-1",
            )
        ],
    )
    store.mark_acknowledged([new.id])


def test_the_overview_states_period_channels_lists_told_failures_and_responses(store: Store) -> None:
    seed(store)
    _with_response(store)
    assert evidence.overview(evidence.build(store, SOC)) == OVERVIEW


def test_evidence_json_has_the_facts_and_every_delivery_as_report_gives_it(store: Store, tmp_path: Path) -> None:
    seed(store)
    _with_response(store)
    evidence.write(evidence.build(store, SOC), tmp_path, generated=datetime(2019, 9, 10, tzinfo=UTC))
    doc = json.loads((tmp_path / "evidence.json").read_text())
    assert (doc["consultation"], doc["opens"], doc["closes"]) == (
        SOC,
        "2019-07-09T08:00:00.000+00:00",
        "2019-08-15T22:59:00.000+00:00",
    )
    email = next(c for c in doc["channels"] if c["channel"] == "email")
    assert (email["first_sent"], email["sent"], email["failed"], email["suppressed"]) == (
        "2019-07-09T08:00:00.000+00:00",
        4,
        2,
        2,
    )
    assert doc["lists"] == [
        {"id": "csp", "name": "Community Safety Partnerships", "told": 2},
        {"id": "nhs", "name": "NHS", "told": 1},
    ]
    assert doc["responses"] == {"received": 1, "acknowledged": 1}
    assert len(doc["deliveries"]) == 10
    first = doc["deliveries"][0]
    assert list(first)[: len(evidence.FIELDS)] == list(evidence.FIELDS)  # report's fields, in its order
    assert (first["created"], first["updated"], first["sent_at"]) == (
        "2019-07-09T08:00:00.000+00:00",
        "2019-07-09T08:00:00.000+00:00",
        "2019-07-09T08:01:00.000+00:00",
    )
    assert doc["deliveries"][1]["sent_at"] == "" and doc["deliveries"][1]["last_error"] == "550 5.1.1 no such user"
    assert (first["event"], first["channel"], first["recipient"], first["lists"]) == (
        "opened",
        "email",
        "both@nhs.example",
        "csp nhs",
    )
    rows = list(csv.DictReader((tmp_path / "deliveries.csv").open(encoding="utf-8")))
    assert len(rows) == 10 and rows[2]["message_id"] == f"<{SOC}:opened:1.1@pcc.example>"


class _Outline(HTMLParser):
    """Headings, tables, captions and header cells of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.lang: str | None = None
        self.headings: list[int] = []
        self.tables = self.captions = 0
        self.th_without_scope = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "html":
            self.lang = dict(attrs).get("lang")
        elif len(tag) == 2 and tag[0] == "h" and tag[1].isdigit():
            self.headings.append(int(tag[1]))
        elif tag == "table":
            self.tables += 1
        elif tag == "caption":
            self.captions += 1
        elif tag == "th" and dict(attrs).get("scope") not in ("col", "row"):
            self.th_without_scope += 1


def test_overview_html_is_self_contained_printable_and_accessible(store: Store, tmp_path: Path) -> None:
    seed(store)
    store.record_lists({"csp": "<script>alert(1)</script> & partners"})
    evidence.write(evidence.build(store, SOC), tmp_path, generated=datetime(2019, 9, 10, tzinfo=UTC))
    page = (tmp_path / "overview.html").read_text()
    outline = _Outline()
    outline.feed(page)
    assert outline.lang == "en"
    assert outline.headings[0] == 1 and all(
        b - a <= 1 for a, b in zip(outline.headings, outline.headings[1:], strict=False)
    )
    assert outline.tables == outline.captions >= 4 and outline.th_without_scope == 0
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "src=" not in page and "<link" not in page  # nothing fetched: it prints offline
    assert "@media print" in page and "550 5.1.1 no such user" in page


def test_evidence_after_pruning_gives_the_same_facts_without_the_rows(store: Store) -> None:
    seed(store)
    _with_response(store)
    before = evidence.build(store, SOC)
    store.prune(30, now=datetime(2026, 1, 1, tzinfo=UTC))
    after = evidence.build(store, SOC)
    assert evidence.overview(after) == evidence.overview(before) == OVERVIEW
    assert after.deliveries == [] and after.consultation.pruned_at is not None


def test_notifier_evidence_writes_the_pack_from_the_database_alone(project: Project, database: str) -> None:
    if database.startswith("postgresql"):
        project.env["NOTIFIER_DATABASE_URL"] = database
        url = database
    else:
        url = f"sqlite:///{project.data / 'notifier.db'}"
        project.run("db", "upgrade", check=True)
    store = Store(make_engine(url))
    seed(store)
    _with_response(store)
    store.close()
    (project.config / "consultations" / f"{SOC}.yaml").unlink()  # from the database alone
    result = project.run("evidence", SOC, check=True)
    assert result.stdout.strip() == OVERVIEW
    folder = project.root / "evidence" / SOC
    assert sorted(p.name for p in folder.iterdir()) == ["deliveries.csv", "evidence.json", "overview.html"]
    elsewhere = project.run("evidence", SOC, "--out", str(project.root / "pack"), check=True)
    assert (project.root / "pack" / "evidence.json").exists() and elsewhere.stdout == result.stdout


def test_notifier_evidence_of_an_unrecorded_consultation_exits_1(project: Project) -> None:
    result = project.run("evidence", "never-recorded")
    assert result.returncode == 1
    assert "holds no record of consultation 'never-recorded'" in result.stderr and "Traceback" not in result.stderr
