"""The JSON API: fire, suppressions (kept through a Redis FLUSHALL), who may call what, and
JSON errors everywhere under ``/api/``.

The app is :func:`notifier.web.app.create_app` on a copy of the example project, a real Redis
and a real SQLite record, through Starlette's TestClient. Firing only queues the fan-out for
the workers (none run here): what is checked is the occurrence in the ledger and the audit log.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx2 as httpx  # what Starlette's TestClient answers with
import pytest
import redis
from starlette.routing import Route
from starlette.testclient import TestClient

from notifier.bounces import SOFT_WINDOW
from notifier.config import Settings
from notifier.ledger import Ledger
from notifier.store import Store
from notifier.web.app import ROUTES, create_app
from notifier.web.openapi import document
from tests.conftest import Project
from tests.console_fixtures import record, signed_in

__all__ = ["record"]  # fixture
TOKEN = "api-test-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SOC = "soc-strategy-2019"
FUTURE = "violence-2099"
JANE = "jane.smith@telford.example"


@pytest.fixture
def settings(project: Project, redis_url: str) -> Settings:
    """The example, plus a consultation whose events are all in the future."""
    text = (project.config / "consultations" / f"{SOC}.yaml").read_text()
    project.write(
        f"config/consultations/{FUTURE}.yaml",
        text.replace("2019-", "2099-").replace("10 September 2019", "10 September 2099"),
    )
    env = {**project.settings_env(), "NOTIFIER_REDIS_URL": redis_url, "NOTIFIER_ADMIN_TOKEN": TOKEN}
    return Settings.from_env(env)


@pytest.fixture
def client(settings: Settings, record: Store) -> Iterator[TestClient]:
    with TestClient(create_app(settings), base_url="https://testserver", follow_redirects=False) as found:
        yield found


def fire(client: TestClient, body: object, consultation: str = SOC, **headers: str) -> httpx.Response:
    response: httpx.Response = client.post(
        f"/api/consultations/{consultation}/fire", json=body, headers={**ADMIN, **headers}
    )
    return response


# ---------------------------------------------------------------------------
# The description
# ---------------------------------------------------------------------------


def test_the_openapi_document_describes_every_api_route(client: TestClient) -> None:
    described = client.get("/api/openapi.json").json()
    assert described["openapi"].startswith("3.")
    served = {
        (route.path, method.lower())
        for route in ROUTES
        if isinstance(route, Route) and route.path.startswith("/api/") and route.path != "/api/openapi.json"
        for method in (route.methods or set()) - {"HEAD"}
    }
    listed = {(path, method) for path, item in described["paths"].items() for method in item}
    assert served == listed
    assert described == document()


def test_the_bounce_hook_is_described_as_needing_no_token_and_an_unsigned_message_is_a_403(
    client: TestClient,
) -> None:
    operation = client.get("/api/openapi.json").json()["paths"]["/api/bounces"]["post"]
    assert operation["security"] == [] and "403" in operation["responses"]
    unsigned = {
        "Type": "Notification",
        "MessageId": "m-1",
        "TopicArn": "arn:aws:sns:eu-west-2:123456789012:ses-bounces",
        "Message": "{}",
        "Timestamp": "2019-07-10T09:00:00.000Z",
    }
    refused = client.post("/api/bounces", json=unsigned)
    assert refused.status_code == 403 and "refused" in refused.json()["error"]


def test_lifting_a_suppression_by_the_api_forgets_the_addresses_soft_bounces(client: TestClient, record: Store) -> None:
    for key in ("a" * 32, "b" * 32):
        record.soft_bounce(JANE, key, within=SOFT_WINDOW)
    client.post("/api/suppressions", json={"email": JANE, "reason": "asked"}, headers=ADMIN)
    lifted = client.delete(f"/api/suppressions/{JANE}", params={"reason": "asked back in"}, headers=ADMIN)
    assert lifted.status_code == 200
    assert record.soft_bounce(JANE, "c" * 32, within=SOFT_WINDOW) == 1, "counting starts again"


# ---------------------------------------------------------------------------
# Fire
# ---------------------------------------------------------------------------


def test_firing_an_outcome_queues_a_new_occurrence_and_audits_who(
    client: TestClient, record: Store, redis_client: redis.Redis
) -> None:
    response = fire(client, {"event": "outcome"})
    assert response.status_code == 202, response.text
    occurrence = response.json()["occurrence"]
    assert Ledger(redis_client).fired(SOC, "outcome") == occurrence
    assert any(e.actor == "api" and "outcome" in e.action for e in record.audit_entries(SOC))


def test_firing_again_needs_again(client: TestClient) -> None:
    first = fire(client, {"event": "closed"}).json()["occurrence"]
    repeat = fire(client, {"event": "closed"})
    assert repeat.status_code == 409
    assert '"again": true' in repeat.json()["error"]
    assert repeat.json()["occurrence"] == first
    again = fire(client, {"event": "closed", "again": True})
    assert again.status_code == 202
    assert again.json()["occurrence"] != first


def test_a_scheduled_event_before_its_time_needs_early(client: TestClient, redis_client: redis.Redis) -> None:
    refused = fire(client, {"event": "opened"}, consultation=FUTURE)
    assert refused.status_code == 409
    assert '"early": true' in refused.json()["error"]
    assert Ledger(redis_client).fired(FUTURE, "opened") is None
    early = fire(client, {"event": "opened", "early": True}, consultation=FUTURE)
    assert early.status_code == 202
    assert Ledger(redis_client).fired(FUTURE, "opened") == early.json()["occurrence"]


@pytest.mark.parametrize(
    ("consultation", "body", "status", "words"),
    [
        ("nope", {"event": "outcome"}, 404, "unknown consultation 'nope'"),
        (SOC, {}, 422, "event must be"),
        (SOC, {"event": "../../etc"}, 422, "event must be"),
        (SOC, {"event": "outcome", "early": "yes"}, 422, "early must be true or false"),
        (SOC, ["outcome"], 422, "JSON object"),
        (SOC, {"event": "no-such-template"}, 422, "cannot be sent"),
        (SOC, {"event": "response_received"}, 422, "not fired"),
    ],
)
def test_a_bad_fire_request_is_refused_with_a_clear_message_and_fires_nothing(  # noqa: PLR0913 - parametrised
    client: TestClient, redis_client: redis.Redis, consultation: str, body: object, status: int, words: str
) -> None:
    response = fire(client, body, consultation=consultation)
    assert response.status_code == status
    assert words in response.text
    assert Ledger(redis_client).occurrences(consultation) == []


# ---------------------------------------------------------------------------
# Suppressions
# ---------------------------------------------------------------------------


def test_a_suppression_added_by_the_api_survives_a_redis_flushall(
    client: TestClient, redis_client: redis.Redis, record: Store
) -> None:
    added = client.post(
        "/api/suppressions", json={"email": "Jane.Smith@Telford.example", "reason": "asked by phone"}, headers=ADMIN
    )
    assert added.status_code == 201
    assert added.json()["email"] == JANE
    assert Ledger(redis_client).suppression(JANE) == "asked by phone"
    redis_client.flushall()
    listed = client.get("/api/suppressions", headers=ADMIN).json()["suppressed"]
    assert [(s["email"], s["reason"], s["source"]) for s in listed] == [(JANE, "asked by phone", "manual")]
    assert "suppress" in [e.action for e in record.audit_entries()]


def test_suppressing_an_address_twice_keeps_the_first_entry(client: TestClient) -> None:
    client.post("/api/suppressions", json={"email": JANE, "reason": "first"}, headers=ADMIN)
    second = client.post("/api/suppressions", json={"email": JANE, "reason": "second"}, headers=ADMIN)
    assert second.status_code == 200
    assert second.json()["reason"] == "first"


def test_lifting_a_suppression_needs_a_reason_and_is_audited(
    client: TestClient, redis_client: redis.Redis, record: Store
) -> None:
    client.post("/api/suppressions", json={"email": JANE, "reason": "asked"}, headers=ADMIN)
    assert client.delete(f"/api/suppressions/{JANE}", headers=ADMIN).status_code == 422
    lifted = client.delete(f"/api/suppressions/{JANE}", params={"reason": "asked back in"}, headers=ADMIN)
    assert lifted.status_code == 200
    assert Ledger(redis_client).suppression(JANE) is None
    assert record.suppression(JANE) is None
    assert client.delete(f"/api/suppressions/{JANE}", params={"reason": "x"}, headers=ADMIN).status_code == 404
    assert "unsuppress" in [e.action for e in record.audit_entries()]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"email": "not-an-address", "reason": "x"}, "invalid e-mail address"),
        ({"email": JANE}, "a reason is required"),
        ({"email": JANE, "reason": "  "}, "a reason is required"),
        ({"reason": "x"}, "an e-mail address is required"),
    ],
)
def test_a_bad_suppression_is_refused_with_422_naming_the_field(
    client: TestClient, record: Store, body: dict[str, str], words: str
) -> None:
    response = client.post("/api/suppressions", json=body, headers=ADMIN)
    assert response.status_code == 422
    assert words in response.json()["error"]
    assert record.suppressions() == []


# ---------------------------------------------------------------------------
# Who may call what
# ---------------------------------------------------------------------------


def test_a_viewer_cannot_fire_and_nothing_fires(client: TestClient, record: Store, redis_client: redis.Redis) -> None:
    token = signed_in(client, record, "viewer")
    response = client.post(f"/api/consultations/{SOC}/fire", json={"event": "outcome"}, headers={"X-CSRF-Token": token})
    assert response.status_code == 403
    assert "viewer" in response.json()["error"]
    assert Ledger(redis_client).occurrences(SOC) == []
    assert client.get("/api/suppressions").status_code == 200  # a viewer reads


def test_a_sender_fires_only_with_the_session_csrf_token(
    client: TestClient, record: Store, redis_client: redis.Redis
) -> None:
    token = signed_in(client, record, "sender")
    bare = client.post(f"/api/consultations/{SOC}/fire", json={"event": "outcome"})
    assert bare.status_code == 403
    assert Ledger(redis_client).occurrences(SOC) == []
    sent = client.post(f"/api/consultations/{SOC}/fire", json={"event": "outcome"}, headers={"X-CSRF-Token": token})
    assert sent.status_code == 202
    assert any(e.actor == "sender@pcc.example" for e in record.audit_entries(SOC))
    suppress = client.post("/api/suppressions", json={"email": JANE, "reason": "x"}, headers={"X-CSRF-Token": token})
    assert suppress.status_code == 403  # suppressions are an admin's


def test_a_response_a_signed_in_user_records_is_audited_as_theirs(client: TestClient, record: Store) -> None:
    token = signed_in(client, record, "sender")
    body = {"email": JANE, "organisation": "Telford & Wrekin CSP"}
    recorded = client.post(f"/api/consultations/{SOC}/responses", json=body, headers={"X-CSRF-Token": token})
    assert recorded.status_code == 201
    actors = [e.actor for e in record.audit_entries(SOC) if e.action == "responses record"]
    assert actors == ["sender@pcc.example"]
    client.post(f"/api/consultations/{SOC}/responses", json=body, headers=ADMIN)
    assert next(e.actor for e in record.audit_entries(SOC) if e.action == "responses record") == "api"


def test_a_wrong_bearer_token_is_401_and_no_token_at_all_is_401(client: TestClient) -> None:
    assert client.get("/api/suppressions", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/suppressions").status_code == 401


def test_the_bearer_api_is_off_without_admin_token(project: Project, redis_url: str) -> None:
    settings = Settings.from_env({**project.settings_env(), "NOTIFIER_REDIS_URL": redis_url})
    with TestClient(create_app(settings)) as off:
        response = off.get("/api/suppressions", headers=ADMIN)
    assert response.status_code == 404
    assert "NOTIFIER_ADMIN_TOKEN" in response.json()["error"]


def test_errors_under_api_are_json(client: TestClient) -> None:
    missing = client.get("/api/nothing-here", headers=ADMIN)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert "error" in missing.json()
    wrong_method = client.put("/api/suppressions", headers=ADMIN)
    assert wrong_method.status_code == 405
    assert "error" in wrong_method.json()
    not_json = client.post("/api/suppressions", content=b"\xff{", headers=ADMIN)
    assert not_json.status_code == 422
    assert client.get("/nothing-here").headers["content-type"].startswith("text/html")
