"""Webhooks: tell a website, CMS or chat tool about an event with one signed JSON POST.

``POST <url>`` with a JSON body::

    {"event": "opened", "event_at": "…", "account": "website",
     "consultation": {"id": "…", "title": "…", "url": "…"},
     "opens": "…", "closes": "…", "url": "…", "text": "…", "delivery": "<key>"}

(times are ISO 8601 with their offset) and the headers ``X-Notifier-Signature:
sha256=<hex HMAC-SHA256 of the exact body bytes, keyed with NOTIFIER_SECRET_KEY>``,
``X-Notifier-Delivery`` (the delivery key, the same on every attempt: receivers use it to
ignore a repeat after a lost reply) and ``X-Notifier-Event``. Receivers check the
signature with :func:`verify_signature`, or the same few lines in their own language.

Any 2xx is success. The receipt's id is the reply's JSON ``id`` or its ``X-Request-Id``
header when it gives one, else the delivery key. Redirects are not followed (a 3xx is a
permanent error naming the new address). 408, 429 and 5xx are retried, honouring
``Retry-After``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

import httpx

from notifier.channels import http
from notifier.channels.base import Delivery, PostPayload, Receipt
from notifier.config import Account
from notifier.errors import InvalidValueError

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Notifier-Signature"


def sign(body: bytes, key: bytes) -> str:
    """The ``X-Notifier-Signature`` value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, key: bytes) -> bool:
    """True when ``header`` is the signature of ``body`` under ``key`` (compared in constant time)."""
    if not header:
        return False
    return hmac.compare_digest(sign(body, key).encode(), header.strip().encode("utf-8", "replace"))


def webhook_body(delivery: Delivery, payload: PostPayload, *, account: str) -> bytes:
    """The exact bytes a webhook posts (and signs) for ``payload``."""
    return http.dumps(
        {
            "event": payload.event,
            "event_at": payload.event_at.isoformat(),
            "account": account,
            "consultation": {
                "id": payload.consultation_id,
                "title": payload.consultation_title,
                "url": payload.link,
            },
            "opens": payload.opens.isoformat(),
            "closes": payload.closes.isoformat(),
            "url": payload.link,
            "text": payload.text,
            "delivery": delivery.key,
        }
    )


class WebhookChannel(http.HttpChannel):
    """POSTs each event, signed, to one URL."""

    platform = "webhook"

    def __init__(self, account: Account, *, secret: bytes, client: httpx.Client | None = None) -> None:
        """``secret`` signs every body (``NOTIFIER_SECRET_KEY``); ``client`` is shared if given
        (and then not closed by :meth:`close`). The account needs ``url``."""
        if not account.url:
            raise InvalidValueError(f"webhook account {account.id!r} needs url")
        super().__init__(account, client=client)
        self.url = account.url
        self._secret = secret
        self._secrets = [secret.decode("utf-8", "replace")]
        self._what = f"webhook {account.id!r}"

    def __repr__(self) -> str:
        return f"WebhookChannel({self.name!r}, url={self.url!r})"

    def send(self, delivery: Delivery, payload: PostPayload) -> Receipt:
        """POST the signed event once; any 2xx reply is success."""
        body = webhook_body(delivery, payload, account=self.name)
        response = http.send(
            self._client,
            "POST",
            self.url,
            what=self._what,
            secrets=self._secrets,
            content=body,
            headers={
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(body, self._secret),
                "X-Notifier-Delivery": delivery.key,
                "X-Notifier-Event": payload.event,
            },
        )
        if not response.is_success:
            raise http.error_for(
                response,
                what=self._what,
                secrets=self._secrets,
                auth_hint="the receiver refused the request: does it check X-Notifier-Signature "
                "with the same NOTIFIER_SECRET_KEY?",
            )
        reply = http.json_body(response)
        provider_id: str | None = None
        url: str | None = None
        if isinstance(reply, dict):
            if isinstance(reply.get("id"), str | int) and not isinstance(reply.get("id"), bool):
                provider_id = str(reply["id"])
            if isinstance(reply.get("url"), str):
                url = reply["url"]
        provider_id = provider_id or response.headers.get("x-request-id") or delivery.key
        log.info("%s: delivered (HTTP %s)", self._what, response.status_code)
        return Receipt(provider_id=provider_id, url=url)
