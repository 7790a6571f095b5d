"""The Starlette app: its state, routes, error pages and lifespan.

Handlers live in :mod:`notifier.web.pages` (public pages), :mod:`notifier.web.api` (the
admin JSON API) and :mod:`notifier.web.health` (``/healthz``, ``/metrics``); they are plain
module-level functions that read :class:`notifier.web.state.WebState` from ``app.state.web``.
Adding a page or an endpoint is a function in one of those modules and a line in
:data:`ROUTES`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from notifier.config import Settings
from notifier.ledger import Ledger
from notifier.service import Service
from notifier.store import Store
from notifier.web import accounts, api, bounce_hook, console_routes, health, pages, signin
from notifier.web.auth import session_middleware
from notifier.web.desk import ResponseDesk
from notifier.web.state import REDIS_TIMEOUT_S, Branding, WebState, bounded_client, client_for

log = logging.getLogger(__name__)

ROUTES = [
    Route("/", pages.index, methods=["GET"]),
    Route("/unsubscribe/{token}", pages.unsubscribe_form, methods=["GET"]),
    Route("/unsubscribe/{token}", pages.unsubscribe, methods=["POST"]),
    Route("/resubscribe/{token}", pages.resubscribe, methods=["POST"]),
    Route("/healthz", health.healthz, methods=["GET"]),
    Route("/metrics", health.metrics, methods=["GET"]),
    Route("/api/consultations/{consultation}/report", api.consultation_report, methods=["GET"]),
    Route("/api/consultations/{consultation}/responses", api.record_response, methods=["POST"]),
    Route("/api/suppressions", api.suppressions, methods=["GET"]),
    Route("/api/suppressions", api.add_suppression, methods=["POST"]),
    Route("/api/suppressions/{email}", api.remove_suppression, methods=["DELETE"]),
    Route("/api/consultations/{consultation}/fire", api.fire, methods=["POST"]),
    Route("/api/openapi.json", api.openapi_json, methods=["GET"]),
    Route("/admin/", signin.admin_home, methods=["GET"]),
    Route("/admin/sign-in", signin.sign_in_form, methods=["GET"]),
    Route("/admin/sign-in", signin.sign_in_submit, methods=["POST"]),
    Route("/admin/sign-out", signin.sign_out_submit, methods=["POST"]),
    Route("/admin/users", accounts.user_list, methods=["GET"]),
    Route("/admin/users", accounts.user_add, methods=["POST"]),
    Route("/admin/users/remove", accounts.user_remove, methods=["POST"]),
    Route("/api/bounces", bounce_hook.sns_bounces, methods=["POST"]),
    *console_routes.ROUTES,
]
EXCEPTION_HANDLERS = {
    HTTPException: api.errors_as_json(pages.http_error),  # JSON under /api/, a page elsewhere
    Exception: api.errors_as_json(pages.http_error),
}


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Logs readiness; at shutdown closes the Redis clients the app made itself."""
    log.info("web service ready (Redis timeouts %.0fs)", REDIS_TIMEOUT_S)
    try:
        yield
    finally:
        web: WebState = app.state.web
        web.desk.close()
        for client in web.owned:
            client.close()
        if web.store is not None and web.owns_store:
            web.store.close()


def create_app(settings: Settings, *, client: redis.Redis | None = None, service: Service | None = None) -> Starlette:
    """The Starlette app: unsubscribe pages, ``/healthz``, ``/metrics``, ``/`` and the admin API.

    ``client`` is used for the ledger when given; otherwise one is made for the configured
    Redis and closed at shutdown. ``service`` (``notifier run`` gives its own) is shared, not
    made again: its Redis client, its consultation record and, for the responses API, the
    service itself; the app leaves it open. Raises ConfigError when there is no secret key
    (``NOTIFIER_SECRET_KEY`` with an external Redis).
    """
    key = settings.secret_key()
    if client is None and service is not None:
        client = service.client
    main = client_for(settings) if client is None else client
    checker = bounded_client(main)
    web = WebState(
        key=key,
        ledger=Ledger(main),
        checker=checker,
        registry=health.metrics_registry(checker),
        brand=Branding.load(settings),
        admin_token=settings.env.get("NOTIFIER_ADMIN_TOKEN") or "",
        owned=(checker,) if client is not None else (checker, main),
        desk=ResponseDesk(settings, service=service),
        store=Store.open(settings) if service is None else service.store,
        owns_store=service is None,
    )
    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[session_middleware(key, public_url=settings.public_url)],
    )
    app.state.web = web
    app.state.ledger = web.ledger
    return app
