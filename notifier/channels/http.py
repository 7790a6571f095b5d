"""What every HTTP channel shares: one way to build a client, one way to read failures.

Each platform module (x, facebook, mastodon, bluesky, webhook) posts with an
:class:`httpx.Client` made by :func:`make_client` (timeouts always set, redirects never
followed, a recognisable User-Agent), sends through :func:`send`, and turns a reply that is
not 2xx into our errors with :func:`error_for` (or :func:`raise_for_status`):

* connection errors, timeouts, 408, 429 and 5xx are :class:`TransientDeliveryError`, with
  ``retry_after`` taken from ``Retry-After`` or, on a 429, the platform's reset header
  (:func:`retry_after`). Channels never sleep: the delivery engine schedules the retry.
* every other 4xx (and a 3xx, since we do not follow redirects) is
  :class:`PermanentDeliveryError` carrying the platform's own error message.

Credentials are kept out of everything we say: :func:`notifier.redaction.redact` scrubs them
(in any spelling: percent-encoded, escaped, base64) from error messages and provider
replies, and tokens travel only in headers or form bodies, never in URLs (which httpx logs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

if TYPE_CHECKING:
    from notifier.config import Account

from notifier import __version__
from notifier.channels.base import Addressing, PostPayload
from notifier.channels.limits import Counting, PostRules, overflow
from notifier.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from notifier.redaction import redact

DEFAULT_TIMEOUT = httpx.Timeout(20.0, connect=5.0)
USER_AGENT = f"notifier/{__version__} (stakeholder notifications)"
REPLY_LIMIT = 1000  # characters of a provider's reply kept in the ledger

# Headers that say when a rate-limit window resets, as the platforms spell them:
# X sends epoch seconds, Mastodon an ISO 8601 timestamp, Bluesky's PDS epoch seconds.
RESET_HEADERS = ("x-rate-limit-reset", "x-ratelimit-reset", "ratelimit-reset")
_EPOCH_THRESHOLD = 1_000_000_000  # a "reset" number this large is a Unix time, not a delay


def make_client(*, timeout: float | httpx.Timeout | None = None, **kwargs: Any) -> httpx.Client:
    """An httpx client for posting: bounded timeouts, no redirects, our User-Agent.

    ``timeout`` is seconds for every phase or an :class:`httpx.Timeout`; the default is 5 s
    to connect and 20 s for the rest. Other keyword arguments go to :class:`httpx.Client`
    (tests pass ``transport``). The client is thread-safe and pools connections, so one
    per channel is enough.
    """
    headers = {"User-Agent": USER_AGENT, **kwargs.pop("headers", {})}
    return httpx.Client(
        timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        follow_redirects=False,
        headers=headers,
        **kwargs,
    )


def posted_text(rules: PostRules, payload: PostPayload) -> str:
    """The text as the platform of ``rules`` will show it: with the link (:func:`post_text`)
    where posts have no separate link field."""
    return post_text(payload) if rules.link_in_text else payload.text


def post_text(payload: PostPayload) -> str:
    """The text of a post that has no separate link field: the rendered text, plus the link
    on a line of its own when the template did not already include it.

    Used by X, Mastodon and Bluesky (Facebook sends the link as its own field; a webhook
    carries both separately), and by the outbox so it shows what would have been posted.
    """
    text = payload.text.rstrip()
    if not payload.link or payload.link in text:
        return text
    return f"{text}\n\n{payload.link}" if text else payload.link


def retry_after(response: httpx.Response, *, now: float | None = None) -> float | None:
    """How many seconds the far side asked us to wait, or None if it did not say.

    ``Retry-After`` (seconds or an HTTP date) counts on any reply. On a 429 the platforms'
    reset headers count too: X's ``x-rate-limit-reset`` and Bluesky's ``ratelimit-reset``
    (Unix seconds) and Mastodon's ``X-RateLimit-Reset`` (an ISO 8601 time). Reset headers
    ride on every X reply, so on other statuses they say nothing about this failure.
    A time already past gives 0.
    """
    now = time.time() if now is None else now
    names = ("retry-after", *RESET_HEADERS) if response.status_code == 429 else ("retry-after",)
    for name in names:
        value = response.headers.get(name)
        if not value:
            continue
        seconds = _seconds_until(value.strip(), now=now, delay_ok=True)
        if seconds is not None:
            return max(0.0, seconds)
    return None


def _seconds_until(value: str, *, now: float, delay_ok: bool) -> float | None:
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if number != number or number in (float("inf"), float("-inf")):  # NaN or infinite
            return None
        if number >= _EPOCH_THRESHOLD:
            return number - now
        return number if delay_ok else None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
    if moment.tzinfo is None:
        return None  # a time without a zone could be anything
    return moment.timestamp() - now


def reply_text(response: httpx.Response, *, secrets: Iterable[str | None] = ()) -> str:
    """The body of ``response`` as text, cut to :data:`REPLY_LIMIT` and scrubbed of secrets."""
    try:
        text = response.text
    except (UnicodeDecodeError, LookupError, httpx.ResponseNotRead):
        text = repr(response.content[:REPLY_LIMIT])
    text = redact(text, secrets).strip()
    return text if len(text) <= REPLY_LIMIT else text[:REPLY_LIMIT] + "…"


def json_body(response: httpx.Response) -> Any:
    """The parsed JSON body of ``response``, or None when it is not JSON."""
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError, httpx.ResponseNotRead):
        return None


def platform_message(body: Any) -> str | None:
    """The human message in a platform's JSON error body, whichever shape it takes.

    Knows X (``detail``/``title``, or ``errors[0].message`` on v1.1), Facebook
    (``error.message`` with ``code``), Mastodon (``error`` with ``error_description``),
    atproto XRPC (``error`` code and ``message``) and the common ``message``.
    """
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    if isinstance(error, Mapping):  # Facebook Graph
        message = str(error.get("message") or error.get("type") or "error")
        code = error.get("code")
        return f"{message} (code {code})" if code is not None else message
    parts: list[str] = []
    if isinstance(error, str) and error:
        parts.append(error)
    for key in ("message", "error_description", "detail"):
        value = body.get(key)
        if isinstance(value, str) and value and value not in parts:
            parts.append(value)
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
        first = errors[0]  # X's specific complaint about a field, after its general "detail"
        value = first.get("message") or first.get("detail") or first.get("title")
        if value and str(value) not in parts:
            parts.append(str(value))
    if not parts and isinstance(body.get("title"), str):
        parts.append(body["title"])
    if not parts:
        return None
    return ": ".join([p.rstrip(".") for p in parts[:-1]] + parts[-1:])


def describe(response: httpx.Response, *, secrets: Iterable[str | None] = ()) -> str:
    """``HTTP 401 Unauthorized: <the platform's message>``, secrets scrubbed, for error messages."""
    head = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    message = platform_message(json_body(response))
    if message is None:
        text = reply_text(response, secrets=secrets)
        message = text[:200] + ("…" if len(text) > 200 else "") if text else None
    if response.is_redirect and response.headers.get("location"):
        message = f"redirected to {response.headers['location']} (redirects are not followed)"
    return redact(f"{head}: {message}" if message else head, secrets)


