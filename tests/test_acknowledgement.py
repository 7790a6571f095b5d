"""Each respondent thanked once (event ``response_received``), and reminders that skip those who
responded (``skip: [responded]``): through the CLI on the bundled example, with real Redis, a
real SMTP server (aiosmtpd) and the consultation record on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from zoneinfo import ZoneInfo

import httpx
import pytest

from notifier import acknowledgement
from notifier.audience import Recipient
from notifier.config import Settings, load_config
from notifier.errors import ConfigError
from notifier.responders import Responders, skipped
from notifier.service import Service
from notifier.store import Response, Store, make_engine
from notifier.web import bound_port, make_server
from tests.conftest import Project, SmtpServer, wait_until
from tests.record_fixtures import SOC
from tests.test_web import Servers

JANE = "jane.smith@telford-wrekin-csp.example"  # on the csp and socjag lists, Telford & Wrekin CSP
PAT = "pat.jones@example.org"  # on no list, answering for West Mercia Police
POLICE = (
    "mark.ellery@westmercia-police.example",
    "priya.chauhan@westmercia-police.example",
    "richard.hollis@westmercia-police.example",
    "sian.prys@westmercia-police.example",
)
RESPONSES = (
    "email,name,organisation,received,reference\n"
    f"{JANE},Jane Smith,Telford & Wrekin CSP,01/08/2019 14:30,R-1\n"
    f"{PAT},Pat Jones,WEST MERCIA POLICE,02/08/2019,R-2\n"
)
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
    project.write(
        "templates/response_received/email.j2",
        "{% block subject %}Thanks{% endblock %}{% block text %}{{ response.received | date }} "
        "{{ response.nmae }}{% endblock %}",
    )
    result = project.run("validate")
    assert result.returncode == 1
    assert "templates/response_received/email.j2" in result.stderr and "nmae" in result.stderr


def test_skip_compares_organisations_without_case_and_prefers_the_address() -> None:
    at = datetime(2019, 8, 1, 13, 30, tzinfo=UTC)
    reasons = Responders.of(
        [Response(1, SOC, "ccg@nhs.example", None, " Telford CCG ", at, None, at, None)], ZoneInfo("Europe/London")
    )
    people = [
        Recipient("CCG@nhs.example", organisation="Other"),
        Recipient("a@x.example", organisation="telford ccg"),
        Recipient("b@x.example", organisation="Telford"),
        Recipient("c@x.example"),
    ]
    assert skipped(("responded",), reasons, people) == {
        "ccg@nhs.example": "responded on 1 August 2019",
        "a@x.example": "Telford CCG responded",
    }
    assert skipped((), reasons, people) == {}


def test_the_bundled_example_reminder_skips_responders_and_its_thank_you_template_renders(project: Project) -> None:
    config = load_config(project.config)
    assert config.consultations[SOC].events["reminder"].skip == ("responded",)
    try:
        acknowledgement.ready(config, SOC)
    except ConfigError as exc:  # pragma: no cover - the message is the point
        pytest.fail(f"the example's thank-you does not render: {exc.problems}")


# ---------------------------------------------------------------------------
# The JSON API
# ---------------------------------------------------------------------------


@pytest.fixture
def servers() -> Iterator[Servers]:
    """Live ``notifier web`` servers, shut down afterwards."""
    found = Servers()
    yield found
    found.stop()


def test_the_api_records_a_response_once_and_an_import_of_it_too_thanks_nobody_twice(
    example: Project, smtp_server: SmtpServer, servers: Servers, redis_url: str, database: str
) -> None:
    settings = Settings.from_env(example.settings_env()).model_copy(
        update={"web_bind": "127.0.0.1:0", "database_url": database, "env": {"NOTIFIER_ADMIN_TOKEN": "admin-secret"}}
    )
    example.env["NOTIFIER_DATABASE_URL"] = database
    url = f"{servers.start(settings)}/api/consultations/{SOC}/responses"
    auth = {"Authorization": "Bearer admin-secret"}
    pat = {
        "email": PAT,
        "name": "Pat Jones",
        "organisation": "West Mercia Police",
        "received": "2019-08-02",
        "reference": "R-2",
    }
    service = Service(settings)
    with httpx.Client(timeout=30) as http, service.worker(threads=2):
        assert http.post(url, json=pat).status_code == 401
        assert http.post(url, json=pat, headers={"Authorization": "Bearer wrong"}).status_code == 401
        bad = http.post(url, json={"email": "not-an-address", "received": "soon", "colour": "red"}, headers=auth)
        assert bad.status_code == 422
        assert [p.split(":")[0] for p in bad.json()["problems"]] == ["colour", "email", "received"]
        assert http.post(url, content=b"{", headers=auth).status_code == 422
        unknown = http.post(url.replace(SOC, "no-such-thing"), json=pat, headers=auth)
        assert unknown.status_code == 404 and "unknown consultation" in unknown.json()["error"]

        first = http.post(url, json=pat, headers=auth)
        assert first.status_code == 201, first.text
        assert (first.json()["email"], first.json()["new"], first.json()["acknowledging"]) == (PAT, True, True)
        wait_until(lambda: len(_thanks(smtp_server)) == 1, 60, "the thank-you to Pat")
        store = Store(make_engine(database))
        try:
            wait_until(lambda: all(r.acknowledged_at for r in store.responses(SOC)), 30, "Pat's response marked")
        finally:
            store.close()
        again = http.post(url, json=pat, headers=auth)
        assert again.status_code == 200 and again.json()["new"] is False and again.json()["acknowledged"]

        path = example.write("responses.csv", RESPONSES)  # Pat's again, and Jane's (new)
        result = example.run("responses", "import", SOC, str(path), check=True)
        assert "1 new response(s)" in result.stdout and "1 acknowledgement(s) sent" in result.stdout
        jane = {"email": JANE, "reference": "R-1"}
        assert http.post(url, json=jane, headers=auth).status_code == 200
    service.close()
    assert sorted(str(m["To"]) for m in _thanks(smtp_server)) == [f"Jane Smith <{JANE}>", f"Pat Jones <{PAT}>"]


def test_the_responses_api_is_off_without_an_admin_token_and_records_nothing(
    example: Project, servers: Servers, database: str
) -> None:
    settings = Settings.from_env(example.settings_env()).model_copy(
        update={"web_bind": "127.0.0.1:0", "database_url": database}
    )
    base = servers.start(settings)
    with httpx.Client(timeout=30) as http:
        answer = http.post(
            f"{base}/api/consultations/{SOC}/responses",
            json={"email": PAT},
            headers={"Authorization": "Bearer anything"},
        )
    assert answer.status_code == 404 and "NOTIFIER_ADMIN_TOKEN" in answer.json()["error"]
    store = Store(make_engine(database))
    try:
        assert store.responses(SOC) == []
    finally:
        store.close()


def test_the_web_app_of_notifier_run_records_responses_through_the_process_service_and_leaves_it_open(
    example: Project, smtp_server: SmtpServer, database: str
) -> None:
    settings = Settings.from_env(example.settings_env()).model_copy(
        update={"web_bind": "127.0.0.1:0", "database_url": database, "env": {"NOTIFIER_ADMIN_TOKEN": "admin-secret"}}
    )
    service = Service(settings)  # as `notifier run` makes it: one per process
    try:
        server = make_server(settings, service=service)
        thread = threading.Thread(target=server.run, name="test-web", daemon=True)
        thread.start()
        wait_until(lambda: server.started, 10, "the web server")
        url = f"http://127.0.0.1:{bound_port(server)}/api/consultations/{SOC}/responses"
        with httpx.Client(timeout=30) as http:
            answer = http.post(url, json={"email": PAT}, headers={"Authorization": "Bearer admin-secret"})
        assert answer.status_code == 201, answer.text
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "the web server did not shut down"

        # the app has shut down and left the process' service open: its worker sends the thank-you
        with service.worker(threads=1):
            wait_until(lambda: len(_thanks(smtp_server)) == 1, 60, "the thank-you to Pat")
        assert [r.email for r in service.store.responses(SOC)] == [PAT]
    finally:
        service.close()
