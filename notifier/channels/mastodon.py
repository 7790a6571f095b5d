"""Mastodon: one status per account per event occurrence.

``POST {instance}/api/v1/statuses`` (``api_base`` wins over ``instance`` when both are
set) with ``Authorization: Bearer <token>`` (an access token with ``write:statuses`` from
``NOTIFIER_<ACCOUNT>_TOKEN``) and an ``Idempotency-Key`` derived from the delivery. The
server remembers the key for an hour and answers a repeat with the status it already
made, so a retry after a lost reply cannot post twice.

A 429 carries ``X-RateLimit-Reset`` (an ISO 8601 time): the engine retries after it.
The 500-character limit is the server's to enforce (instances may allow more); its 422
comes back as a permanent error with Mastodon's message.
"""

from __future__ import annotations

import logging

import httpx

from notifier.channels import http
from notifier.channels.base import Delivery, PostPayload, Receipt
from notifier.config import Account, token_variable
from notifier.errors import InvalidValueError

log = logging.getLogger(__name__)


def idempotency_key(delivery: Delivery) -> str:
    """The ``Idempotency-Key`` of a delivery: the same on every attempt, unique per delivery."""
    return f"notifier-{delivery.key}"


class MastodonChannel(http.HttpChannel):
    """Posts an event's message to one Mastodon account."""

    platform = "mastodon"
    max_length = 500  # characters; every URL counts 23
    url_length = 23
    link_in_text = True

    def __init__(self, account: Account, *, token: str, client: httpx.Client | None = None) -> None:
        """``token`` is the account's access token; ``client`` is shared if given (and then
        not closed by :meth:`close`). The account needs ``instance`` or ``api_base``."""
        root = account.api_base or account.instance
        if not root:
            raise InvalidValueError(f"mastodon account {account.id!r} needs instance")
        super().__init__(account, client=client)
        self._token = token
        self._url = http.api_root(root) + "/api/v1/statuses"

    def __repr__(self) -> str:
        return f"MastodonChannel({self.name!r}, url={self._url!r})"

    def send(self, delivery: Delivery, payload: PostPayload) -> Receipt:
        """Post the rendered text (with the link) once, keyed so a retry returns the same status."""
        _, text = self._text(payload)
        headers = {"Idempotency-Key": idempotency_key(delivery)}
        response = self._post_json(self._url, {"status": text}, bearer=self._token, **headers)
        if not response.is_success:
            raise http.error_for(
                response,
                what=self._what,
                secrets=[self._token],
                auth_hint=f"check {token_variable(self.name)}: Mastodon needs an access token "
                "with the write:statuses scope",
            )
        body = http.json_body(response)
        status_id = str(body["id"]) if isinstance(body, dict) and body.get("id") is not None else None
        if status_id is None:
            log.warning("%s: posted, but the reply carried no status id", self._what)
            return Receipt()
        url = body.get("url") or body.get("uri") if isinstance(body, dict) else None
        log.info("%s: posted %s", self._what, status_id)
        return Receipt(provider_id=status_id, url=str(url) if url else None)
