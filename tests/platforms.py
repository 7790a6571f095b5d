"""One real HTTP server on loopback that speaks enough of five platforms' APIs to test against.

:class:`Platforms` runs a ``ThreadingHTTPServer`` on ``127.0.0.1`` with an ephemeral port
in a background thread. It answers, with the real paths, auth schemes, status codes and
error bodies:

* X: ``POST /2/tweets`` (bearer token; 403 "duplicate content" for a text it already has);
* Facebook: ``POST /{version}/{page_id}/feed`` (form body with ``access_token``; Graph
  error objects with codes, e.g. 190 for a bad token);
* Mastodon: ``POST /api/v1/statuses`` (bearer token; a repeated ``Idempotency-Key`` gets
  the status it already made, as Mastodon does);
* Bluesky: ``com.atproto.server.createSession`` / ``refreshSession``,
  ``com.atproto.repo.createRecord`` and ``getRecord`` under ``/xrpc/``. Record keys must
  be TIDs (the lexicon's key type for posts; the reference PDS only checks record-key
  syntax) and a taken key fails with a 500 ``InternalServerError``, which is what the
  reference PDS answers (its MST throws "There is already a value at key");
* webhooks: ``POST /hooks/<name>``, checking ``X-Notifier-Signature`` (401 when wrong).

Every request is kept in :attr:`Platforms.requests`; every post the platform accepted in
:meth:`Platforms.accepted`. Failures are scripted per route (``x``, ``facebook``,
``mastodon``, ``bluesky`` for createRecord, ``bluesky-session`` for createSession,
``webhook``): :meth:`~Platforms.fail` answers the next requests with a status,
:meth:`~Platforms.rate_limit` with the platform's own 429 (or Facebook's rate-limit error)
and reset header, and :meth:`~Platforms.slow` accepts the next post but holds the reply
back, so the client times out although the post landed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from notifier.channels.bluesky import BlueskyChannel
from notifier.channels.limits import length

ROUTES = ("x", "facebook", "mastodon", "bluesky", "bluesky-session", "webhook")
_TID = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$")
_RKEY = re.compile(r"^[A-Za-z0-9._:~-]{1,512}$")
_FB_PATH = re.compile(r"^/(v\d+\.\d+)/([^/]+)/feed$")

Reply = tuple[int, dict[str, str], Any]


@dataclass
class Request:
    """One request the server received, as it arrived."""

    route: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        """The body parsed as an url-encoded form."""
        return {k: v[0] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}


@dataclass
class Scripted:
    """A canned reply for the next request on a route; ``delay`` > 0 means: handle the
    request normally (accept the post), then hold the reply that long."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay: float = 0.0


def _error_body(route: str, status: int, message: str) -> Any:
    reason = HTTPStatus(status).phrase
    if route == "x":
        return {"title": reason, "detail": message, "type": "about:blank", "status": status}
    if route == "facebook":
        return {
            "error": {
                "message": message,
                "type": "OAuthException",
                "code": 2,
                "is_transient": True,
                "fbtrace_id": "AbCdEf",
            }
        }
    if route == "mastodon":
        return {"error": message}
    if route.startswith("bluesky"):
        return {"error": "InternalServerError" if status >= 500 else "InvalidRequest", "message": message}
    return message


