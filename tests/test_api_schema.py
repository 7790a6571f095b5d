"""schemathesis against the JSON API: requests made from ``/api/openapi.json`` (valid ones and
not) never get a server error.

The app is :func:`notifier.web.app.create_app` on a copy of the example, a real Redis and a
real SQLite record, called in-process (ASGI) with the admin's bearer token. Bounded and
repeatable: a few examples per operation, derandomised, no deadline (argon2 and SQLite are
not what is timed here).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from starlette.applications import Starlette

from notifier.config import Settings
from notifier.web.app import create_app
from notifier.web.openapi import document
from tests.conftest import Project

TOKEN = "schema-test-token"


@pytest.fixture
def api_app(project: Project, redis_url: str) -> Iterator[Starlette]:
    env = {**project.settings_env(), "NOTIFIER_REDIS_URL": redis_url, "NOTIFIER_ADMIN_TOKEN": TOKEN}
    app = create_app(Settings.from_env(env))
    yield app
    web = app.state.web
    web.desk.close()
    for client in web.owned:
        client.close()
    web.store.close()


# The document the app serves (test_api.py checks they are the same), loaded at collection
# so that each operation is a test of its own; the requests go to each test's app.
schema = schemathesis.openapi.from_dict(document())


@schema.parametrize()
@settings(
    max_examples=15,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_api_operation_answers_a_server_error(case: schemathesis.Case[Any], api_app: Starlette) -> None:
    case.call_and_validate(
        app=api_app,
        base_url="http://testserver",
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=[not_a_server_error],
    )
