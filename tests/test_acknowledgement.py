"""Each respondent thanked once (event ``response_received``), and reminders that skip those who
responded (``skip: [responded]``): through the CLI on the bundled example, with real Redis, a
real SMTP server (aiosmtpd) and the consultation record on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.message import EmailMessage
from zoneinfo import ZoneInfo

import pytest

from notifier import acknowledgement
from notifier.audience import Recipient
from notifier.config import load_config
from notifier.errors import ConfigError
from notifier.responders import Responders, skipped
from notifier.store import Response
from tests.conftest import Project, SmtpServer
from tests.record_fixtures import SOC

JANE = "jane.smith@telford-wrekin-csp.example"  # on the csp and socjag lists, Telford & Wrekin CSP
PAT = "pat.jones@example.org"  # on no list, answering for West Mercia Police
POLICE = ("mark.ellery@westmercia-police.example", "priya.chauhan@westmercia-police.example",
          "richard.hollis@westmercia-police.example", "sian.prys@westmercia-police.example")
RESPONSES = ("email,name,organisation,received,reference\n"
             f"{JANE},Jane Smith,Telford & Wrekin CSP,01/08/2019 14:30,R-1\n"
             f"{PAT},Pat Jones,WEST MERCIA POLICE,02/08/2019,R-2\n")
THANKS = "Thank you for your response to the Serious and Organised Crime Strategy consultation"


@pytest.fixture
def example(project: Project, redis_url: str, smtp_server: SmtpServer, database: str) -> Project:
    """The bundled example on the test Redis and SMTP server, its record on each database."""
    project.env.update({"NOTIFIER_REDIS_URL": redis_url, "NOTIFIER_SMTP_URL": smtp_server.url, "COLUMNS": "300"})
    if database.startswith("postgresql"):
        project.env["NOTIFIER_DATABASE_URL"] = database  # the sqlite case uses the embedded default
    return project


def _thanks(smtp: SmtpServer) -> list[EmailMessage]:
    return [m for m in smtp.handler.messages if str(m["Subject"]) == THANKS]


def _report(project: Project) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(project.run("report", SOC, "--format", "json").stdout)["deliveries"]
    return rows


def test_importing_two_responses_thanks_each_respondent_once_and_the_reminder_skips_their_organisations(
    example: Project, smtp_server: SmtpServer
) -> None:
    example.run("send", SOC, "opened", "--wait", check=True)
    told = smtp_server.handler.count()
    path = example.write("responses.csv", RESPONSES)

    result = example.run("responses", "import", SOC, str(path), check=True)
    assert "2 new response(s)" in result.stdout and "2 acknowledgement(s) sent" in result.stdout
    thanks = _thanks(smtp_server)
    assert sorted(str(m["To"]) for m in thanks) == [f"Jane Smith <{JANE}>", f"Pat Jones <{PAT}>"]
    pat = next(m for m in thanks if PAT in str(m["To"]))
    text = pat.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Dear Pat Jones" in text and "on behalf of WEST MERCIA POLICE" in text
    assert "on 2 August 2019" in text and "R-2" in text
    assert smtp_server.handler.count() == told + 2

    again = example.run("responses", "import", SOC, str(path), check=True)
    assert "0 new response(s)" in again.stdout
    assert smtp_server.handler.count() == told + 2, "a re-import thanks nobody again"
    listed = json.loads(example.run("responses", "list", SOC, "--format", "json", check=True).stdout)["responses"]
    assert all(r["acknowledged"] for r in listed), listed

    plan = example.run("plan", SOC, check=True).stdout
    reminder_line = next(line for line in plan.splitlines() if " reminder " in line)
    assert "25 (1 suppressed, 5 skipped: responded)" in reminder_line  # Jane, and West Mercia Police's four

    before = smtp_server.handler.count()
    example.run("send", SOC, "reminder", "--early", "--wait", check=True)
    reminded = {r.lower() for r in smtp_server.handler.recipients()[before:]}
    assert JANE not in reminded and not reminded & set(POLICE)
    rows = {r["recipient"]: r for r in _report(example) if r["event"] == "reminder" and r["channel"] == "email"}
    assert rows[JANE]["status"] == "skipped" and rows[JANE]["last_error"] == "responded on 1 August 2019"
    for address in POLICE:
        assert (rows[address]["status"], rows[address]["last_error"]) == ("skipped", "WEST MERCIA POLICE responded")
    assert len(reminded) == sum(r["status"] == "sent" for r in rows.values())

    overview = example.run("evidence", SOC, "--out", str(example.root / "evidence"), check=True).stdout
    assert "2 responses were received and 2 acknowledgements sent" in overview


def test_no_acknowledge_records_the_responses_and_thanks_nobody(example: Project, smtp_server: SmtpServer) -> None:
    path = example.write("responses.csv", RESPONSES)
    result = example.run("responses", "import", SOC, str(path), "--no-acknowledge", check=True)
    assert "2 new response(s)" in result.stdout and "acknowledgement" not in result.stdout
    assert smtp_server.handler.count() == 0
    listed = json.loads(example.run("responses", "list", SOC, "--format", "json", check=True).stdout)["responses"]
    assert [r["acknowledged"] for r in listed] == [None, None]


def test_an_import_without_a_thank_you_template_records_nothing_and_says_how_to_go_on(example: Project) -> None:
    (example.templates / "response_received" / "email.j2").unlink()
    result = example.run("responses", "import", SOC, str(example.write("responses.csv", RESPONSES)))
    assert result.returncode == 1
    assert "response_received/email.j2" in result.stderr and "--no-acknowledge" in result.stderr
    assert json.loads(example.run("responses", "list", SOC, "--format", "json").stdout)["responses"] == []


def test_response_received_cannot_be_fired_by_send(example: Project, smtp_server: SmtpServer) -> None:
    result = example.run("send", SOC, "response_received", "--wait")
    assert result.returncode == 1 and "sent to each respondent when their response is recorded" in result.stderr
    assert smtp_server.handler.count() == 0


def test_validate_renders_the_thank_you_template_with_a_sample_response(project: Project) -> None:
    project.write("templates/response_received/email.j2",
                  "{% block subject %}Thanks{% endblock %}{% block text %}{{ response.received | date }} "
                  "{{ response.nmae }}{% endblock %}")
    result = project.run("validate")
    assert result.returncode == 1
    assert "templates/response_received/email.j2" in result.stderr and "nmae" in result.stderr


def test_skip_compares_organisations_without_case_and_prefers_the_address() -> None:
    at = datetime(2019, 8, 1, 13, 30, tzinfo=UTC)
    reasons = Responders.of([Response(1, SOC, "ccg@nhs.example", None, " Telford CCG ", at, None, at, None)],
                            ZoneInfo("Europe/London"))
    people = [Recipient("CCG@nhs.example", organisation="Other"), Recipient("a@x.example", organisation="telford ccg"),
              Recipient("b@x.example", organisation="Telford"), Recipient("c@x.example")]
    assert skipped(("responded",), reasons, people) == {
        "ccg@nhs.example": "responded on 1 August 2019", "a@x.example": "Telford CCG responded"}
    assert skipped((), reasons, people) == {}


def test_the_bundled_example_reminder_skips_responders_and_its_thank_you_template_renders(project: Project) -> None:
    config = load_config(project.config)
    assert config.consultations[SOC].events["reminder"].skip == ("responded",)
    try:
        acknowledgement.ready(config, SOC)
    except ConfigError as exc:  # pragma: no cover - the message is the point
        pytest.fail(f"the example's thank-you does not render: {exc.problems}")