class Platforms:
    """The server, its credentials and what it has seen. Use as a context manager."""

    def __init__(self) -> None:
        """Credentials the server accepts; change them before use to test refusals."""
        self.x_token = "x-token-0123456789abcdef"
        self.facebook_token = "EAAB-page-token-0123456789"
        self.page_id = "1234567890"
        self.mastodon_token = "mastodon-token-0123456789"
        self.bluesky_handle = "pcc.example"
        self.bluesky_did = "did:plc:notifiertest000000000"
        self.bluesky_password = "abcd-efgh-ijkl-mnop"
        self.webhook_key = b"webhook-secret-key"
        self.webhook_reply: Reply = (200, {}, None)  # None: {"id": "wh-<n>"}

        self.requests: list[Request] = []
        self.sessions_created = 0
        self.released = threading.Event()
        self._posts: dict[str, list[Request]] = defaultdict(list)
        self._scripts: dict[str, deque[Scripted]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._idempotent: dict[str, dict[str, Any]] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self._access: set[str] = set()
        self._expired: set[str] = set()
        self._refresh: set[str] = set()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Platforms:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """Listen on an ephemeral loopback port and serve in a daemon thread."""
        server = _Server(("127.0.0.1", 0), _Handler)
        server.platforms = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Release held replies and stop serving."""
        self.released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- what happened ---------------------------------------------------------------

    def accepted(self, route: str) -> list[Request]:
        """The posts the platform accepted on ``route`` (each one is on the account)."""
        with self._lock:
            return list(self._posts[route])

    def seen(self, route: str) -> list[Request]:
        """Every request on ``route``, accepted or not."""
        with self._lock:
            return [r for r in self.requests if r.route == route]

    # -- scripting -------------------------------------------------------------------

    def script(self, route: str, *replies: Scripted) -> None:
        """Answer the next requests on ``route`` with ``replies``, in order."""
        assert route in ROUTES, route
        with self._lock:
            self._scripts[route].extend(replies)

    def fail(
        self,
        route: str,
        status: int,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
        message: str = "scripted failure",
    ) -> None:
        """The next ``times`` requests on ``route`` get ``status`` with the platform's error body."""
        body = _error_body(route, status, message)
        self.script(route, *(Scripted(status, dict(headers or {}), body) for _ in range(times)))

    def rate_limit(self, route: str, seconds: float) -> None:
        """The next request on ``route`` is rate-limited as that platform does it, for ``seconds``."""
        reset = time.time() + seconds
        if route == "x":
            self.script(
                route,
                Scripted(
                    429,
                    {
                        "x-rate-limit-limit": "100",
                        "x-rate-limit-remaining": "0",
                        "x-rate-limit-reset": str(int(reset)),
                    },
                    {
                        "title": "Too Many Requests",
                        "detail": "Too Many Requests",
                        "type": "about:blank",
                        "status": 429,
                    },
                ),
            )
        elif route == "mastodon":
            iso = datetime.fromtimestamp(reset, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
            self.script(
                route,
                Scripted(
                    429,
                    {
                        "X-RateLimit-Limit": "300",
                        "X-RateLimit-Remaining": "0",
                        "X-RateLimit-Reset": iso,
                    },
                    {"error": "Too many requests"},
                ),
            )
        elif route.startswith("bluesky"):
            self.script(
                route,
                Scripted(
                    429,
                    {
                        "ratelimit-limit": "5000",
                        "ratelimit-remaining": "0",
                        "ratelimit-reset": str(int(reset)),
                        "ratelimit-policy": "5000;w=3600",
                    },
                    {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"},
                ),
            )
        elif route == "facebook":
            usage = {
                self.page_id: [
                    {
                        "type": "pages",
                        "call_count": 100,
                        "total_cputime": 12,
                        "total_time": 15,
                        "estimated_time_to_regain_access": math.ceil(seconds / 60),
                    }
                ]
            }
            self.script(
                route,
                Scripted(
                    400,
                    {"x-business-use-case-usage": json.dumps(usage)},
                    {
                        "error": {
                            "message": "(#32) Page request limit reached",
                            "type": "OAuthException",
                            "is_transient": True,
                            "code": 32,
                            "fbtrace_id": "AbCdEf",
                        }
                    },
                ),
            )
        else:
            self.script(route, Scripted(429, {"Retry-After": str(int(seconds))}, "slow down"))

    def slow(self, route: str, seconds: float = 5.0) -> None:
        """Accept the next post on ``route`` but hold the reply ``seconds`` (or until close)."""
        self.script(route, Scripted(delay=seconds))

    def expire_sessions(self) -> None:
        """Every Bluesky access token handed out so far is now expired."""
        with self._lock:
            self._expired |= self._access
            self._access.clear()

    # -- the APIs --------------------------------------------------------------------

    def _next_id(self) -> int:
        self._counter += 1
        return self._counter

    def _accept(self, request: Request) -> None:
        self._posts[request.route].append(request)

    def handle(self, request: Request) -> tuple[Reply, float]:
        """The reply to ``request``, and how long to hold it back."""
        with self._lock:
            self.requests.append(request)
            script = self._scripts[request.route].popleft() if self._scripts[request.route] else None
            if script is not None and not script.delay:
                return (script.status, script.headers, script.body), 0.0
            reply = self._dispatch(request)
            return reply, script.delay if script else 0.0

    def _dispatch(self, request: Request) -> Reply:
        handler = {
            "x": self._x,
            "facebook": self._facebook,
            "mastodon": self._mastodon,
            "bluesky": self._bluesky_create,
            "bluesky-session": self._bluesky_session,
            "bluesky-refresh": self._bluesky_refresh,
            "bluesky-get": self._bluesky_get,
            "webhook": self._webhook,
        }.get(request.route)
        if handler is None:
            return 404, {}, {"error": "not found"}
        return handler(request)

    def _x(self, request: Request) -> Reply:
        window = {
            "x-rate-limit-limit": "100",
            "x-rate-limit-remaining": "99",
            "x-rate-limit-reset": str(int(time.time()) + 900),
        }
        if request.headers.get("authorization") != f"Bearer {self.x_token}":
            return (
                401,
                window,
                {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"},
            )
        text = request.json().get("text")
        if not isinstance(text, str) or not text:
            return (
                400,
                window,
                {
                    "errors": [{"message": "$.text: is missing"}],
                    "title": "Invalid Request",
                    "detail": "One or more parameters to your request was invalid.",
                    "type": "https://api.twitter.com/2/problems/invalid-request",
                },
            )
        if any(p.json()["text"] == text for p in self._posts["x"]):
            return (
                403,
                window,
                {
                    "detail": "You are not allowed to create a Tweet with duplicate content.",
                    "type": "about:blank",
                    "title": "Forbidden",
                    "status": 403,
                },
            )
        self._accept(request)
        tweet_id = str(1_800_000_000_000_000_000 + self._next_id())
        return 201, window, {"data": {"id": tweet_id, "text": text, "edit_history_tweet_ids": [tweet_id]}}

    def _facebook(self, request: Request) -> Reply:
        match = _FB_PATH.match(request.path)
        assert match is not None
        form = request.form()
        token = form.get("access_token") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if token != self.facebook_token:
            return (
                400,
                {},
                {
                    "error": {
                        "message": "Invalid OAuth access token - Cannot parse access token",
                        "type": "OAuthException",
                        "code": 190,
                        "fbtrace_id": "AbCdEf",
                    }
                },
            )
        if match.group(2) != self.page_id:
            return (
                400,
                {},
                {
                    "error": {
                        "message": f"Unsupported post request. Object with ID '{match.group(2)}' does not exist",
                        "type": "GraphMethodException",
                        "code": 100,
                        "error_subcode": 33,
                        "fbtrace_id": "AbCdEf",
                    }
                },
            )
        if not form.get("message") and not form.get("link"):
            return (
                400,
                {},
                {
                    "error": {
                        "message": "(#100) Missing message or attachment",
                        "type": "OAuthException",
                        "code": 100,
                        "fbtrace_id": "AbCdEf",
                    }
                },
            )
        self._accept(request)
        return 200, {}, {"id": f"{self.page_id}_{100_000 + self._next_id()}"}

    def _mastodon(self, request: Request) -> Reply:
        if request.headers.get("authorization") != f"Bearer {self.mastodon_token}":
            return 401, {}, {"error": "The access token is invalid"}
        key = request.headers.get("idempotency-key")
        if key and key in self._idempotent:
            return 200, {}, self._idempotent[key]
        if request.headers.get("content-type", "").startswith("application/json"):
            text = request.json().get("status")
        else:
            text = request.form().get("status")
        if not text:
            return 422, {}, {"error": "Validation failed: Text can't be blank"}
        if len(text) > 500:
            return 422, {}, {"error": "Validation failed: Text character limit of 500 exceeded"}
        self._accept(request)
        status_id = str(110_000_000_000_000_000 + self._next_id())
        status = {
            "id": status_id,
            "created_at": datetime.now(UTC).isoformat(),
            "visibility": "public",
            "content": f"<p>{text}</p>",
            "uri": f"{self.url}/users/pcc/statuses/{status_id}",
            "url": f"{self.url}/@pcc/{status_id}",
        }
        if key:
            self._idempotent[key] = status
        return 200, {}, status

    def _new_session(self) -> dict[str, Any]:
        n = self._next_id()
        access, refresh = f"access-{n}-jwt", f"refresh-{n}-jwt"
        self._access.add(access)
        self._refresh.add(refresh)
        self.sessions_created += 1
        return {
            "did": self.bluesky_did,
            "handle": self.bluesky_handle,
            "accessJwt": access,
            "refreshJwt": refresh,
            "active": True,
        }

    def _bluesky_session(self, request: Request) -> Reply:
        body = request.json()
        if body.get("identifier") not in (self.bluesky_handle, self.bluesky_did) or (
            body.get("password") != self.bluesky_password
        ):
            return 401, {}, {"error": "AuthenticationRequired", "message": "Invalid identifier or password"}
        return 200, {}, self._new_session()

    def _bluesky_refresh(self, request: Request) -> Reply:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self._refresh:
            return 400, {}, {"error": "ExpiredToken", "message": "Token has been revoked"}
        self._refresh.discard(token)
        return 200, {}, self._new_session()

    def _bluesky_create(self, request: Request) -> Reply:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token in self._expired:
            return 400, {}, {"error": "ExpiredToken", "message": "Token has expired"}
        if token not in self._access:
            return 401, {}, {"error": "AuthenticationRequired", "message": "Invalid token"}
        body = request.json()
        if body.get("repo") not in (self.bluesky_did, self.bluesky_handle):
            return 400, {}, {"error": "InvalidRequest", "message": f"Could not find repo: {body.get('repo')}"}
        record = body.get("record") or {}
        if body.get("collection") != "app.bsky.feed.post" or record.get("$type") != "app.bsky.feed.post":
            return 400, {}, {"error": "InvalidRequest", "message": "Invalid $type"}
        text = record.get("text")
        if not isinstance(text, str) or length(BlueskyChannel, text) > 300 or len(text.encode()) > 3000:
            return (
                400,
                {},
                {
                    "error": "InvalidRequest",
                    "message": "Invalid app.bsky.feed.post record: Record/text must not be longer than 300 graphemes",
                },
            )
        try:
            datetime.fromisoformat(record["createdAt"])
        except (KeyError, TypeError, ValueError):
            return (
                400,
                {},
                {"error": "InvalidRequest", "message": "Record/createdAt must be an valid atproto datetime"},
            )
        rkey = body.get("rkey") or f"3l{self._next_id():011d}"
        if not _RKEY.match(rkey) or rkey in (".", "..") or not _TID.match(rkey):
            return 400, {}, {"error": "InvalidRequest", "message": f"Invalid record key: {rkey}"}
        if rkey in self._records:
            return 500, {}, {"error": "InternalServerError", "message": "Internal Server Error"}
        uri = f"at://{self.bluesky_did}/app.bsky.feed.post/{rkey}"
        cid = "bafyrei" + hashlib.sha256(request.body).hexdigest()[:52]
        self._records[rkey] = {"uri": uri, "cid": cid, "value": record}
        self._accept(request)
        return (
            200,
            {},
            {
                "uri": uri,
                "cid": cid,
                "commit": {"cid": "bafyreicommit", "rev": "3l000000000"},
                "validationStatus": "valid",
            },
        )

    def _bluesky_get(self, request: Request) -> Reply:
        q = request.query
        found = self._records.get(q.get("rkey", ""))
        if q.get("repo") not in (self.bluesky_did, self.bluesky_handle) or found is None:
            uri = f"at://{q.get('repo')}/{q.get('collection')}/{q.get('rkey')}"
            return 400, {}, {"error": "RecordNotFound", "message": f"Could not locate record: {uri}"}
        return 200, {}, found

    def _webhook(self, request: Request) -> Reply:
        expected = "sha256=" + hmac.new(self.webhook_key, request.body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("x-notifier-signature", "")):
            return 401, {}, {"error": "bad signature"}
        self._accept(request)
        status, headers, body = self.webhook_reply
        return status, headers, {"id": f"wh-{self._next_id()}"} if body is None else body


def _route(method: str, path: str) -> str:
    if path == "/2/tweets":
        return "x"
    if _FB_PATH.match(path):
        return "facebook"
    if path == "/api/v1/statuses":
        return "mastodon"
    if path.startswith("/hooks/"):
        return "webhook"
    return {
        "/xrpc/com.atproto.server.createSession": "bluesky-session",
        "/xrpc/com.atproto.server.refreshSession": "bluesky-refresh",
        "/xrpc/com.atproto.repo.createRecord": "bluesky",
        "/xrpc/com.atproto.repo.getRecord": "bluesky-get",
    }.get(path, "unknown")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a held reply or an idle keep-alive must not stall close()
    platforms: Platforms

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out and went away is expected here; stay quiet about it."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # close idle keep-alive connections
    wbufsize = 1 << 16  # headers and body leave in one write: no Nagle/delayed-ACK stall
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows what matters."""

    def do_GET(self) -> None:
        """Serve a GET."""
        self._serve("GET")

    def do_POST(self) -> None:
        """Serve a POST."""
        self._serve("POST")

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(
            route=_route(method, split.path),
            method=method,
            path=split.path,
            query={k: v[0] for k, v in parse_qs(split.query).items()},
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        platforms = self.server.platforms
        (status, headers, payload), delay = platforms.handle(request)
        if delay:
            platforms.released.wait(delay)
        if isinstance(payload, bytes):
            data, kind = payload, "application/octet-stream"
        elif isinstance(payload, str):
            data, kind = payload.encode(), "text/plain; charset=utf-8"
        elif payload is None:
            data, kind = b"", ""
        else:
            data, kind = json.dumps(payload).encode(), "application/json; charset=utf-8"
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if kind:
                self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client gave up waiting
