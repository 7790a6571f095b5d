"""The admin JSON API under ``/api/``: only with ``Authorization: Bearer $NOTIFIER_ADMIN_TOKEN``.

Without that setting the API is off (404). Every handler is wrapped in :func:`bearer_required`,
so a new endpoint cannot forget the check.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable

import anyio.to_thread
import redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from notifier import report as reporting
from notifier.errors import BadResponseError, ConfigError, StoreError, UsageError
from notifier.store import Response as RecordedResponse
from notifier.web.state import describe, state

Handler = Callable[[Request], Awaitable[Response]]
NO_STORE = {"Cache-Control": "no-store"}


def refusal(request: Request) -> Response | None:
    """The response refusing ``request`` (404 with the API off, 401 without the right bearer
    token), or None when it may go on. The token is compared in constant time."""
    admin_token = state(request).admin_token
    if not admin_token:
        return JSONResponse({"error": "the admin API is off: set NOTIFIER_ADMIN_TOKEN to use it"}, 404)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), admin_token.encode()):
        return JSONResponse(
            {"error": "a valid 'Authorization: Bearer <NOTIFIER_ADMIN_TOKEN>' is required"},
            401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return None


def bearer_required(handler: Handler) -> Handler:
    """``handler``, answered only when :func:`refusal` lets the request through."""

    @functools.wraps(handler)
    async def guarded(request: Request) -> Response:
        refused = refusal(request)
        return refused if refused is not None else await handler(request)

    return guarded


def _unavailable(exc: BaseException) -> Response:
    what = "the database" if isinstance(exc, StoreError) else "Redis"
    return JSONResponse({"error": f"{what} unavailable: {describe(exc)}"}, 503)


@bearer_required
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
        return JSONResponse({"error": f"nothing recorded for {consultation!r}"}, 404)
    return JSONResponse(found.as_json(), headers=NO_STORE)


@bearer_required
async def suppressions(request: Request) -> Response:
    """GET ``/api/suppressions``: every suppressed address and why, sorted by address."""
    try:
        entries = await anyio.to_thread.run_sync(state(request).ledger.suppressed)
    except (redis.RedisError, OSError) as exc:
        return _unavailable(exc)
    rows = [{"email": email, "reason": reason} for email, reason in sorted(entries.items())]
    return JSONResponse({"suppressed": rows}, headers=NO_STORE)


@bearer_required
async def record_response(request: Request) -> Response:
    """POST ``/api/consultations/{consultation}/responses`` with JSON ``{email, name?,
    organisation?, reference?, received?}``: 201 with the response when it is new (its
    acknowledgement queued, sent once), 200 with it when it was recorded before (nothing sent),
    422 naming each bad field, 404 for an unknown consultation."""
    consultation = request.path_params["consultation"]
    try:
        body = await request.json()
    except ValueError:
        return JSONResponse({"error": 'the body must be JSON: {"email": ...}'}, 422)
    desk = state(request).desk
    try:
        recorded = await anyio.to_thread.run_sync(desk.record, consultation, body)
    except BadResponseError as exc:
        return JSONResponse({"error": "invalid response", "problems": [p.message for p in exc.problems]}, 422)
    except UsageError as exc:
        return JSONResponse({"error": str(exc)}, 404)
    except ConfigError as exc:
        return JSONResponse(
            {"error": "cannot acknowledge responses to this consultation: " + "; ".join(map(str, exc.problems))}, 500
        )
    except (redis.RedisError, OSError, StoreError) as exc:
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
