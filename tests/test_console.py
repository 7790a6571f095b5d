"""The console's pages (``/admin/``) through Starlette's TestClient, on a real Redis and a real
SQLite record, with the example config: what each role sees and may do, the confirmations of a
send, the CSRF check of every form, and the deliveries table's filters.

Each client signs in for real: a user added with :func:`notifier.users.add_user`, then the
sign-in form POSTed with its CSRF token.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from starlette.applications import Starlette
from starlette.testclient import TestClient

from notifier.ledger import Ledger
from notifier.store import ConsultationRecord, OccurrenceRecord, Settled, Store
from notifier.web import create_app
from tests.console_fixtures import ROOT, csrf_of, signed_in, web_settings

SOC = "soc-strategy-2019"


@pytest.fixture
def app(tmp_path: Path, redis_url: str) -> Starlette:
    """The web app on the example config."""
    return create_app(web_settings(tmp_path, redis_url))


def client_as(app: Starlette, role: str | None) -> TestClient:
    """A client signed in as a new user with ``role`` (None: not signed in)."""
    client = TestClient(app, base_url="https://testserver", follow_redirects=False)
    if role:
        signed_in(client, app.state.web.store, role)
    return client


@pytest.fixture
def viewer(app: Starlette) -> Iterator[TestClient]:
    with client_as(app, "viewer") as client:
        yield client


@pytest.fixture
def sender(app: Starlette) -> Iterator[TestClient]:
    with client_as(app, "sender") as client:
        yield client


@pytest.fixture
def admin(app: Starlette) -> Iterator[TestClient]:
    with client_as(app, "admin") as client:
        yield client


def csrf(client: TestClient, path: str = "/admin/consultations") -> str:
    """The session's CSRF token, from the forms of the page at ``path`` (every console page
    has one: signing out)."""
    page = client.get(path)
    assert page.status_code == 200, page.text
    return csrf_of(page.text)


def test_the_console_asks_for_sign_in_first(app: Starlette) -> None:
    with client_as(app, None) as client:
        response = client.get(f"/admin/consultations/{SOC}")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/admin/sign-in?next=")


def test_the_consultations_list_shows_dates_state_next_event_and_validate(viewer: TestClient) -> None:
    page = viewer.get("/admin/consultations")
    assert page.status_code == 200
    assert "Serious and Organised Crime Strategy" in page.text
    assert "Tue 09 Jul 2019 09:00 BST" in page.text
    assert "closed" in page.text
    assert "config/notifier.yaml" in page.text  # validate's warnings, as PATH:LINE: message
    assert "outbox mode" in page.text


def test_a_consultation_page_shows_the_timeline_and_the_audience_by_list(viewer: TestClient) -> None:
    page = viewer.get(f"/admin/consultations/{SOC}")
    assert page.status_code == 200
    for expected in ("opened", "reminder", "closed", "outcome", "missed", "Key stakeholders and partners"):
        assert expected in page.text
    assert "Send another event" not in page.text  # a viewer is offered no send


def test_a_preview_shows_the_email_in_a_sandboxed_iframe_and_each_post_against_its_limit(viewer: TestClient) -> None:
    page = viewer.get(f"/admin/consultations/{SOC}/events/opened")
    assert page.status_code == 200
    assert '<iframe class="email-html" sandbox=""' in page.text
    assert "List-Unsubscribe" in page.text
    assert "https://notify.pcc.example/unsubscribe/" in page.text
    assert re.search(r"\d+ of 280 characters", page.text)  # pcc-x
    csp = page.headers["content-security-policy"]
    assert "'unsafe-hashes'" in csp and "script-src" not in csp


def test_a_send_is_confirmed_with_what_goes_to_whom_and_nothing_fires_before(
    sender: TestClient, redis_url: str
) -> None:
    token = csrf(sender, f"/admin/consultations/{SOC}")
    page = sender.post(f"/admin/consultations/{SOC}/send", data={"event": "outcome", "csrf_token": token})
    assert page.status_code == 200
    assert re.search(r"This will send <strong>\d+ e-mails and 4 posts</strong>", page.text)
    assert 'name="confirm" value="yes"' in page.text
    assert Ledger(redis.Redis.from_url(redis_url)).fired(SOC, "outcome") is None


def test_a_confirmed_send_fires_once_and_shows_its_progress(sender: TestClient, redis_url: str) -> None:
    token = csrf(sender, f"/admin/consultations/{SOC}")
    data = {"event": "outcome", "csrf_token": token, "confirm": "yes"}
    response = sender.post(f"/admin/consultations/{SOC}/send", data=data)
    assert response.status_code == 303
    assert response.headers["location"] == f"/admin/consultations/{SOC}/occurrences/outcome/1"
    assert Ledger(redis.Redis.from_url(redis_url)).fired(SOC, "outcome") == f"{SOC}:outcome:1"
    again = sender.post(f"/admin/consultations/{SOC}/send", data=data)
    assert again.status_code == 200
    assert "already sent" in again.text and "Send again" in again.text
    progress = sender.get(response.headers["location"] + "/progress.json").json()
    assert set(progress) == {"total", "done", "percent", "finished", "counts"}


def test_a_viewer_cannot_send(viewer: TestClient, redis_url: str) -> None:
    data = {"event": "outcome", "csrf_token": csrf(viewer), "confirm": "yes"}
    response = viewer.post(f"/admin/consultations/{SOC}/send", data=data)
    assert response.status_code == 403
    assert Ledger(redis.Redis.from_url(redis_url)).fired(SOC, "outcome") is None


def test_a_send_without_its_csrf_token_is_refused_and_nothing_fires(sender: TestClient, redis_url: str) -> None:
    response = sender.post(f"/admin/consultations/{SOC}/send", data={"event": "outcome", "confirm": "yes"})
    assert response.status_code == 403
    assert Ledger(redis.Redis.from_url(redis_url)).fired(SOC, "outcome") is None


def test_a_response_recorded_by_hand_is_listed_and_audited(sender: TestClient, app: Starlette) -> None:
    path = f"/admin/consultations/{SOC}/responses"
    token = csrf(sender, path)
    data = {"csrf_token": token, "email": "someone@example.org", "reference": "R-1"}
    response = sender.post(path, data=data)
    assert response.status_code == 303
    assert "someone@example.org" in sender.get(path).text
    entries = app.state.web.store.audit_entries(SOC)
    assert any(e.actor == "sender@pcc.example" and e.action == "responses record" for e in entries)


def test_a_bad_response_gets_an_error_summary_linking_to_the_field(sender: TestClient) -> None:
    path = f"/admin/consultations/{SOC}/responses"
    response = sender.post(path, data={"csrf_token": csrf(sender, path), "email": "not an address"})
    assert response.status_code == 422
    assert '<a href="#email">' in response.text
    assert "<title>Error: " in response.text


def test_a_responses_file_with_a_bad_row_imports_nothing_and_names_the_line(sender: TestClient) -> None:
    path = f"/admin/consultations/{SOC}/responses"
    body = b"email,received\nok@example.org,2019-08-01\nbad,2019-08-02\n"
    files = {"file": ("mine.csv", body, "text/csv")}
    response = sender.post(path + "/import", data={"csrf_token": csrf(sender, path), "acknowledge": "no"}, files=files)
    assert response.status_code == 422
    assert "mine.csv:3: email" in response.text
    assert "ok@example.org" not in sender.get(path).text


def test_suppressions_are_changed_by_an_admin_with_a_reason_and_only_seen_by_a_viewer(
    admin: TestClient, viewer: TestClient, redis_url: str
) -> None:
    token = csrf(admin, "/admin/suppressions")
    added = admin.post("/admin/suppressions", data={"csrf_token": token, "email": "x@example.org", "reason": "asked"})
    assert added.status_code == 303
    assert Ledger(redis.Redis.from_url(redis_url)).suppression("x@example.org") == "asked"
    listed = viewer.get("/admin/suppressions").text
    assert "x@example.org" in listed and "manual" in listed and "Suppress an address" not in listed
    token = csrf(viewer)
    refused = viewer.post("/admin/suppressions/remove", data={"csrf_token": token, "remove_email": "x@example.org"})
    assert refused.status_code == 403
    data = {"csrf_token": csrf(admin, "/admin/suppressions"), "remove_email": "x@example.org", "remove_reason": "ok"}
    assert admin.post("/admin/suppressions/remove", data=data).status_code == 303
    assert Ledger(redis.Redis.from_url(redis_url)).suppression("x@example.org") is None


def _archive(store: Store, n: int) -> str:
    occurrence = f"{SOC}:opened:1"
    now = datetime.now(UTC)
    store.record_occurrence(OccurrenceRecord(occurrence, SOC, "opened", 1, now, now, state="done"))
    statuses = ("sent", "failed", "suppressed")
    store.archive(
        Settled(occurrence, "email", f"person{i:05d}@example.org", statuses[i % 3], now, lists=("csp",) * (i % 2))
        for i in range(n)
    )
    return occurrence


def test_the_deliveries_table_filters_searches_and_pages(viewer: TestClient, app: Starlette) -> None:
    _archive(app.state.web.store, 120)
    base = f"/admin/consultations/{SOC}/occurrences/opened/1"
    first = viewer.get(base)
    assert first.status_code == 200
    assert "120 deliveries" in first.text and "person00000@example.org" in first.text
    assert "Next page" in first.text
    second = viewer.get(base + "?after=email%7Cperson00049%40example.org")
    assert ">person00050@example.org</th>" in second.text and ">person00049@example.org</th>" not in second.text
    failed = viewer.get(base + "?status=failed&list=csp")
    assert "20 deliveries match" in failed.text
    found = viewer.get(base + "?q=PERSON00007")
    assert "1 delivery matches" in found.text and "person00007@example.org" in found.text


def test_a_viewer_cannot_retry_and_nothing_is_put_back(viewer: TestClient, app: Starlette) -> None:
    _archive(app.state.web.store, 3)
    response = viewer.post(f"/admin/consultations/{SOC}/occurrences/opened/1/retry", data={"csrf_token": csrf(viewer)})
    assert response.status_code == 403
    assert not any(e.action.startswith("retry") for e in app.state.web.store.audit_entries(SOC))


def test_the_evidence_pack_downloads_as_the_command_writes_it(viewer: TestClient, app: Starlette) -> None:
    _archive(app.state.web.store, 3)
    app.state.web.store.record_consultation(
        ConsultationRecord(SOC, "Serious and Organised Crime Strategy", None, "Europe/London", None, None)
    )
    page = viewer.get(f"/admin/consultations/{SOC}/evidence")
    assert page.status_code == 200 and "deliveries.csv" in page.text
    csv = viewer.get(f"/admin/consultations/{SOC}/evidence/deliveries.csv")
    assert csv.status_code == 200
    assert csv.headers["content-disposition"] == f'attachment; filename="{SOC}-deliveries.csv"'
    assert csv.text.splitlines()[0].startswith("occurrence,event,channel,recipient")
    assert "person00002@example.org" in csv.text


def test_the_timeline_says_when_a_send_window_moved_an_event_and_when_a_paced_one_finishes(
    tmp_path: Path, redis_url: str
) -> None:
    shutil.copytree(ROOT / "config", tmp_path / "config")
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    settings_file = tmp_path / "config" / "notifier.yaml"
    text = settings_file.read_text().replace(
        "  reply_to: policy@pcc.example\n", "  reply_to: policy@pcc.example\n  rate: 30/minute\n"
    )
    settings_file.write_text(text + '\nsend_window:\n  days: mon-fri\n  hours: "09:00-17:00"\n')
    app = create_app(web_settings(tmp_path, redis_url, config_dir=tmp_path / "config"))
    with client_as(app, "viewer") as viewer:
        page = viewer.get(f"/admin/consultations/{SOC}")
    assert page.status_code == 200, page.text
    assert "(set for Thu 15 Aug 2019 23:59 BST; moved:" in page.text
    assert '<th scope="col">Finishes</th>' in page.text
