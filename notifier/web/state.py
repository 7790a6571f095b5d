"""What every handler of the web service shares: the app's state and the Redis clients behind it.

:func:`notifier.web.app.create_app` builds one :class:`WebState` and keeps it on
``app.state.web``; handlers are plain module-level functions that read it with
:func:`state`, so a new page or API module needs nothing but a route.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any

import redis
from prometheus_client import CollectorRegistry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry
from starlette.requests import Request

from notifier.broker import redis_url
from notifier.config import Settings, read_yaml
from notifier.errors import Problem
from notifier.ledger import Ledger
from notifier.redaction import redact
from notifier.store import Store
from notifier.web.desk import ResponseDesk

log = logging.getLogger(__name__)

#: Socket timeout for Redis calls made by the web service: a page or healthcheck never hangs.
REDIS_TIMEOUT_S = 2.0


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
            log.warning(
                "web pages will not name the organisation: %s",
                "; ".join(map(str, problems)) or "notifier.yaml is not a mapping",
            )
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


@dataclass(frozen=True, slots=True)
class WebState:
    """Everything the handlers need, built once per app by ``create_app``."""

    #: Decrypts and verifies unsubscribe tokens (``NOTIFIER_SECRET_KEY``).
    key: bytes
    #: The ledger on the main client: what pages and the API read and change.
    ledger: Ledger
    #: A client whose calls fail fast and are not retried: for ``/healthz``.
    checker: redis.Redis
    #: ``/metrics``: a registry whose collector reads Redis (through ``checker``) at scrape time.
    registry: CollectorRegistry
    brand: Branding
    #: ``NOTIFIER_ADMIN_TOKEN``; empty when the admin API is off.
    admin_token: str
    #: Clients this app made and closes at shutdown (not one it was given).
    owned: tuple[redis.Redis, ...]
    #: Records responses given to the API and queues their acknowledgements.
    desk: ResponseDesk
    #: The consultation record: unsubscribes and resubscribes are recorded there (opened by
    #: ``create_app`` and closed at shutdown, unless it is a shared service's: ``owns_store``).
    store: Store | None = None
    owns_store: bool = True


def state(request: Request) -> WebState:
    """The :class:`WebState` of the app serving ``request``."""
    found = request.app.state.web
    if not isinstance(found, WebState):
        raise TypeError(f"app.state.web is {type(found).__name__}, not WebState: was the app made by create_app?")
    return found


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


def client_for(settings: Settings) -> redis.Redis:
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


def describe(exc: BaseException) -> str:
    """A short description of a Redis error, without anything that could be a credential."""
    text = redact(str(exc))[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
