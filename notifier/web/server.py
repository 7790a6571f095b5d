"""Serving the app: uvicorn with connection limits, and an access log without tokens."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import h11
import redis
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from notifier.config import Settings
from notifier.errors import ConfigError, Problem
from notifier.redaction import redact
from notifier.service import Service
from notifier.web.app import create_app

log = logging.getLogger(__name__)


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
        raise ConfigError(
            [Problem.at("NOTIFIER_WEB_BIND", None, f"must be HOST:PORT (e.g. 0.0.0.0:8080), not {value!r}")]
        )
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
    settings: Settings,
    *,
    client: redis.Redis | None = None,
    limits: ConnectionLimits | None = None,
    service: Service | None = None,
) -> uvicorn.Server:
    """A uvicorn server for :func:`create_app` on ``settings.web_bind``, not started.

    Run it with ``server.run()`` (in any thread; it handles SIGINT/SIGTERM itself only in
    the main thread) and stop it with ``server.should_exit = True``: it stops accepting,
    lets requests in progress finish (up to 10 s) and closes its Redis clients. ``limits``
    bounds what a client may hold (:class:`ConnectionLimits`). ``service`` is the process' own
    (``notifier run``), shared with the app (see :func:`create_app`).
    """
    host, port = parse_bind(settings.web_bind)
    limits = limits or ConnectionLimits()
    protocol = type("HeadDeadline", (_HeadDeadline,), {"head_timeout": limits.head_timeout})
    config = uvicorn.Config(
        create_app(settings, client=client, service=service),
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