def is_transient_status(status: int) -> bool:
    """True for statuses worth retrying: 408, 429 and every 5xx."""
    return status in (408, 429) or status >= 500


def error_for(  # noqa: PLR0913 - the reply plus optional keyword-only refinements of its message
    response: httpx.Response,
    *,
    what: str,
    secrets: Iterable[str | None] = (),
    transient: bool | None = None,
    hint: str | None = None,
    auth_hint: str | None = None,
    now: float | None = None,
) -> DeliveryError:
    """The error to raise for a reply that is not a success.

    ``what`` names the account (``"x account 'pcc-x'"``). ``transient`` overrides the
    status-based decision (Facebook reports rate limits as 400s with special codes);
    ``hint`` is appended to the message, and ``auth_hint`` too on a 401 or 403, where a
    refused credential shows (say, which variable holds the token).
    """
    secrets = tuple(secrets)
    message = f"{what}: {describe(response, secrets=secrets)}"
    if auth_hint and response.status_code in (401, 403):
        hint = f"{hint}; {auth_hint}" if hint else auth_hint
    if hint:
        message = f"{message}; {hint}"
    reply = reply_text(response, secrets=secrets) or None
    if transient is None:
        transient = is_transient_status(response.status_code)
    if transient:
        wait = retry_after(response, now=now)
        return TransientDeliveryError(message, retry_after=wait, provider_reply=reply)
    return PermanentDeliveryError(message, provider_reply=reply)


