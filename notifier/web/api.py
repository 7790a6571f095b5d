"""The JSON API under ``/api/``, described at ``/api/openapi.json`` (:mod:`notifier.web.openapi`).

Who may call it: a program with ``Authorization: Bearer $NOTIFIER_ADMIN_TOKEN`` (an admin), or
a signed-in console user within their role, the same roles as the pages (a viewer reads, a
sender also fires and records responses, an admin also manages suppressions). A console user's
POST or DELETE also carries the session's CSRF token in ``X-CSRF-Token``, so another site cannot
make their browser call it. Without ``NOTIFIER_ADMIN_TOKEN`` the bearer token is off (404 for a
request that is not from a console user). Every handler is wrapped in :func:`allowed`, so a new
endpoint cannot forget the check.

Every answer is JSON, errors too (``{"error": "..."}``, with ``problems`` where there are
several): a request the API cannot use is a 4xx naming what is wrong, Redis or the database
out is a 503, and nothing else is an error of ours.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import redis
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from notifier import report as reporting
from notifier import suppressions as suppressing
from notifier.config._models import ID_PATTERN
from notifier.errors import (
    BadResponseError,
    ConfigError,
    InvalidValueError,
    NotifierError,
    Problem,
    RedisUnavailable,
    StoreError,
    TooEarlyError,
    UsageError,
)
from notifier.store import Response as RecordedResponse
from notifier.store import Store
from notifier.web.auth import Role, csrf_header_matches, signed_in
from notifier.web.openapi import document
from notifier.web.state import describe, state

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
NO_STORE = {"Cache-Control": "no-store"}
#: The audit log's actor for a caller with the bearer token.
API_ACTOR = "api"
_EVENT = re.compile(ID_PATTERN)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    """The JSON answer of a refused or failed request."""
    return JSONResponse({"error": message, **extra}, status, headers=NO_STORE)


def _bearer(request: Request) -> Response | None:
    """None when the request carries the admin token; else the refusal (404 with it off, 401)."""
    admin_token = state(request).admin_token
    if not admin_token:
        return error(404, "the admin API is off: set NOTIFIER_ADMIN_TOKEN to use it")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), admin_token.encode()):
        return JSONResponse(
            {"error": "a valid 'Authorization: Bearer <NOTIFIER_ADMIN_TOKEN>' is required"},
            401,
            headers={"WWW-Authenticate": "Bearer", **NO_STORE},
        )
    return None


async def caller(request: Request, role: Role) -> tuple[str | None, Response | None]:
    """Who is calling (``api`` for the bearer token, else the console user's address) and, when
    they may not do this, the refusal instead."""
    if "authorization" in request.headers:
        refused = _bearer(request)
        return (None, refused) if refused is not None else (API_ACTOR, None)
    user = await signed_in(request)
    if user is None:
        return None, _bearer(request)
    if not user.can(role):
        return None, error(403, f"your role ({user.role}) cannot do this: it needs {role}")
    if request.method not in _SAFE_METHODS and not csrf_header_matches(request):
        return None, error(403, "the session's CSRF token is required in the X-CSRF-Token header")
    return user.email, None


def allowed(role: Role) -> Callable[[Handler], Handler]:
    """Guard an API handler: answered only for the bearer token or a console user with ``role``;
    the caller's name is in ``request.state.actor`` for the audit log."""

    def guard(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: Request) -> Response:
            actor, refused = await caller(request, role)
            if refused is not None:
                return refused
            request.state.actor = actor
            return await handler(request)

        return guarded

    return guard


def _unavailable(exc: BaseException) -> Response:
    what = "the database" if isinstance(exc, StoreError) else "Redis"
    log.error("API request failed: %s unavailable: %s", what, describe(exc))
    return error(503, f"{what} unavailable: {describe(exc)}")


def _store(request: Request) -> Store:
    store = state(request).store
    if store is None:
        raise StoreError("the consultation record is not open")
    return store


async def _json_object(request: Request) -> dict[str, Any] | Response:
    """The request's JSON object, or the 422 saying it is not one."""
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        return error(422, "the body must be a JSON object")
    if not isinstance(body, dict):
        return error(422, "the body must be a JSON object")
    return body


async def openapi_json(request: Request) -> Response:
    """GET ``/api/openapi.json``: the OpenAPI 3.1 description of this API (public: it holds no data)."""
    return JSONResponse(document())


@allowed("viewer")
async def consultation_report(request: Request) -> Response:
    """GET ``/api/consultations/{consultation}/report[?event=NAME]``: the JSON of
    ``notifier report --format json``; 404 when nothing is recorded for it."""
    ledger = state(request).ledger
    consultation = request.path_params["consultation"]
    event = request.query_params.get("event")
    try:
        found = await anyio.to_thread.run_sync(functools.partial(reporting.build, ledger, consultation, event=event))
    except (redis.RedisError, OSError) as exc:
        return _unavailable(exc)
    if not found.summary:
        return error(404, f"nothing recorded for {consultation!r}")
    return JSONResponse(found.as_json(), headers=NO_STORE)


@allowed("viewer")
async def suppressions(request: Request) -> Response:
    """GET ``/api/suppressions``: every suppressed address, why, its source and since when, by
    address; from the record (so a Redis FLUSHALL loses none), plus any only Redis holds."""
    web = state(request)
    try:
        rows = await anyio.to_thread.run_sync(suppressing.entries, _store(request), web.ledger)
    except StoreError as exc:
        return _unavailable(exc)
    return JSONResponse({"suppressed": [r.as_json() for r in rows]}, headers=NO_STORE)


@allowed("admin")
async def add_suppression(request: Request) -> Response:
    """POST ``/api/suppressions`` with ``{email, reason}``: 201 with the new suppression, 200 with
    the existing one when the address was suppressed already, 422 naming a bad field."""
    body = await _json_object(request)
    if isinstance(body, Response):
        return body
    try:
        act = functools.partial(
            suppressing.suppress,
            _store(request),
            state(request).ledger,
            body.get("email"),
            body.get("reason"),
            actor=request.state.actor,
        )
        entry, new = await anyio.to_thread.run_sync(act)
    except InvalidValueError as exc:
        return error(422, str(exc))
    except (redis.RedisError, OSError, StoreError) as exc:
        return _unavailable(exc)
    return JSONResponse({**entry.as_json(), "new": new}, 201 if new else 200, headers=NO_STORE)


@allowed("admin")
async def remove_suppression(request: Request) -> Response:
    """DELETE ``/api/suppressions/{email}?reason=TEXT``: lift a suppression (200 with what was
    lifted); 404 when the address is not suppressed, 409 when the config suppresses it."""
    email = request.path_params["email"]
    try:
        act = functools.partial(
            suppressing.lift,
            _store(request),
            state(request).ledger,
            email,
            request.query_params.get("reason"),
            actor=request.state.actor,
        )
        entry = await anyio.to_thread.run_sync(act)
    except InvalidValueError as exc:
        return error(422, str(exc))
    except UsageError as exc:
        return error(409 if "config" in str(exc) else 404, str(exc))
    except (redis.RedisError, OSError, StoreError) as exc:
        return _unavailable(exc)
    return JSONResponse({**entry.as_json(), "lifted": True}, headers=NO_STORE)


@allowed("sender")
async def record_response(request: Request) -> Response:
    """POST ``/api/consultations/{consultation}/responses`` with JSON ``{email, name?,
    organisation?, reference?, received?}``: 201 with the response when it is new (its
    acknowledgement queued, sent once), 200 with it when it was recorded before (nothing sent),
    422 naming each bad field, 404 for an unknown consultation."""
    consultation = request.path_params["consultation"]
    body = await _json_object(request)
    if isinstance(body, Response):
        return body
    desk = state(request).desk
    try:
        record = functools.partial(desk.record, actor=request.state.actor)  # the console user, or the API
        recorded = await anyio.to_thread.run_sync(record, consultation, body)
    except BadResponseError as exc:
        return error(422, "invalid response", problems=[p.message for p in exc.problems])
    except UsageError as exc:
        return error(404, str(exc))
    except ConfigError as exc:
        return error(409, "cannot acknowledge responses to this consultation: " + "; ".join(map(str, exc.problems)))
    except (redis.RedisError, OSError, StoreError, RedisUnavailable) as exc:
        return _unavailable(exc)
    answer = {**_response_json(recorded.response), "new": recorded.new, "acknowledging": recorded.acknowledging}
    return JSONResponse(answer, 201 if recorded.new else 200, headers=NO_STORE)


def _response_json(r: RecordedResponse) -> dict[str, object]:
    return {
        "id": r.id,
        "consultation": r.consultation,
        "email": r.email,
        "name": r.name,
        "organisation": r.organisation,
        "received": r.received.isoformat() if r.received else None,
        "reference": r.reference,
        "recorded_at": r.recorded_at.isoformat(),
        "acknowledged": r.acknowledged_at.isoformat() if r.acknowledged_at else None,
    }


def _fire_request(body: dict[str, Any]) -> tuple[str, bool, bool]:
    """``event``, ``early`` and ``again`` of a fire request; InvalidValueError naming a bad one."""
    event = body.get("event")
    if not isinstance(event, str) or not _EVENT.match(event) or len(event) > 64:
        raise InvalidValueError("event must be an event name: lower-case letters, digits, '-' and '_'")
    flags = {name: body.get(name, False) for name in ("early", "again")}
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise InvalidValueError(f"{name} must be true or false")
    return event, flags["early"], flags["again"]


@dataclass(frozen=True, slots=True)
class Fired:
    """What a fire request did: the occurrence, and whether this request started it."""

    occurrence: str | None
    new: bool


@allowed("sender")
async def fire(request: Request) -> Response:
    """POST ``/api/consultations/{consultation}/fire`` with ``{event, early?, again?}``: fire the
    event now, as ``notifier send`` does (warnings never stop it; a scheduled event before its
    time needs ``early``; one that fired already needs ``again``). 202 with the occurrence."""
    consultation = request.path_params["consultation"]
    body = await _json_object(request)
    if isinstance(body, Response):
        return body
    warnings: list[Problem] = []
    try:
        event, early, again = _fire_request(body)
        act = functools.partial(_fire, request, consultation, event, early=early, again=again, warnings=warnings)
        fired = await anyio.to_thread.run_sync(act)
    except InvalidValueError as exc:
        return error(422, str(exc))
    except TooEarlyError as exc:
        return error(409, str(exc).replace("Use --early", 'Send "early": true'))
    except UsageError as exc:
        return error(404 if str(exc).startswith("unknown consultation") else 422, str(exc))
    except ConfigError as exc:
        return error(422, f"{body.get('event')} cannot be sent", problems=[str(p) for p in exc.problems])
    except (redis.RedisError, OSError, StoreError, RedisUnavailable) as exc:
        return _unavailable(exc)
    answer = {"occurrence": fired.occurrence, "consultation": consultation, "event": event}
    notes = [str(w) for w in warnings]
    if not fired.new:
        message = f'{consultation} {event} already fired: nothing sent. Send "again": true for a new occurrence.'
        return error(409, message, **answer, warnings=notes)
    return JSONResponse({**answer, "warnings": notes}, 202, headers=NO_STORE)


def _fire(  # noqa: PLR0913 - the request's parts, keyword-only flags
    request: Request, consultation: str, event: str, *, early: bool, again: bool, warnings: list[Problem]
) -> Fired:
    """Fire through the app's Service (made on first use, as the response desk's)."""
    service = state(request).desk.service()
    service.config().consultation(consultation)  # an unknown consultation is a 404, not a 422
    started = service.fire(
        consultation, event, again=again, early=early, warn=warnings.append, actor=request.state.actor
    )
    if started is None:
        return Fired(service.ledger.fired(consultation, event), new=False)
    return Fired(started, new=True)


def errors_as_json(
    page: Callable[[Request, Exception], Awaitable[Response]],
) -> Callable[[Request, Exception], Awaitable[Response]]:
    """An exception handler answering JSON under ``/api/`` (an unknown path, a method not
    allowed) and ``page`` elsewhere; an unexpected error is logged with its traceback."""

    async def handle(request: Request, exc: Exception) -> Response:
        if not request.url.path.startswith("/api/"):
            return await page(request, exc)
        if isinstance(exc, HTTPException):
            headers = dict(exc.headers or {})
            return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers={**headers, **NO_STORE})
        if isinstance(exc, NotifierError):
            return error(422, str(exc))
        log.exception("API request %s %s failed", request.method, request.url.path, exc_info=exc)
        return error(500, "internal error: the service log has the details")

    return handle
