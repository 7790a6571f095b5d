"""Signing in to the console: the cookie, CSRF, the lock after five failures, argon2, the
``users`` commands and the ``next`` redirect.

The app is :func:`notifier.web.app.create_app` on a real Redis and a real SQLite record in the
test's folder, driven through Starlette's TestClient (HTTPS, so the ``Secure`` cookie is sent
back as a browser would); the ``users`` commands run as ``python -m notifier`` subprocesses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import argon2
import httpx2 as httpx  # what Starlette's TestClient answers with
import pytest
from starlette.testclient import TestClient

from notifier import users
from notifier.config import Settings
from notifier.errors import AccountLocked, InvalidValueError, SignInRefused, UsageError
from notifier.store import Store
from notifier.web.app import create_app
from tests import console_fixtures
from tests.conftest import Project
from tests.console_fixtures import PASSWORD, csrf_of, record, web_settings

__all__ = ["record"]  # fixture
ADA = "ada.lovelace@pcc.example"
WRONG = "not the right password"


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    return web_settings(tmp_path, redis_url)


@pytest.fixture
def client(settings: Settings, record: Store) -> Iterator[TestClient]:
    users.add_user(record, ADA, "sender", PASSWORD)
    with TestClient(create_app(settings), base_url="https://testserver", follow_redirects=False) as found:
        yield found


def sign_in(client: TestClient, email: str = ADA, password: str = PASSWORD, next_: str | None = None) -> httpx.Response:
    """Ada (a sender) signs in, unless another is named."""
    return console_fixtures.sign_in(client, email, password, next_)


def is_signed_in(client: TestClient) -> bool:
    """Whether the console takes this client as signed in (its sign-in page says so)."""
    page = client.get("/admin/sign-in")
    assert page.status_code == 200
    return "You are signed in" in page.text


def session_cookie(response: httpx.Response) -> str:
    headers = response.headers
    cookies = [c for c in headers.get_list("set-cookie") if c.startswith("notifier_session=")]
    assert cookies, "no session cookie was set"
    return str(cookies[-1])


# ---------------------------------------------------------------------------
# Signing in
# ---------------------------------------------------------------------------


def test_signing_in_sets_an_httponly_samesite_lax_secure_cookie_and_goes_to_the_console(client: TestClient) -> None:
    response = sign_in(client)
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/consultations"
    cookie = session_cookie(response).lower()
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    assert "secure" in cookie


def test_the_cookie_is_not_marked_secure_when_the_public_url_is_http(
    tmp_path: Path, redis_url: str, record: Store
) -> None:
    users.add_user(record, ADA, "viewer", PASSWORD)
    app = create_app(web_settings(tmp_path, redis_url, public_url="http://localhost:8080"))
    with TestClient(app, follow_redirects=False) as plain:
        cookie = session_cookie(sign_in(plain)).lower()
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    assert "secure" not in cookie


def test_the_sign_in_page_has_labelled_fields_and_a_skip_link(client: TestClient) -> None:
    page = client.get("/admin/sign-in")
    assert page.status_code == 200
    assert '<label for="email">' in page.text
    assert '<label for="password">' in page.text
    assert 'href="#main"' in page.text
    assert 'autocomplete="current-password"' in page.text


def test_a_wrong_password_shows_an_error_summary_linking_to_the_field_and_no_session(client: TestClient) -> None:
    response = sign_in(client, password=WRONG)
    page = response.text
    assert response.status_code == 400
    assert "There is a problem" in page
    assert '<a href="#email">' in page
    assert 'id="email-error"' in page
    assert not is_signed_in(client)


def test_an_unknown_address_is_refused_with_the_same_words_as_a_wrong_password(client: TestClient) -> None:
    unknown = sign_in(client, email="nobody@pcc.example").text
    wrong = sign_in(client, password=WRONG).text
    assert users.REFUSED.replace("'", "&#39;") in unknown
    assert users.REFUSED.replace("'", "&#39;") in wrong


def test_an_empty_form_names_both_fields(client: TestClient) -> None:
    response = sign_in(client, email="", password="")
    page = response.text
    assert response.status_code == 400
    assert '<a href="#email">Enter your email address</a>' in page
    assert '<a href="#password">Enter your password</a>' in page


def test_a_form_without_its_csrf_token_is_refused_and_signs_no_one_in(client: TestClient, record: Store) -> None:
    client.get("/admin/sign-in")
    response = client.post("/admin/sign-in", data={"email": ADA, "password": PASSWORD})
    assert response.status_code == 403
    assert not [c for c in response.headers.get_list("set-cookie") if "notifier_session=" in c and "user" in c]
    assert [e.action for e in record.audit_entries()] == ["user add"]  # no sign-in happened
    forged = client.post("/admin/sign-in", data={"email": ADA, "password": PASSWORD, "csrf_token": "forged"})
    assert forged.status_code == 403
    assert not is_signed_in(client)


def test_sign_out_needs_the_csrf_token_and_ends_the_session(client: TestClient, record: Store) -> None:
    sign_in(client)
    page = client.get("/admin/sign-in")
    assert "You are signed in as" in page.text and ADA in page.text
    assert client.post("/admin/sign-out", data={}).status_code == 403
    assert is_signed_in(client)
    out = client.post("/admin/sign-out", data={"csrf_token": csrf_of(page.text)})
    assert out.status_code == 303
    assert not is_signed_in(client)
    assert "sign-out" in [e.action for e in record.audit_entries()]


# ---------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------


def test_the_sixth_wrong_password_finds_the_account_locked_and_the_right_one_is_refused_too(
    client: TestClient,
) -> None:
    for _ in range(users.MAX_FAILED_SIGNINS):
        page = sign_in(client, password=WRONG).text
        assert "locked" not in page
    sixth = sign_in(client, password=WRONG).text
    assert "This account is locked" in sixth
    right = sign_in(client)
    assert right.status_code == 400
    assert "This account is locked" in right.text
    assert not is_signed_in(client)


def test_a_locked_account_opens_again_after_15_minutes(record: Store) -> None:
    users.add_user(record, ADA, "viewer", PASSWORD)
    start = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    for n in range(users.MAX_FAILED_SIGNINS):
        with pytest.raises(SignInRefused) as refused:
            users.authenticate(record, ADA, WRONG, now=start + timedelta(seconds=n))
        assert not isinstance(refused.value, AccountLocked)
    locked_at = start + timedelta(seconds=users.MAX_FAILED_SIGNINS - 1)
    with pytest.raises(AccountLocked):
        users.authenticate(record, ADA, WRONG, now=locked_at + timedelta(seconds=1))
    with pytest.raises(AccountLocked):
        users.authenticate(record, ADA, PASSWORD, now=locked_at + timedelta(minutes=14, seconds=59))
    user = users.authenticate(record, ADA, PASSWORD, now=locked_at + timedelta(minutes=15))
    assert user.email == ADA
    after = record.user(ADA)
    assert after is not None and after.failed_signins == 0 and after.locked_until is None
    actions = [e.action for e in record.audit_entries()]
    assert "account locked" in actions and actions[0] == "sign-in"


def test_a_good_sign_in_clears_the_count_of_failures(record: Store) -> None:
    users.add_user(record, ADA, "viewer", PASSWORD)
    for _ in range(users.MAX_FAILED_SIGNINS - 1):
        with pytest.raises(SignInRefused):
            users.authenticate(record, ADA, WRONG)
    users.authenticate(record, ADA, PASSWORD)
    with pytest.raises(SignInRefused) as refused:
        users.authenticate(record, ADA, WRONG)
    assert not isinstance(refused.value, AccountLocked)


def test_passwords_are_stored_as_argon2id_hashes_only(record: Store) -> None:
    users.add_user(record, ADA, "admin", PASSWORD)
    stored = record.user(ADA)
    assert stored is not None and stored.password_hash is not None
    assert stored.password_hash.startswith("$argon2id$")
    assert PASSWORD not in stored.password_hash


def test_a_hash_made_with_weaker_parameters_is_replaced_at_the_next_sign_in(record: Store) -> None:
    weak = argon2.PasswordHasher(time_cost=1, memory_cost=8 * 1024).hash(PASSWORD)
    record.add_user(ADA, "viewer", weak)
    users.authenticate(record, ADA, PASSWORD)
    stored = record.user(ADA)
    assert stored is not None and stored.password_hash != weak
    assert users.authenticate(record, ADA, PASSWORD).email == ADA


def test_a_short_password_or_an_unknown_role_is_refused(record: Store) -> None:
    with pytest.raises(InvalidValueError, match="at least 10 characters"):
        users.add_user(record, ADA, "viewer", "short")
    with pytest.raises(InvalidValueError, match="viewer, sender, admin"):
        users.add_user(record, ADA, "owner", PASSWORD)
    with pytest.raises(InvalidValueError, match="invalid e-mail address"):
        users.add_user(record, "not an address", "viewer", PASSWORD)
    assert record.users() == []


def test_a_removed_user_is_signed_out_at_their_next_request(client: TestClient, record: Store) -> None:
    sign_in(client)
    assert is_signed_in(client)
    users.remove_user(record, ADA)
    with pytest.raises(UsageError, match="no console user"):
        users.remove_user(record, ADA)
    assert not is_signed_in(client)  # the cookie is still signed, but the record says no
    actions = [e.action for e in record.audit_entries()]
    assert "user remove" in actions


# ---------------------------------------------------------------------------
# next
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/admin/",
        "https://evil.example/admin/",
        "/\\evil.example",
        "/admin/../evil",
        "javascript:alert(1)",
        "/unsubscribe/x",
        "/admin/sign-in",
    ],
)
def test_a_next_outside_the_console_is_not_followed(client: TestClient, target: str) -> None:
    response = sign_in(client, next_=target)
    assert response.status_code == 303
    location = response.headers["location"]
    assert location == "/admin/consultations"


def test_a_signed_in_visitor_is_never_sent_back_to_the_sign_in_page(client: TestClient) -> None:
    sign_in(client)
    page = client.get("/admin/sign-in", params={"next": "/admin/sign-in"})
    assert page.status_code == 200
    assert "You are signed in" in page.text


def test_a_next_in_the_console_is_where_signing_in_goes(client: TestClient) -> None:
    response = sign_in(client, next_="/admin/consultations/soc-strategy-2019?tab=plan")
    assert response.headers["location"] == "/admin/consultations/soc-strategy-2019?tab=plan"


def test_the_admin_root_goes_to_the_consultations(client: TestClient) -> None:
    response = client.get("/admin/")
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/consultations"


# ---------------------------------------------------------------------------
# notifier users
# ---------------------------------------------------------------------------


def test_users_add_list_and_remove_from_the_command_line(project: Project) -> None:
    added = project.run(
        "users",
        "add",
        "Ada.Lovelace@PCC.example",
        "--role",
        "admin",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert added.returncode == 0, added.stderr
    assert "added ada.lovelace@pcc.example as admin" in added.stdout
    listed = project.run("users", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["users"][0]["email"] == ADA
    assert ADA in project.run("users", "list").stdout
    store = Store.open(Settings.from_env(project.settings_env()))
    try:
        user = users.authenticate(store, ADA, PASSWORD)
        assert user.role == "admin"
    finally:
        store.close()
    removed = project.run("users", "remove", ADA)
    assert removed.returncode == 0, removed.stderr
    assert ADA not in project.run("users", "list").stdout


def test_users_commands_refuse_bad_input_with_a_clear_message_and_exit_1(project: Project) -> None:
    bad_role = project.run("users", "add", ADA, "--role", "owner", "--password-stdin", stdin=PASSWORD)
    assert bad_role.returncode != 0 and "owner" in bad_role.stderr
    short = project.run("users", "add", ADA, "--role", "viewer", "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "at least 10 characters" in short.stderr
    empty = project.run("users", "add", ADA, "--role", "viewer", "--password-stdin", stdin="")
    assert empty.returncode == 1 and "--password-stdin" in empty.stderr
    bad_address = project.run("users", "add", "not-an-address", "--role", "viewer", "--password-stdin", stdin=PASSWORD)
    assert bad_address.returncode == 1 and "not-an-address" in bad_address.stderr
    assert project.run("users", "add", ADA, "--role", "viewer", "--password-stdin", stdin=PASSWORD).returncode == 0
    again = project.run("users", "add", ADA, "--role", "admin", "--password-stdin", stdin=PASSWORD)
    assert again.returncode == 1 and "already exists" in again.stderr
    unknown = project.run("users", "remove", "nobody@pcc.example")
    assert unknown.returncode == 1 and "no console user nobody@pcc.example" in unknown.stderr


# ---------------------------------------------------------------------------
# /admin/users
# ---------------------------------------------------------------------------

GRACE = "grace.hopper@pcc.example"


@pytest.fixture
def admin(client: TestClient, record: Store) -> str:
    """``client`` signed in as an admin; the session's CSRF token."""
    users.add_user(record, "admin@pcc.example", "admin", PASSWORD)
    sign_in(client, email="admin@pcc.example")
    return csrf_of(client.get("/admin/users").text)