def raise_for_status(
    response: httpx.Response,
    *,
    what: str,
    secrets: Iterable[str | None] = (),
    auth_hint: str | None = None,
) -> None:
    """Return quietly on a 2xx; otherwise raise :func:`error_for`'s error."""
    if response.is_success:
        return
    raise error_for(response, what=what, secrets=secrets, auth_hint=auth_hint)


def send(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    what: str,
    secrets: Iterable[str | None] = (),
    **kwargs: Any,
) -> httpx.Response:
    """Make one request and return its response, whatever its status.

    Failures to get a response become our errors: a bad URL or scheme (a config mistake)
    is permanent; timeouts, refused or dropped connections are transient. A timeout after
    the request was written may still have posted: the message says so, and each channel's
    retry is built to recognise its own earlier post. A client already closed (httpx's
    ``RuntimeError``; the runtime holds a channel a batch uses, so only a channel closed
    by hand) refuses before sending anything: transient, so the retry posts it once.
    """
    try:
        return client.request(method, url, **kwargs)
    except RuntimeError as exc:
        if not client.is_closed:
            raise
        raise TransientDeliveryError(f"{what}: not sent: its HTTP client was closed") from exc
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise PermanentDeliveryError(f"{what}: bad URL {url!r}: {redact(str(exc), secrets)}") from exc
    except httpx.TimeoutException as exc:
        phase = type(exc).__name__.removesuffix("Timeout").lower() or "request"
        raise TransientDeliveryError(f"{what}: timed out ({phase}) calling {_origin(url)}") from exc
    except httpx.HTTPError as exc:
        detail = redact(str(exc), secrets) or type(exc).__name__
        raise TransientDeliveryError(f"{what}: cannot reach {_origin(url)}: {detail}") from exc


def _origin(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return url
    return f"{parsed.scheme}://{parsed.netloc.decode('ascii', 'replace')}"


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON: the exact bytes a channel sends (and, for webhooks, signs)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def api_root(url: str) -> str:
    """An API base URL without its trailing slash, so paths join predictably."""
    return url.strip().rstrip("/")


class HttpChannel:
    """What every HTTP channel holds: the account it speaks for, an HTTP client (the one given,
    shared and left open, or its own, closed by :meth:`close`) and how it names itself in
    errors and logs."""

    platform: ClassVar[str]
    addressing: ClassVar[Addressing] = Addressing.ACCOUNT  # one post per account
    #: The platform's rules for a post (:class:`~notifier.channels.limits.PostRules`):
    #: no limit, characters counted as written, the link in its own field by default.
    max_length: ClassVar[int | None] = None
    counting: ClassVar[Counting] = Counting.CHARACTERS
    url_length: ClassVar[int | None] = None
    link_in_text: ClassVar[bool] = False

    def __init__(self, account: Account, *, client: httpx.Client | None) -> None:
        self.name = account.id
        self.account = account
        self._client = client or make_client()
        self._owns_client = client is None
        self._what = f"{self.platform} account {account.id!r}"

    def _text(self, post: PostPayload) -> tuple[PostPayload, str]:
        """The post and its text as this platform shows it. A text over the platform's limit
        is permanent: ``validate`` catches it first, so this only guards a bypassed check."""
        text = posted_text(self, post)
        too_long = overflow(self, text)
        if too_long:
            raise PermanentDeliveryError(f"{self._what}: the post is {too_long}")
        return post, text

    def _post_json(
        self, url: str, body: object, *, bearer: str, secrets: Iterable[str | None] = (), **headers: str
    ) -> httpx.Response:
        """POST ``body`` as JSON with ``Authorization: Bearer``; the bearer and ``secrets`` are
        kept out of every error message."""
        return send(
            self._client,
            "POST",
            url,
            what=self._what,
            secrets=[bearer, *secrets],
            content=dumps(body),
            headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json", **headers},
        )

    def close(self) -> None:
        """Close the HTTP client if this channel made it."""
        if self._owns_client:
            self._client.close()
