"""Bluesky: one ``app.bsky.feed.post`` record per account per event occurrence.

The account logs in with an app password (``NOTIFIER_<ACCOUNT>_TOKEN``) for its
``handle`` through ``com.atproto.server.createSession`` on its PDS (``api_base``, or
``https://bsky.social``). The session is cached and shared by threads; when the PDS says
it expired (400 ``ExpiredToken``, or a 401) it is refreshed once with the refresh token,
or made again, and the post retried.

A post is created with ``com.atproto.repo.createRecord`` under a record key derived from
the delivery (:func:`record_key`), so every attempt of one delivery writes the same record
address. That is what keeps a retry from posting twice: on attempt 2 onwards the channel
first asks ``com.atproto.repo.getRecord`` whether its record already exists, and when a
create fails (the PDS answers a taken key with an error, a 500 on the reference PDS) it
checks again before giving up. Either way, an existing record under our key is our post.

Links in the text get ``app.bsky.richtext.facet#link`` facets at UTF-8 byte offsets
(Bluesky does not link bare URLs itself), and the consultation link an external embed (a
link card without a thumbnail). Posts longer than 300 graphemes are refused before any
call.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from notifier.channels import http
from notifier.channels.base import Delivery, PostPayload, Receipt
from notifier.channels.limits import Counting, urls
from notifier.config import Account, token_variable
from notifier.errors import DeliveryError, InvalidValueError

log = logging.getLogger(__name__)

DEFAULT_PDS = "https://bsky.social"
COLLECTION = "app.bsky.feed.post"
POST_URL = "https://bsky.app/profile/{handle}/post/{rkey}"

_S32 = "234567abcdefghijklmnopqrstuvwxyz"  # base32-sortable, the TID alphabet
_TID_BASE_US = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z in microseconds


def record_key(delivery: Delivery) -> str:
    """The record key of a delivery's post: a valid TID, the same on every attempt.

    ``app.bsky.feed.post`` records are keyed by TIDs (13 base32-sortable characters: a
    53-bit microsecond timestamp and a 10-bit clock id). Ours takes 50 bits of the delivery
    key: 40 as microseconds after 2024-01-01 (so the "time" in it is early 2024, never the
    future) and 10 as the clock id. Two deliveries colliding is a one-in-10^15 chance.
    """
    bits = int(delivery.key[:16], 16)
    micros = _TID_BASE_US + (bits & ((1 << 40) - 1))
    clock = (bits >> 40) & 0x3FF
    value = (micros << 10) | clock
    chars = []
    for _ in range(13):
        chars.append(_S32[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def link_facets(text: str) -> list[dict[str, Any]]:
    """A link facet for every URL in ``text``, indexed by UTF-8 byte offsets as atproto wants."""
    facets: list[dict[str, Any]] = []
    position = 0
    for url in urls(text):
        start = text.find(url, position)
        if start < 0:  # pragma: no cover - urls() found it, so it is there
            continue
        position = start + len(url)
        byte_start = len(text[:start].encode("utf-8"))
        byte_end = byte_start + len(url.encode("utf-8"))
        facets.append(
            {
                "index": {"byteStart": byte_start, "byteEnd": byte_end},
                "features": [{"$type": "app.bsky.richtext.facet#link", "uri": url}],
            }
        )
    return facets


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class _Session:
    did: str
    handle: str
    access: str = field(repr=False)
    refresh: str = field(repr=False)


class BlueskyChannel(http.HttpChannel):
    """Posts an event's message to one Bluesky account."""

    platform = "bluesky"
    max_length = 300
    counting = Counting.GRAPHEMES  # what a reader sees as one character
    link_in_text = True

    def __init__(self, account: Account, *, token: str, client: httpx.Client | None = None) -> None:
        """``token`` is an app password for ``account.handle``; ``client`` is shared if given
        (and then not closed by :meth:`close`)."""
        if not account.handle:
            raise InvalidValueError(f"bluesky account {account.id!r} needs handle")
        super().__init__(account, client=client)
        self.handle = account.handle.removeprefix("@")
        self._password = token
        self._pds = http.api_root(account.api_base or DEFAULT_PDS)
        self._lock = threading.Lock()
        self._current: _Session | None = None

    def __repr__(self) -> str:
        return f"BlueskyChannel({self.name!r}, handle={self.handle!r}, pds={self._pds!r})"

    # -- sending ---------------------------------------------------------------------

    def send(self, delivery: Delivery, payload: PostPayload) -> Receipt:
        """Create the delivery's post record once; an existing record under its key is success."""
        post, text = self._text(payload)
        rkey = record_key(delivery)
        session = self._session()
        if delivery.attempt > 1:
            found = self._find(session, rkey, strict=True)
            if found is not None:
                log.info("%s: %s already exists: an earlier attempt landed", self._what, found.provider_id)
                return found
        record: dict[str, Any] = {"$type": COLLECTION, "text": text, "createdAt": _now()}
        facets = link_facets(text)
        if facets:
            record["facets"] = facets
        if post.link:
            record["embed"] = {
                "$type": "app.bsky.embed.external",
                "external": {"uri": post.link, "title": post.consultation_title, "description": ""},
            }
        body = {"repo": session.did, "collection": COLLECTION, "rkey": rkey, "record": record}
        response, session = self._call(session, "com.atproto.repo.createRecord", body)
        if response.is_success:
            reply = http.json_body(response)
            uri = reply.get("uri") if isinstance(reply, dict) else None
            uri = str(uri) if uri else f"at://{session.did}/{COLLECTION}/{rkey}"
            log.info("%s: posted %s", self._what, uri)
            return self._receipt(uri, rkey)
        error = http.error_for(
            response,
            what=self._what,
            secrets=self._secrets(session),
            auth_hint=f"check {token_variable(self.name)}: it must be an app password for {self.handle}",
        )
        if response.status_code not in (401, 403, 429):
            # A taken record key comes back as an error; if the record is there, it is ours.
            found = self._find(session, rkey, strict=False)
            if found is not None:
                log.info("%s: %s already exists: an earlier attempt landed", self._what, found.provider_id)
                return found
        raise error

    def _receipt(self, uri: str, rkey: str) -> Receipt:
        return Receipt(provider_id=uri, url=POST_URL.format(handle=self.handle, rkey=rkey))

    def _find(self, session: _Session, rkey: str, *, strict: bool) -> Receipt | None:
        """Our record under ``rkey``, or None. ``strict``: raise when we cannot tell."""
        try:
            response = http.send(
                self._client,
                "GET",
                f"{self._pds}/xrpc/com.atproto.repo.getRecord",
                what=self._what,
                params={"repo": session.did, "collection": COLLECTION, "rkey": rkey},
            )
        except DeliveryError:
            if strict:
                raise
            return None
        if response.is_success:
            reply = http.json_body(response)
            uri = reply.get("uri") if isinstance(reply, dict) else None
            return self._receipt(str(uri) if uri else f"at://{session.did}/{COLLECTION}/{rkey}", rkey)
        reply = http.json_body(response)
        code = reply.get("error") if isinstance(reply, dict) else None
        if code == "RecordNotFound" or response.status_code == 404:
            return None
        if strict:
            raise http.error_for(response, what=f"{self._what}: cannot check for an earlier post", transient=True)
        return None

    # -- sessions --------------------------------------------------------------------

    def _secrets(self, session: _Session | None = None) -> list[str | None]:
        current = session or self._current
        return [self._password, *((current.access, current.refresh) if current else ())]

    def _call(self, session: _Session, method: str, body: dict[str, Any]) -> tuple[httpx.Response, _Session]:
        """POST an XRPC procedure with the session; on an expired session renew it once and retry."""
        response = self._post(session, method, body)
        if _expired(response):
            session = self._renew(session)
            response = self._post(session, method, body)
        return response, session

    def _post(self, session: _Session, method: str, body: dict[str, Any]) -> httpx.Response:
        return self._post_json(
            f"{self._pds}/xrpc/{method}", body, bearer=session.access, secrets=self._secrets(session)
        )

    def _session(self) -> _Session:
        with self._lock:
            if self._current is None:
                self._current = self._create_session()
            return self._current

    def _renew(self, stale: _Session) -> _Session:
        """A fresh session: another thread's if it already renewed, else refreshed or new."""
        with self._lock:
            if self._current is not None and self._current is not stale:
                return self._current
            self._current = None
            response = http.send(
                self._client,
                "POST",
                f"{self._pds}/xrpc/com.atproto.server.refreshSession",
                what=self._what,
                secrets=self._secrets(stale),
                headers={"Authorization": f"Bearer {stale.refresh}"},
            )
            session = self._parse_session(response) if response.is_success else None
            self._current = session or self._create_session()
            return self._current

    def _create_session(self) -> _Session:
        response = http.send(
            self._client,
            "POST",
            f"{self._pds}/xrpc/com.atproto.server.createSession",
            what=self._what,
            secrets=[self._password],
            content=http.dumps({"identifier": self.handle, "password": self._password}),
            headers={"Content-Type": "application/json"},
        )
        if not response.is_success:
            raise http.error_for(
                response,
                what=f"{self._what}: cannot log in as {self.handle}",
                secrets=[self._password],
                auth_hint=f"check {token_variable(self.name)}: it must be an app password for {self.handle}",
            )
        session = self._parse_session(response)
        if session is None:
            raise http.error_for(
                response,
                what=f"{self._what}: the PDS's session reply is not understood",
                transient=True,
                secrets=[self._password],
            )
        return session

    def _parse_session(self, response: httpx.Response) -> _Session | None:
        body = http.json_body(response)
        if not isinstance(body, dict):
            return None
        did, access, refresh = body.get("did"), body.get("accessJwt"), body.get("refreshJwt")
        if not (isinstance(did, str) and isinstance(access, str) and isinstance(refresh, str)):
            return None
        handle = str(body.get("handle") or self.handle)
        return _Session(did=did, handle=handle, access=access, refresh=refresh)


def _expired(response: httpx.Response) -> bool:
    if response.status_code == 401:
        return True
    if response.status_code != 400:
        return False
    body = http.json_body(response)
    return isinstance(body, dict) and body.get("error") in ("ExpiredToken", "InvalidToken")
