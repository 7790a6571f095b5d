"""Signing in to the console from a test: settings, the app's record, the CSRF token of a
page, the sign-in form.

Shared by the console's and the API's tests (test_console*.py, test_api.py, test_web.py): every
client signs in for real, through the sign-in form with its CSRF token, as a browser would.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import httpx2 as httpx  # what Starlette's TestClient answers with
import pytest
from starlette.testclient import TestClient

from notifier.config import Settings
from notifier.store import Store
from notifier.users import add_user

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"
PUBLIC_URL = "https://notify.pcc.example"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def web_settings(
    tmp_path: Path,
    redis_url: str,
    *,
    config_dir: Path = ROOT / "config",
    public_url: str = PUBLIC_URL,
    secret: str = "console-test-secret",
    **more: Any,
) -> Settings:
    """Settings as ``notifier web`` reads them: the example config and a fresh data dir (whose
    record is SQLite), plus any ``more`` settings."""
    return Settings(
        config_dir=config_dir,
        data_dir=tmp_path / "var",
        redis_url=redis_url,
        public_url=public_url,
        secret_key_env=secret,
        **more,
    )


@pytest.fixture
def record(settings: Settings) -> Iterator[Store]:
    """The app's record (of the test module's ``settings`` fixture), opened on its own as
    another process would, and closed after the test."""
    store = Store.open(settings)
    yield store
    store.close()


def csrf_of(page: str) -> str:
    """The CSRF token of the (first) form on ``page``."""
    found = _CSRF.search(page)
    assert found, "the page has no csrf_token field"
    return unescape(found.group(1))


def sign_in(client: TestClient, email: str, password: str = PASSWORD, next_: str | None = None) -> httpx.Response:
    """Fill in and post the sign-in form as a browser would; the answer to the post."""
    page = client.get("/admin/sign-in", params={"next": next_} if next_ else None)
    form = {"email": email, "password": password, "csrf_token": csrf_of(page.text)}
    if next_ is not None:
        form["next"] = next_
    response: httpx.Response = client.post("/admin/sign-in", data=form)
    return response


def signed_in(client: TestClient, record: Store, role: str) -> str:
    """Sign ``client`` in as a new user ``ROLE@pcc.example`` with ``role``; the session's CSRF token."""
    email = f"{role}@pcc.example"
    add_user(record, email, role, PASSWORD)
    response = sign_in(client, email)
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/admin/sign-in").text)
