"""X (Twitter): one post per account per event occurrence, through the v2 API.

``POST {api_base|https://api.x.com}/2/tweets`` with ``{"text": …}`` and an OAuth 2.0
user-context bearer token (scopes ``tweet.write``, ``tweet.read``, ``users.read``) from
``NOTIFIER_<ACCOUNT>_TOKEN``.

X has no idempotency key. What it has is a refusal of duplicate content: a post with the
same text as a recent one gets 403 "duplicate content". So when a retry (attempt > 1) is
refused that way, the earlier attempt landed (its reply was lost to a timeout, say): the
delivery is recorded as sent, without the post id, and nothing is posted twice. On a
first attempt the same refusal is permanent: an earlier occurrence already said this.

A 429 carries ``x-rate-limit-reset`` (Unix seconds): the engine retries after it.
"""

from __future__ import annotations

import logging

import httpx

from notifier.channels import http, limits
from notifier.channels.base import Delivery, PostPayload, Receipt
from notifier.config import Account, token_variable

log = logging.getLogger(__name__)

DEFAULT_API = "https://api.x.com"
STATUS_URL = "https://x.com/i/web/status/{id}"


class XChannel(http.HttpChannel):
    """Posts an event's message to one X account."""

    platform = "x"
    max_length = 280  # twitter-text's weighted characters; every URL counts 23
    counting = limits.Counting.WEIGHTED
    url_length = 23
    link_in_text = True

    def __init__(self, account: Account, *, token: str, client: httpx.Client | None = None) -> None:
        """``token`` is the account's OAuth 2.0 user access token; ``client`` is shared if given
        (and then not closed by :meth:`close`)."""
        super().__init__(account, client=client)
        self._token = token
        self._url = http.api_root(account.api_base or DEFAULT_API) + "/2/tweets"

    def __repr__(self) -> str:
        return f"XChannel({self.name!r}, url={self._url!r})"

    def send(self, delivery: Delivery, payload: PostPayload) -> Receipt:
        """Post the rendered text (with the link) once; see the module doc for retries."""
        _, text = self._text(payload)
        response = self._post_json(self._url, {"text": text}, bearer=self._token)
        if response.is_success:
            body = http.json_body(response)
            data = body.get("data") if isinstance(body, dict) else None
            tweet_id = str(data["id"]) if isinstance(data, dict) and data.get("id") is not None else None
            if tweet_id is None:
                log.warning("%s: posted, but the reply carried no post id", self._what)
                return Receipt()
            log.info("%s: posted %s", self._what, tweet_id)
            return Receipt(provider_id=tweet_id, url=STATUS_URL.format(id=tweet_id))
        if response.status_code == 403 and _is_duplicate(response):
            if delivery.attempt > 1:
                log.info("%s: X says the post is a duplicate: an earlier attempt landed", self._what)
                return Receipt()
            raise http.error_for(
                response,
                what=self._what,
                secrets=[self._token],
                transient=False,
                hint="X refuses a post identical to a recent one from this account",
            )
        raise http.error_for(
            response,
            what=self._what,
            secrets=[self._token],
            auth_hint=f"check {token_variable(self.name)}: X needs an OAuth 2.0 user-context "
            "access token with the tweet.write scope",
        )


def _is_duplicate(response: httpx.Response) -> bool:
    return "duplicate content" in response.text.lower()
