"""``notifier web``: the HTTP service: unsubscribe pages, health, metrics and the admin API.

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
    Prometheus text exposition (``prometheus_client``), read from Redis at scrape time.
``GET /``
    A short page saying what this service is.
``GET /api/consultations/{id}/report[?event=NAME]``, ``GET /api/suppressions``
    The admin API: the same JSON as ``notifier report --format json``, and the suppression
    list. Only with ``Authorization: Bearer $NOTIFIER_ADMIN_TOKEN``; without that setting
    the admin API is off (404).

Modules
=======

``app``      :func:`create_app`: state, routes, error pages, lifespan
``state``    what handlers share (:class:`~notifier.web.state.WebState` on ``app.state.web``), Redis clients
``render``   Jinja2 templates (``templates/``, autoescaped), the security headers of every page
``pages``    the public pages (unsubscribe, resubscribe, index, errors)
``api``      the admin JSON API and its bearer-token check
``health``   ``/healthz`` and ``/metrics``
``server``   uvicorn: connection limits, token-free access log
"""

from __future__ import annotations

from notifier.web.app import create_app
from notifier.web.health import LEADER_KEY, exposition, health
from notifier.web.render import CSP
from notifier.web.server import ConnectionLimits, RedactTokens, bound_port, make_server, parse_bind, serve
from notifier.web.state import Branding, mask_email

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
