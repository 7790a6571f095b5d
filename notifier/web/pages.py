"""The public pages: unsubscribe and resubscribe by token, the index, and error pages.

The token in the URL is the only credential (see :mod:`notifier.tokens`): it names one
address, encrypted and authenticated with ``NOTIFIER_SECRET_KEY``, so an invalid, altered,
truncated or forged token gets a 400 page and changes nothing. Addresses are masked in
pages and logs.

No CSRF token on the POSTs, on purpose. The token in the URL is the capability: only
someone who has the e-mail (or the link from it) can make a valid request, and it can only
do one reversible thing to the one address it names. A cross-site attacker would need that
token already; a mail provider's RFC 8058 one-click POST carries no cookies or page state,
so a CSRF token would break it. Clickjacking is prevented by ``frame-ancestors 'none'`` and
``X-Frame-Options: DENY``. The body (RFC 8058: ``List-Unsubscribe=One-Click``, form-encoded
or multipart) is not required: a POST with a valid token is the request, however encoded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio.to_thread
import redis
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from notifier.archive import REASONS
from notifier.errors import BadToken, StoreError
from notifier.tokens import verify
from notifier.web.render import render
from notifier.web.state import WebState, describe, mask_email, state

log = logging.getLogger(__name__)

UNSUBSCRIBED = "unsubscribed"


def _suppression(web: WebState, email: str) -> str | None:
    reason = web.ledger.suppression(email)
    if reason is None and web.store is not None:  # Redis may have lost it (a FLUSHALL): the record has not
        found = web.store.suppression(email)
        if found is not None and found.source != "config":
            reason = found.detail or REASONS.get(found.source, found.source)
    return reason


def _suppress(web: WebState, email: str) -> None:
    # Keep an existing entry (a bounce, or an earlier unsubscribe and its time). The record
    # first: an unsubscribe must outlive Redis (a FLUSHALL puts it back from there).
    if web.store is not None and web.store.suppression(email) is None:
        web.store.suppress(email, "unsubscribe")
    if web.ledger.suppression(email) is None:
        web.ledger.suppress(email, UNSUBSCRIBED)
    log.info("unsubscribed %s", mask_email(email))


def _unsuppress(web: WebState, email: str) -> None:
    lifted = web.store.unsuppress(email) if web.store is not None else False
    if web.ledger.unsuppress(email) or lifted:
        log.info("resubscribed %s", mask_email(email))


async def _for_address(
    request: Request, doing: str, act: Callable[[WebState, str], str | None], template: str
) -> Response:
    """The shape of every token page: check the token, do ``act`` on its address in Redis
    and the record (off the event loop), then show ``template`` with the token, the address
    and what ``act`` returned (as ``reason``); a bad token, or Redis or the database out,
    gets its own page."""
    web = state(request)
    token = request.path_params["token"]
    try:
        email = verify(web.key, token)
    except BadToken:
        return render(request, "invalid_link.html", status=400)
    try:
        reason = await anyio.to_thread.run_sync(act, web, email)
    except (redis.RedisError, OSError, StoreError) as exc:
        what = "the database" if isinstance(exc, StoreError) else "Redis"
        log.error("%s of %s failed: %s unavailable: %s", doing, mask_email(email), what, describe(exc))
        return render(request, "unavailable.html", status=503, headers={"Retry-After": "60"})
    return render(request, template, token=token, email=email, reason=reason)


async def unsubscribe_form(request: Request) -> Response:
    """GET (and HEAD) ``/unsubscribe/{token}``: only shows a page, because link scanners and
    mail clients prefetch links and must not unsubscribe anyone."""
    return await _for_address(request, "unsubscribe page", _suppression, "unsubscribe.html")


async def unsubscribe(request: Request) -> Response:
    """POST ``/unsubscribe/{token}``: RFC 8058 one-click, or the page's button."""
    return await _for_address(request, "unsubscribe", _suppress, "unsubscribed.html")


async def resubscribe(request: Request) -> Response:
    """POST ``/resubscribe/{token}``: undoes an unsubscribe (or a bounce's suppression)."""
    return await _for_address(request, "resubscribe", _unsuppress, "resubscribed.html")


async def index(request: Request) -> Response:
    """GET ``/``: a short page saying what this service is."""
    return render(request, "index.html")


async def http_error(request: Request, exc: Exception) -> Response:
    """Every error as a page: 404, 405 (with its ``Allow``), anything else a 500-ish page."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 405:
        headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
        return render(request, "error.html", status=405, headers=headers, code=405)
    if status != 404:
        status = status if status >= 400 else 500
    return render(request, "error.html", status=status, code=status)