def test_an_admin_adds_a_user_on_the_users_page_with_an_argon2_hash_and_an_audit_entry(
    client: TestClient, record: Store, admin: str
) -> None:
    form = {"email": GRACE, "role": "sender", "password": PASSWORD, "csrf_token": admin}
    response = client.post("/admin/users", data=form)
    assert response.status_code == 303
    page = client.get("/admin/users").text
    assert f"Added {GRACE} as sender." in page
    added = record.user(GRACE)
    assert added is not None and added.role == "sender"
    assert added.password_hash is not None and added.password_hash.startswith("$argon2id$")
    assert any(e.actor == "admin@pcc.example" and e.action == "user add" for e in record.audit_entries())


def test_adding_a_user_with_bad_fields_shows_each_error_linked_to_its_field(
    client: TestClient, record: Store, admin: str
) -> None:
    form = {"email": "not an address", "role": "owner", "password": "short", "csrf_token": admin}
    response = client.post("/admin/users", data=form)
    assert response.status_code == 400
    for field in ("email", "role", "password"):
        assert f'<a href="#{field}">' in response.text
        assert f'id="{field}-error"' in response.text
    assert record.user("not an address") is None


def test_an_admin_removes_a_user_but_not_themselves(client: TestClient, record: Store, admin: str) -> None:
    users.add_user(record, GRACE, "viewer", PASSWORD)
    assert client.post("/admin/users/remove", data={"email": GRACE, "csrf_token": admin}).status_code == 303
    assert record.user(GRACE) is None
    own = client.post("/admin/users/remove", data={"email": "admin@pcc.example", "csrf_token": admin})
    assert own.status_code == 400
    assert "You cannot remove your own account" in own.text
    assert record.user("admin@pcc.example") is not None


def test_the_users_page_refuses_a_form_without_its_csrf_token(client: TestClient, record: Store, admin: str) -> None:
    response = client.post("/admin/users", data={"email": GRACE, "role": "admin", "password": PASSWORD})
    assert response.status_code == 403
    assert record.user(GRACE) is None


def test_a_sender_cannot_see_or_change_the_users(client: TestClient, record: Store) -> None:
    sign_in(client)  # ADA is a sender
    token = csrf_of(client.get("/admin/sign-in").text)
    assert client.get("/admin/users").status_code == 403
    form = {"email": GRACE, "role": "admin", "password": PASSWORD, "csrf_token": token}
    assert client.post("/admin/users", data=form).status_code == 403
    assert client.post("/admin/users/remove", data={"email": ADA, "csrf_token": token}).status_code == 403
    assert record.user(GRACE) is None and record.user(ADA) is not None


def test_the_users_page_sends_a_visitor_who_is_not_signed_in_to_sign_in(client: TestClient) -> None:
    response = client.get("/admin/users")
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/sign-in?next=%2Fadmin%2Fusers"
