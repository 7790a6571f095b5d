"""Facebook Pages: one post on the page's feed per event occurrence, through the Graph API.

``POST {api_base|https://graph.facebook.com}/{graph_version}/{page_id}/feed`` with the
form fields ``message``, ``link`` and ``access_token`` (a page access token with
``pages_manage_posts``, from ``NOTIFIER_<ACCOUNT>_TOKEN``). The token goes in the form
body, never the URL, so it cannot reach a log line.

The Graph API reports rate limits as 4xx replies with an error code: 4, 17, 32, 613 and
the 80001-80014 business-use-case limits are transient, as are codes 1 and 2 (temporary
service trouble) and anything marked ``is_transient``. When ``X-Business-Use-Case-Usage``
estimates when access returns, that is the retry hint. Other errors (190: bad token;
10 or 200: missing permission) are permanent.

The Graph API has no idempotency key: a post whose reply was lost to a timeout will be
posted again by the retry. Timeouts are generous for that reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import httpx

from notifier.channels import http
from notifier.channels.base import Delivery, PostPayload, Receipt
from notifier.config import Account, token_variable
from notifier.errors import InvalidValueError, TransientDeliveryError

log = logging.getLogger(__name__)

DEFAULT_API = "https://graph.facebook.com"
RATE_LIMIT_CODES = frozenset({4, 17, 32, 613, *range(80001, 80015)})
TRANSIENT_CODES = frozenset({1, 2})
AUTH_CODES = frozenset({10, 102, 190, 200})


class FacebookChannel(http.HttpChannel):
    """Posts an event's message and link to one Facebook Page."""

    platform = "facebook"
    max_length = 63_206  # characters; the link goes in its own field

    def __init__(self, account: Account, *, token: str, client: httpx.Client | None = None) -> None:
        """``token`` is the page access token; ``client`` is shared if given (and then not
        closed by :meth:`close`). The account needs ``page_id``."""
        if not account.page_id:
            raise InvalidValueError(f"facebook account {account.id!r} needs page_id")
        super().__init__(account, client=client)
        self._token = token
        self._page_id = account.page_id
        root = http.api_root(account.api_base or DEFAULT_API)
        self._url = f"{root}/{account.graph_version}/{account.page_id}/feed"

    def __repr__(self) -> str:
        return f"FacebookChannel({self.name!r}, url={self._url!r})"

    def send(self, delivery: Delivery, payload: PostPayload) -> Receipt:
        """Post the rendered text as ``message`` and the consultation link as ``link``, once."""
        post, text = self._text(payload)
        form = {"message": text, "access_token": self._token}
        if post.link:
            form["link"] = post.link
        response = http.send(self._client, "POST", self._url, what=self._what, secrets=[self._token], data=form)
        if response.is_success:
            body = http.json_body(response)
            post_id = str(body["id"]) if isinstance(body, dict) and body.get("id") is not None else None
            if post_id is None:
                log.warning("%s: posted, but the reply carried no post id", self._what)
                return Receipt()
            log.info("%s: posted %s", self._what, post_id)
            return Receipt(provider_id=post_id, url=self._post_url(post_id))
        error = _graph_error(response)
        code = error.get("code")
        transient: bool | None = None
        retry_after: float | None = None
        hint: str | None = None
        if code in RATE_LIMIT_CODES or code in TRANSIENT_CODES or error.get("is_transient") is True:
            transient = True
            retry_after = _regain_access_seconds(response)
        elif code in AUTH_CODES or response.status_code in (401, 403):
            hint = (
                f"check {token_variable(self.name)}: it must be a page access token for page "
                f"{self._page_id} with the pages_manage_posts permission"
            )
        exc = http.error_for(response, what=self._what, secrets=[self._token], transient=transient, hint=hint)
        if retry_after is not None and isinstance(exc, TransientDeliveryError) and exc.retry_after is None:
            exc.retry_after = retry_after
        raise exc

    def _post_url(self, post_id: str) -> str | None:
        page, sep, story = post_id.partition("_")
        if not sep or not page or not story:
            return None
        return f"https://www.facebook.com/{page}/posts/{story}"


def _graph_error(response: httpx.Response) -> Mapping[str, Any]:
    body = http.json_body(response)
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _regain_access_seconds(response: httpx.Response) -> float | None:
    """The longest ``estimated_time_to_regain_access`` (minutes) in the usage header, as seconds."""
    raw = response.headers.get("x-business-use-case-usage")
    if not raw:
        return None
    try:
        usage = json.loads(raw)
    except ValueError:
        return None
    minutes = [
        entry.get("estimated_time_to_regain_access")
        for entries in (usage.values() if isinstance(usage, dict) else ())
        if isinstance(entries, list)
        for entry in entries
        if isinstance(entry, dict)
    ]
    longest = max((m for m in minutes if isinstance(m, int | float) and m > 0), default=None)
    return None if longest is None else float(longest) * 60
