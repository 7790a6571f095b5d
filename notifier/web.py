"""``notifier web``: the HTTP service: unsubscribe pages, health and metrics.

Routes
======

``GET /unsubscribe/{token}``
    A confirmation page with an "Unsubscribe" button. A GET never changes anything: link
    scanners and mail clients prefetch links, and must not unsubscribe people.
``POST /unsubscribe/{token}``
    RFC 8058 one-click unsubscribe (a mail provider posting ``List-Unsubscribe=One-Click``)
    or the page's button: the address is suppressed with reason ``unsubscribed``.
``POST /resubscribe/{token}``
    Undoes it: the way back offered on every "you are unsubscribed" page.
``GET /healthz``
    JSON about Redis, workers and the scheduler; 503 when Redis does not answer, or when
    something named in ``?require=workers,scheduler`` is missing (for container healthchecks).
``GET /metrics``
    A small Prometheus text exposition.
``GET /``
    A short page saying what this service is.
``GET /api/consultations/{id}/report[?event=NAME]``, ``GET /api/suppressions``
    The admin API: the same JSON as ``notifier report --format json``, and the suppression
    list. Only with ``Authorization: Bearer $NOTIFIER_ADMIN_TOKEN``; without that setting
    the admin API is off (404).

The token in the URL is the only credential (see :mod:`notifier.tokens`): it names one
address, encrypted and authenticated with ``NOTIFIER_SECRET_KEY``, so an invalid, altered, truncated or
forged token gets a 400 page and changes nothing. Every value put into a page is escaped,
tokens are kept out of the access log, and addresses are masked in pages and logs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import html
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any

import anyio
import anyio.to_thread
import h11
import redis
import uvicorn
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from notifier import __version__
from notifier import report as reporting
from notifier.broker import NAMESPACE, redis_url, workers_alive
from notifier.config import Settings, read_yaml
from notifier.errors import ConfigError, Problem
from notifier.ledger import Ledger
from notifier.redaction import redact
from notifier.tokens import BadToken, verify

log = logging.getLogger(__name__)

#: The Redis key a scheduler holds while it is the leader (its id as the value).
LEADER_KEY = f"{NAMESPACE}:scheduler:leader"
#: Socket timeout for Redis calls made by the web service: a page or healthcheck never hangs.
REDIS_TIMEOUT_S = 2.0
#: Hard limit on one /healthz, whatever the network does (DNS included).
HEALTH_DEADLINE_S = 3.0
#: What ``?require=`` may name.
REQUIRABLE = ("redis", "workers", "scheduler")
UNSUBSCRIBED = "unsubscribed"


# ---------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------

# Colours: #0b0c0c on #fff (19:1); white on #00703c buttons (5.7:1); a yellow and black focus
# ring visible on both. Text is at least 19px, and the layout works from 320px up.
_STYLE = """
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;
font-size:1.1875rem;line-height:1.5;color:#0b0c0c;background:#fff}
header{background:#0b0c0c;color:#fff;padding:.75rem 1rem}
header p{margin:0;max-width:40rem;margin-inline:auto;font-weight:600}
main{max-width:40rem;margin:0 auto;padding:1.5rem 1rem 3rem}
h1{font-size:2rem;line-height:1.2;margin:0 0 1.25rem}
h2{font-size:1.5rem;margin:2rem 0 .75rem}
button{font:inherit;font-weight:600;color:#fff;background:#00703c;border:2px solid transparent;
border-radius:0;box-shadow:0 2px 0 #002d18;padding:.5rem 1rem;cursor:pointer;min-height:44px}
button:hover{background:#005a30}
button:focus-visible{outline:3px solid #fd0;outline-offset:0;box-shadow:inset 0 0 0 1px #fd0,0 4px 0 #0b0c0c;
color:#0b0c0c;background:#fd0}
a{color:#1d4ed8}a:focus-visible{outline:3px solid #fd0;background:#fd0;color:#0b0c0c}
.address{font-weight:600;word-break:break-all}
.hint{color:#383f43}
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
#: Nothing but our own inline style may load, forms post only to us, and no other site may
#: frame the pages (so no one can overlay our buttons to trick a click).
CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
#: Headers on every page: not cached (the state changes), not indexed, and the URL (which
#: holds the token) never sent on as a Referer.
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex, nofollow",
}


def e(value: object) -> str:
    """``value`` as text safe anywhere in HTML, attributes included."""
    return html.escape(str(value), quote=True)


def mask_email(email: str) -> str:
    """``jane.smith@telford.example`` -> ``j***@telford.example``.

    The page must let people recognise which of their addresses the link is for, so the
    first character and the domain stay; the rest of the local part is hidden so the full
    address is not shown on a shared screen, in a screenshot or in our logs. (This is
    courtesy, not secrecy: whoever holds the link holds the token, which encodes the
    address.) Always three stars, so the length is not given away either.
    """
    local, at, domain = email.rpartition("@")
    if not at:
        return f"{email[:1]}***"
    return f"{local[:1]}***@{domain}"


@dataclass(frozen=True, slots=True)
class Branding:
    """What pages say about who we are: the organisation and a contact address, if known."""

    organisation: str | None = None
    contact: str | None = None

    @classmethod
    def load(cls, settings: Settings) -> Branding:
        """From ``notifier.yaml`` only (not lists or consultations, which a page never needs:
        a mistake in one of those must not take the unsubscribe page down). Empty if unreadable."""
        problems: list[Problem] = []
        data, _ = read_yaml(settings.config_dir / "notifier.yaml", problems)
        if not isinstance(data, dict):
            log.warning("web pages will not name the organisation: %s", "; ".join(map(str, problems)) or
                        "notifier.yaml is not a mapping")
            return cls()
        organisation = data.get("organisation")
        sender = data.get("email")
        email: dict[str, Any] = sender if isinstance(sender, dict) else {}
        contact = email.get("reply_to") or parseaddr(str(email.get("from") or ""))[1] or None
        name = organisation.strip() if isinstance(organisation, str) else ""
        return cls(organisation=name or None, contact=str(contact) if contact else None)

    @property
    def who(self) -> str:
        """The organisation's name, or a neutral stand-in."""
        return self.organisation or "us"


def page(
    title: str, body: str, brand: Branding, *, status: int = 200, headers: dict[str, str] | None = None
) -> HTMLResponse:
    """A complete, accessible HTML page. ``title`` is escaped here; ``body`` must be escaped already."""
    org = brand.organisation
    banner = f'<header><p>{e(org)}</p></header>\n' if org else ""
    document = f"""<!DOCTYPE html>
<html lang="en-GB">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>{e(title)}{" – " + e(org) if org else ""}</title>
<style>{_STYLE}</style>
</head>
<body>
{banner}<main id="main">
{body}
</main>
</body>
</html>
"""
    return HTMLResponse(document, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})


def _form(action: str, button: str, heading_id: str, *, hidden: dict[str, str] | None = None) -> str:
    """A POST form with one clearly labelled button. ``action`` is relative (see :func:`_links`)."""
    fields = "".join(f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in (hidden or {}).items())
    return (
        f'<form method="post" action="{e(action)}" aria-labelledby="{e(heading_id)}">{fields}'
        f'<button type="submit">{e(button)}</button></form>'
    )


def _links(token: str) -> tuple[str, str]:
    """Form actions for this token, relative to ``/unsubscribe/<token>`` and ``/resubscribe/<token>``
    (both two levels deep), so they keep working behind a proxy that serves us under a prefix."""
    return f"../unsubscribe/{token}", f"../resubscribe/{token}"


def _contact(brand: Branding) -> str:
    if not brand.contact:
        return ""
    address = e(brand.contact)
    return f'<p class="hint">Questions? Write to <a href="mailto:{address}">{address}</a>.</p>'


def confirm_page(token: str, email: str, reason: str | None, brand: Branding) -> HTMLResponse:
    """GET: ask before unsubscribing; or, when already suppressed, say so and offer the way back."""
    unsubscribe, resubscribe = _links(token)
    who, address = e(brand.who), f'<span class="address">{e(mask_email(email))}</span>'
    if reason is None:
        body = (
            '<h1 id="action">Unsubscribe from consultation e-mails</h1>'
            f"<p>Stop e-mails from {who} about public consultations to {address}?</p>"
            '<p class="hint">Only part of the address is shown, to keep it private. '
            "It is the address this link was sent to.</p>"
            + _form(unsubscribe, "Unsubscribe", "action", hidden={"List-Unsubscribe": "One-Click"})
            + _contact(brand)
        )
        return page("Unsubscribe", body, brand)
    if reason == UNSUBSCRIBED:
        heading = "You are already unsubscribed"
        why = f"<p>{address} does not get e-mails from {who} about public consultations.</p>"
    else:
        heading = "We are not e-mailing this address"
        why = (
            f"<p>{address} does not get e-mails from {who} about public consultations, "
            "because earlier messages to it could not be delivered.</p>"
        )
    body = (
        f'<h1 id="state">{e(heading)}</h1>{why}'
        '<h2 id="action">Want them again?</h2>'
        + _form(resubscribe, "Resubscribe", "action")
        + _contact(brand)
    )
    return page(heading, body, brand)


def unsubscribed_page(token: str, email: str, brand: Branding) -> HTMLResponse:
    """POST /unsubscribe: confirmation, with a resubscribe button in case it was a mistake."""
    _, resubscribe = _links(token)
    body = (
        '<h1 id="done">You have been unsubscribed</h1>'
        f'<p>We will not e-mail <span class="address">{e(mask_email(email))}</span> '
        f"about public consultations from {e(brand.who)} again.</p>"
        '<h2 id="action">Unsubscribed by mistake?</h2>'
        + _form(resubscribe, "Resubscribe", "action")
        + _contact(brand)
    )
    return page("You have been unsubscribed", body, brand)


def resubscribed_page(token: str, email: str, brand: Branding) -> HTMLResponse:
    """POST /resubscribe: confirmation, with an unsubscribe button to change one's mind again."""
    unsubscribe, _ = _links(token)
    body = (
        '<h1 id="done">You have been resubscribed</h1>'
        f'<p><span class="address">{e(mask_email(email))}</span> will get e-mails '
        f"about public consultations from {e(brand.who)} again.</p>"
        '<h2 id="action">Changed your mind?</h2>'
        + _form(unsubscribe, "Unsubscribe", "action", hidden={"List-Unsubscribe": "One-Click"})
        + _contact(brand)
    )
    return page("You have been resubscribed", body, brand)


def invalid_link_page(brand: Branding) -> HTMLResponse:
    """400 for a token that is not ours. Says nothing about why and reflects nothing back."""
    body = (
        "<h1>This link is not valid</h1>"
        "<p>The link may have been copied wrongly or cut short. Nothing has been changed.</p>"
        "<p>Try again with the whole link from the e-mail, or reply to the e-mail and ask "
        "to be unsubscribed.</p>"
        + _contact(brand)
    )
    return page("Link not valid", body, brand, status=400)


def unavailable_page(brand: Branding) -> HTMLResponse:
    """503 while Redis is unreachable: nothing was changed; a mail provider will retry."""
    body = (
        "<h1>Sorry, there is a problem with this service</h1>"
        "<p>Nothing has been changed. Please try again in a few minutes.</p>" + _contact(brand)
    )
    return page("Service unavailable", body, brand, status=503, headers={"Retry-After": "60"})


# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def bounded_client(client: redis.Redis, timeout: float = REDIS_TIMEOUT_S) -> redis.Redis:
    """A client on the same server and db as ``client`` whose calls fail within ``timeout``
    seconds and are not retried: for health checks, which must answer quickly either way."""
    pool = client.connection_pool
    kwargs = {
        **pool.connection_kwargs,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": _no_retry(),
    }
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


def _client_for(settings: Settings) -> redis.Redis:
    """A client on the configured Redis (the embedded one is started if needed), with short
    timeouts and one quick retry (enough for a pooled connection that a Redis restart broke),
    so a visitor waits seconds, not minutes, when Redis is down. Not pinged: the service
    starts and reports Redis down rather than failing."""
    return redis.Redis.from_url(
        redis_url(settings),
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        health_check_interval=30,
        retry=Retry(ExponentialWithJitterBackoff(cap=0.25, base=0.01), 1),
    )


def _decode(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def health(client: redis.Redis) -> dict[str, Any]:
    """Ping Redis and read who is alive. Blocking; at most ~2 timeouts long with a bounded client."""
    report = _unknown(None)
    try:
        started = time.perf_counter()
        client.ping()
        report["redis"] = {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
        alive = sorted(workers_alive(client))
        report["workers"] = {"alive": alive, "count": len(alive)}
        report["scheduler"] = {"leader": _decode(client.get(LEADER_KEY))}
    except (redis.RedisError, OSError) as exc:
        report["redis"]["error"] = _describe(exc)
    return report


def _unknown(error: str | None) -> dict[str, Any]:
    """A health report for when Redis did not answer: nobody known to be alive."""
    redis_part: dict[str, Any] = {"ok": False, "latency_ms": None}
    if error:
        redis_part["error"] = error
    return {"redis": redis_part, "workers": {"alive": [], "count": 0}, "scheduler": {"leader": None}}


def _describe(exc: BaseException) -> str:
    """A short description of a Redis error, without anything that could be a credential."""
    text = redact(str(exc))[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------


def create_app(settings: Settings, *, client: redis.Redis | None = None) -> Starlette:
    """The Starlette app: unsubscribe pages, ``/healthz``, ``/metrics`` and ``/``.

    ``client`` is used for the ledger when given (``notifier run`` shares its own); otherwise
    one is made for the configured Redis and closed at shutdown. Raises ConfigError when
    there is no secret key (``NOTIFIER_SECRET_KEY`` with an external Redis).
    """
    key = settings.secret_key()
    owned = client is None
    main = _client_for(settings) if client is None else client
    checker = bounded_client(main)
    ledger = Ledger(main)
    counting = Ledger(checker)  # for /metrics: bounded like the health checks
    brand = Branding.load(settings)

    def verified(request: Request) -> str | None:
        try:
            return verify(key, request.path_params["token"])
        except BadToken:
            return None

    async def for_address(
        request: Request, doing: str, act: Callable[[str], Any], page: Callable[[str, str, Any], Response]
    ) -> Response:
        """The shape of every token page: check the token, do ``act`` on its address in Redis
        (off the event loop), then show ``page``; a bad token or a Redis outage gets its page."""
        email = verified(request)
        if email is None:
            return invalid_link_page(brand)
        try:
            result = await anyio.to_thread.run_sync(act, email)
        except (redis.RedisError, OSError) as exc:
            log.error("%s of %s failed: Redis unavailable: %s", doing, mask_email(email), _describe(exc))
            return unavailable_page(brand)
        return page(request.path_params["token"], email, result)

    async def unsubscribe_form(request: Request) -> Response:
        # GET (and HEAD) only show a page: prefetchers and link scanners must not unsubscribe.
        return await for_address(
            request, "unsubscribe page", ledger.suppression,
            lambda token, email, reason: confirm_page(token, email, reason, brand),
        )

    # No CSRF token on these POSTs, on purpose. The signed token in the URL is the
    # capability: only someone who has the e-mail (or the link from it) can make a valid
    # request, and it can only do one reversible thing to the one address it names. A
    # cross-site attacker would need that token already; a mail provider's RFC 8058
    # one-click POST carries no cookies or page state, so a CSRF token would break it.
    # Clickjacking is prevented by frame-ancestors 'none' / X-Frame-Options: DENY.
    # The body (RFC 8058: "List-Unsubscribe=One-Click", form-encoded or multipart) is not
    # required: a POST with a valid token is the request, however it is encoded.
    def suppress(email: str) -> None:
        # Keep an existing entry (a bounce, or an earlier unsubscribe and its time).
        if ledger.suppression(email) is None:
            ledger.suppress(email, UNSUBSCRIBED)
        log.info("unsubscribed %s", mask_email(email))

    def unsuppress(email: str) -> None:
        if ledger.unsuppress(email):
            log.info("resubscribed %s", mask_email(email))

    async def unsubscribe(request: Request) -> Response:
        return await for_address(
            request, "unsubscribe", suppress, lambda token, email, _: unsubscribed_page(token, email, brand)
        )

    async def resubscribe(request: Request) -> Response:
        return await for_address(
            request, "resubscribe", unsuppress, lambda token, email, _: resubscribed_page(token, email, brand)
        )

    async def healthz(request: Request) -> Response:
        required = {
            name.strip()
            for value in request.query_params.getlist("require")
            for name in value.split(",")
            if name.strip()
        }
        unknown = sorted(required - set(REQUIRABLE))
        if unknown:
            return JSONResponse(
                {"error": f"unknown in require: {', '.join(unknown)} (known: {', '.join(REQUIRABLE)})"},
                status_code=400,
            )
        try:
            with anyio.fail_after(HEALTH_DEADLINE_S):
                report = await anyio.to_thread.run_sync(health, checker, abandon_on_cancel=True)
        except TimeoutError:
            report = _unknown(f"no answer within {HEALTH_DEADLINE_S:g} s")
        failing = []
        if not report["redis"]["ok"]:
            failing.append("redis")
        if "workers" in required and not report["workers"]["count"]:
            failing.append("workers")
        if "scheduler" in required and not report["scheduler"]["leader"]:
            failing.append("scheduler")
        body = {"status": "fail" if failing else "ok", "failing": failing, "version": __version__, **report}
        return JSONResponse(body, status_code=503 if failing else 200, headers={"Cache-Control": "no-store"})

    async def metrics(request: Request) -> Response:
        def collect() -> tuple[dict[str, Any], dict[str, int]]:
            report = health(checker)
            by_reason: dict[str, int] = {}
            if report["redis"]["ok"]:
                for reason in counting.suppressed().values():
                    by_reason[reason] = by_reason.get(reason, 0) + 1
            return report, by_reason

        try:
            with anyio.fail_after(HEALTH_DEADLINE_S):
                report, by_reason = await anyio.to_thread.run_sync(collect, abandon_on_cancel=True)
        except (TimeoutError, redis.RedisError, OSError):
            report, by_reason = _unknown("no answer"), {}
        return PlainTextResponse(
            exposition(report, by_reason),
            media_type="text/plain; version=0.0.4; charset=utf-8",
            headers={"Cache-Control": "no-store"},
        )

    admin_token = settings.env.get("NOTIFIER_ADMIN_TOKEN") or ""

    def admin_refusal(request: Request) -> Response | None:
        if not admin_token:
            return JSONResponse({"error": "the admin API is off: set NOTIFIER_ADMIN_TOKEN to use it"}, 404)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), admin_token.encode()):
            return JSONResponse({"error": "a valid 'Authorization: Bearer <NOTIFIER_ADMIN_TOKEN>' is required"},
                                401, headers={"WWW-Authenticate": "Bearer"})
        return None

    async def api_report(request: Request) -> Response:
        refused = admin_refusal(request)
        if refused:
            return refused
        consultation = request.path_params["consultation"]
        event = request.query_params.get("event")
        try:
            found = await anyio.to_thread.run_sync(lambda: reporting.build(ledger, consultation, event=event))
        except (redis.RedisError, OSError) as exc:
            return JSONResponse({"error": f"Redis unavailable: {_describe(exc)}"}, 503)
        if not found.summary:
            return JSONResponse({"error": f"nothing recorded for {consultation!r}"}, 404)
        return JSONResponse(found.as_json(), headers={"Cache-Control": "no-store"})

    async def api_suppressions(request: Request) -> Response:
        refused = admin_refusal(request)
        if refused:
            return refused
        try:
            entries = await anyio.to_thread.run_sync(ledger.suppressed)
        except (redis.RedisError, OSError) as exc:
            return JSONResponse({"error": f"Redis unavailable: {_describe(exc)}"}, 503)
        rows = [{"email": email, "reason": reason} for email, reason in sorted(entries.items())]
        return JSONResponse({"suppressed": rows}, headers={"Cache-Control": "no-store"})

    async def index(request: Request) -> Response:
        body = (
            f"<h1>{e(brand.organisation or 'Consultation notices')}</h1>"
            "<p>This service handles the unsubscribe links in our e-mails about public "
            "consultations. To stop those e-mails, use the link at the foot of any of them.</p>"
            + _contact(brand)
        )
        return page("Consultation notices", body, brand)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 404:
            body = "<h1>Page not found</h1><p>If you typed the web address, check it is correct.</p>"
            return page("Page not found", body, brand, status=404)
        if status == 405:
            body = "<h1>Not allowed</h1><p>This page cannot be used that way.</p>"
            headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
            return page("Not allowed", body, brand, status=405, headers=headers)
        body = "<h1>Sorry, there is a problem with this service</h1><p>Please try again later.</p>"
        return page("Error", body, brand, status=status if status >= 400 else 500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.info("web service ready (Redis timeouts %.0fs)", REDIS_TIMEOUT_S)
        try:
            yield
        finally:
            checker.close()
            if owned:
                main.close()

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/unsubscribe/{token}", unsubscribe_form, methods=["GET"]),
        Route("/unsubscribe/{token}", unsubscribe, methods=["POST"]),
        Route("/resubscribe/{token}", resubscribe, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/api/consultations/{consultation}/report", api_report, methods=["GET"]),
        Route("/api/suppressions", api_suppressions, methods=["GET"]),
    ]
    handlers = {HTTPException: http_error, Exception: http_error}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.ledger = ledger
    return app


def exposition(report: dict[str, Any], suppressed: dict[str, int]) -> str:
    """Prometheus text format (0.0.4) for a :func:`health` report and suppression counts."""
    lines = [
        "# HELP notifier_redis_up Whether Redis answered the last ping (1) or not (0).",
        "# TYPE notifier_redis_up gauge",
        f"notifier_redis_up {1 if report['redis']['ok'] else 0}",
    ]
    if report["redis"]["ok"]:
        lines += [
            "# HELP notifier_redis_latency_seconds Round trip of a Redis PING.",
            "# TYPE notifier_redis_latency_seconds gauge",
            f"notifier_redis_latency_seconds {report['redis']['latency_ms'] / 1000:.6f}",
            "# HELP notifier_workers_alive Workers that sent a heartbeat recently.",
            "# TYPE notifier_workers_alive gauge",
            f"notifier_workers_alive {report['workers']['count']}",
            "# HELP notifier_scheduler_leader Whether a scheduler holds the leader lock.",
            "# TYPE notifier_scheduler_leader gauge",
            f"notifier_scheduler_leader {1 if report['scheduler']['leader'] else 0}",
            "# HELP notifier_suppressed_addresses Addresses no e-mail goes to, by reason.",
            "# TYPE notifier_suppressed_addresses gauge",
        ]
        for reason in sorted(suppressed):
            label = reason.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            lines.append(f'notifier_suppressed_addresses{{reason="{label}"}} {suppressed[reason]}')
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------

class RedactTokens(logging.Filter):
    """Passes access-log lines through :func:`notifier.redaction.redact`.

    A token is a capability (it unsubscribes someone), so it must not end up in log files
    or log shippers, under whatever path or spelling it was requested.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record's arguments and message in place; always keep the record."""
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


_redact = RedactTokens()


_BIND = re.compile(r"\[(?P<v6>[0-9A-Fa-f:.]+)\]:(?P<p6>\d{1,5})|(?P<host>[^:\s\[\]]+):(?P<port>\d{1,5})")


def parse_bind(value: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` (``NOTIFIER_WEB_BIND``) -> (host, port); ConfigError if not."""
    match = _BIND.fullmatch(value.strip())
    port = int(match.group("p6") or match.group("port")) if match else -1
    if not match or port > 65535:
        raise ConfigError([Problem.at(
            "NOTIFIER_WEB_BIND", None, f"must be HOST:PORT (e.g. 0.0.0.0:8080), not {value!r}"
        )])
    return (match.group("v6") or match.group("host")), port


HEAD_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How long and how much a client may hold the web service (defaults for production).

    Without these a client that connects and says nothing, or sends its headers a byte at a
    time, keeps a connection (and a file descriptor) for ever: uvicorn itself only times out
    an idle keep-alive connection after a response, and a trickled byte resets that timer.
    """

    #: Seconds from connecting (or from the last response) until a request's headers are in.
    head_timeout: float = HEAD_TIMEOUT_S
    #: Seconds an idle keep-alive connection is kept after a response (uvicorn's own timer).
    keep_alive: int = 5
    #: Open connections and requests in progress; beyond it, 503 and the connection closed.
    concurrency: int = 200
    #: Largest request head (request line and headers) in bytes; beyond it, 400.
    max_head_bytes: int = 16 * 1024


class _HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose next request head does not arrive
    within ``head_timeout`` of its connecting or of its last response, however slowly
    bytes keep coming (a deadline, not an idle timer)."""

    head_timeout: float = HEAD_TIMEOUT_S
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the deadline for the first request's head."""
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Parse as uvicorn does; the deadline ends once a whole request head is in."""
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def on_response_complete(self) -> None:
        """The next request's head is due within the deadline too."""
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the deadline with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.head_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()


def make_server(
    settings: Settings, *, client: redis.Redis | None = None, limits: ConnectionLimits | None = None
) -> uvicorn.Server:
    """A uvicorn server for :func:`create_app` on ``settings.web_bind``, not started.

    Run it with ``server.run()`` (in any thread; it handles SIGINT/SIGTERM itself only in
    the main thread) and stop it with ``server.should_exit = True``: it stops accepting,
    lets requests in progress finish (up to 10 s) and closes its Redis clients. ``limits``
    bounds what a client may hold (:class:`ConnectionLimits`).
    """
    host, port = parse_bind(settings.web_bind)
    limits = limits or ConnectionLimits()
    protocol = type("HeadDeadline", (_HeadDeadline,), {"head_timeout": limits.head_timeout})
    config = uvicorn.Config(
        create_app(settings, client=client),
        host=host,
        port=port,
        http=protocol,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=limits.keep_alive,
        limit_concurrency=limits.concurrency,
        h11_max_incomplete_event_size=limits.max_head_bytes,
        log_level="info",
    )
    logging.getLogger("uvicorn.access").addFilter(_redact)  # after Config, which configures logging
    return uvicorn.Server(config)


def serve(settings: Settings, *, client: redis.Redis | None = None) -> None:
    """Run the web service until SIGINT/SIGTERM (``notifier web``); returns after a clean shutdown."""
    server = make_server(settings, client=client)
    log.info("listening on http://%s", settings.web_bind)
    server.run()


def bound_port(server: uvicorn.Server) -> int | None:
    """The TCP port a started server listens on (useful with port 0), or None if not listening."""
    for listener in getattr(server, "servers", []) or []:
        for sock in listener.sockets:
            name = sock.getsockname()
            if isinstance(name, tuple):
                return int(name[1])
    return None


__all__ = [
    "CSP",
    "LEADER_KEY",
    "Branding",
    "ConnectionLimits",
    "RedactTokens",
    "bound_port",
    "create_app",
    "exposition",
    "health",
    "make_server",
    "mask_email",
    "parse_bind",
    "serve",
]
