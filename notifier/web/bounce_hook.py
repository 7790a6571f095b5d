"""``POST /api/bounces``: Amazon SES bounce notifications, delivered by SNS.

No bearer token: SNS cannot send one. The SNS signature is the credential
(:mod:`notifier.sns`): an unsigned or forged message, or one whose signing certificate is
not Amazon's, is refused with 403 and changes nothing; so is one from a topic that
``NOTIFIER_SNS_TOPIC_ARNS`` (where set) does not name. Unset, any topic's bounce is believed,
but it can only bounce a delivery it names by its VERP address or Message-ID (which only
that delivery's recipient has seen). A signed subscription confirmation is
confirmed (its ``SubscribeURL`` fetched, only on an SNS host of Amazon's); a signed bounce
notification is recorded like a bounce read from a mailbox (:class:`notifier.bounces.BounceBook`).

A bounce can arrive before its delivery's outcome reaches the record (outcomes wait in Redis
for an archiver, :mod:`notifier.archive`). When its VERP id is ours but the record does not
hold the delivery yet, the hook archives what is waiting and looks again, for at most
:data:`SETTLE_S`; still not there, it answers 503 (with ``Retry-After``), so SNS delivers it
again later rather than the bounce being lost.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import anyio.to_thread
import httpx
import redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from notifier.bounces import Bounce, BounceBook, Recorded, from_ses
from notifier.errors import BadSignatureError, StoreError
from notifier.sns import TRUSTED_CERT_VARIABLE, SnsVerifier, amazon_url
from notifier.web.state import describe, state

log = logging.getLogger(__name__)

MAX_BODY = 256 * 1024  # SNS messages are at most 256 KB
#: The SNS topics whose messages are believed (comma-separated ARNs); unset: any topic's.
TOPICS_VARIABLE = "NOTIFIER_SNS_TOPIC_ARNS"
#: How long a bounce waits for its delivery's outcome to reach the record before a 503.
SETTLE_S = 5.0
#: What a 503 asks SNS to wait before delivering the notification again (seconds).
RETRY_AFTER_S = 30


def _verifier(request: Request) -> SnsVerifier:
    """The app's verifier (its certificates kept between requests), made on first use."""
    found = getattr(request.app.state, "sns", None)
    if not isinstance(found, SnsVerifier):
        found = SnsVerifier(state(request).desk.settings.env.get(TRUSTED_CERT_VARIABLE))
        request.app.state.sns = found
    return found


async def _message(request: Request) -> dict[str, Any] | None:
    body = await request.body()
    if len(body) > MAX_BODY:
        return None
    try:
        message = json.loads(body)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


async def sns_bounces(request: Request) -> Response:
    """Record the bounce a signed SNS notification carries (see the module doc)."""
    message = await _message(request)
    if message is None:
        return JSONResponse({"error": "the body must be an SNS message (JSON)"}, 400)
    try:
        await _verifier(request).verify(message)
        _check_topic(request, message)
    except BadSignatureError as exc:
        log.warning("refused an SNS message: %s", exc)
        return JSONResponse({"error": f"refused: {exc}"}, 403)
    if message["Type"] == "SubscriptionConfirmation":
        return await _confirm(str(message.get("SubscribeURL", "")))
    if message["Type"] != "Notification":
        return JSONResponse({"recorded": None})
    try:
        notification = json.loads(message["Message"])
    except ValueError:
        return JSONResponse({"error": "the notification's Message is not JSON"}, 400)
    bounce = from_ses(notification) if isinstance(notification, dict) else None
    if bounce is None:
        return JSONResponse({"recorded": None})
    web = state(request)
    if web.store is None:
        return JSONResponse({"error": "the consultation record is not open"}, 503)
    book = BounceBook(web.ledger, web.store, web.key)
    try:
        recorded = await anyio.to_thread.run_sync(_record_settled, request, book, bounce)
    except (redis.RedisError, StoreError) as exc:
        return JSONResponse({"error": f"unavailable: {describe(exc)}"}, 503)  # SNS delivers it again later
    if recorded.result == "pending":
        return JSONResponse(
            {"error": "the bounced delivery's outcome is not in the record yet: deliver this again later"},
            503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return JSONResponse({"recorded": recorded.result})


def _record_settled(request: Request, book: BounceBook, bounce: Bounce) -> Recorded:
    """Record ``bounce``; while it names a delivery of ours not in the record yet, archive the
    outcomes waiting in Redis (as ``notifier bounces import`` does) and try again, for at
    most :data:`SETTLE_S`."""
    deadline = time.monotonic() + SETTLE_S
    recorded = book.record(bounce)
    while recorded.result == "pending" and time.monotonic() < deadline:
        archiver = state(request).desk.service().runtime.archiver()
        if archiver is not None:
            archiver.drain()
        recorded = book.record(bounce)
        if recorded.result == "pending":
            time.sleep(0.1)  # another process' archiver holds it: let it finish
    return recorded


def _check_topic(request: Request, message: dict[str, Any]) -> None:
    """BadSignatureError when ``NOTIFIER_SNS_TOPIC_ARNS`` is set and does not name the message's
    topic: anyone can make a topic, and SNS signs its messages too."""
    allowed = state(request).desk.settings.env.get(TOPICS_VARIABLE, "")
    topics = {t.strip() for t in allowed.split(",") if t.strip()}
    if topics and message.get("TopicArn") not in topics:
        raise BadSignatureError(f"topic {message.get('TopicArn')!r} is not in {TOPICS_VARIABLE}")


async def _confirm(url: str) -> Response:
    """Confirm an SNS subscription to this endpoint."""
    if not amazon_url(url):
        return JSONResponse({"error": "the SubscribeURL is not on an SNS host of Amazon's"}, 400)
    try:
        async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
            (await client.get(url)).raise_for_status()
    except httpx.HTTPError as exc:
        return JSONResponse({"error": f"could not confirm the subscription: {exc}"}, 502)
    return JSONResponse({"confirmed": True})
