"""Social and web channels against a real HTTP server on loopback (``tests/platforms.py``).

Each test drives a channel the way the delivery engine does: ``send`` once, and when that
raises :class:`TransientDeliveryError`, ``send`` again with the same delivery and
``attempt=2`` (the engine's retry; it does the waiting). What is asserted is what a user
would notice: how many posts the platform accepted, what they said and linked to, with
which credentials, and what the ledger would record.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from notifier.channels import http
from notifier.channels.base import Channel, Delivery, PostPayload, Receipt
from notifier.channels.bluesky import BlueskyChannel, link_facets, record_key
from notifier.channels.facebook import FacebookChannel
from notifier.channels.mastodon import MastodonChannel
from notifier.channels.outbox import OutboxChannel, outbox_path
from notifier.channels.registry import CHANNELS, build_account_channel, is_outbox
from notifier.channels.webhook import WebhookChannel, verify_signature
from notifier.channels.x import XChannel
from notifier.config import Account, Settings
from notifier.errors import PermanentDeliveryError, TransientDeliveryError
from tests.platforms import Platforms, Scripted

LINK = "https://www.pcc.example/consultations/soc-strategy"
OPENS = datetime(2019, 7, 9, 8, 0, tzinfo=UTC)
CLOSES = datetime(2019, 8, 15, 22, 59, tzinfo=UTC)
LIVE = ("x", "facebook", "mastodon", "bluesky", "webhook")


def payload(text: str | None = None, *, link: str = LINK) -> PostPayload:
    """A rendered post for the opened event of the SOC strategy consultation."""
    return PostPayload(
        text=text if text is not None else f"Have your say on our Serious and Organised Crime Strategy: {LINK}",
        link=link,
        consultation_id="soc-strategy-2019",
        consultation_title="Serious and Organised Crime Strategy",
        event="opened",
        event_at=OPENS,
        opens=OPENS,
        closes=CLOSES,
    )


def delivery(account: str, *, attempt: int = 1, occurrence: str = "soc-strategy-2019/opened/1") -> Delivery:
    """The one post of ``account`` for an occurrence."""
    return Delivery(occurrence_id=occurrence, channel=account, recipient="*", attempt=attempt)


def retry(d: Delivery) -> Delivery:
    """The engine's next attempt of ``d``."""
    return Delivery(d.occurrence_id, d.channel, d.recipient, attempt=d.attempt + 1)


@pytest.fixture
def platforms() -> Iterator[Platforms]:
    """The five platforms' APIs on a loopback port."""
    with Platforms() as server:
        yield server


def client(timeout: float = 5.0) -> httpx.Client:
    """A posting client that ignores proxy settings, so loopback stays loopback."""
    return http.make_client(timeout=timeout, trust_env=False)


@pytest.fixture(scope="module")
def shared_client() -> Iterator[httpx.Client]:
    """One posting client for the module's channels (making one costs tens of milliseconds)."""
    with client() as c:
        yield c


def make_channel(platform: str, server: Platforms, *, c: httpx.Client, wrong: bool = False) -> Any:
    """The live channel of ``platform`` pointed at ``server`` (``wrong``: with a bad credential)."""
    bad = "not-the-right-credential-42"
    if platform == "x":
        return XChannel(
            Account(id="pcc-x", platform="x", api_base=server.url),
            token=bad if wrong else server.x_token,
            client=c,
        )
    if platform == "facebook":
        account = Account(id="pcc-facebook", platform="facebook", page_id=server.page_id, api_base=server.url)
        return FacebookChannel(account, token=bad if wrong else server.facebook_token, client=c)
    if platform == "mastodon":
        return MastodonChannel(
            Account(id="pcc-mastodon", platform="mastodon", instance=server.url),
            token=bad if wrong else server.mastodon_token,
            client=c,
        )
    if platform == "bluesky":
        account = Account(id="pcc-bluesky", platform="bluesky", handle=server.bluesky_handle, api_base=server.url)
        return BlueskyChannel(account, token=bad if wrong else server.bluesky_password, client=c)
    account = Account(id="website", platform="webhook", url=f"{server.url}/hooks/website")
    return WebhookChannel(account, secret=bad.encode() if wrong else server.webhook_key, client=c)


@pytest.fixture
def channel_for(platforms: Platforms, shared_client: httpx.Client) -> Iterator[Callable[..., Any]]:
    """A factory of channels on ``platforms``; ``timeout=`` gives one its own short-timeout client."""
    own: list[httpx.Client] = []

    def factory(platform: str, *, timeout: float | None = None, wrong: bool = False) -> Any:
        c = shared_client
        if timeout is not None:
            own.append(client(timeout))
            c = own[-1]
        return make_channel(platform, platforms, c=c, wrong=wrong)

    yield factory
    for c in own:
        c.close()


def secret_of(platform: str, server: Platforms) -> str:
    """The credential a channel of ``platform`` holds."""
    return {
        "x": server.x_token,
        "facebook": server.facebook_token,
        "mastodon": server.mastodon_token,
        "bluesky": server.bluesky_password,
        "webhook": server.webhook_key.decode(),
    }[platform]


# ---------------------------------------------------------------------------
# One post each, with the right auth, body and link
# ---------------------------------------------------------------------------


def test_x_posts_once_with_bearer_token_and_link(platforms: Platforms, channel_for: Callable[..., Any]) -> None:
    receipt = channel_for("x").send(delivery("pcc-x"), payload())

    [post] = platforms.accepted("x")
    assert post.headers["authorization"] == f"Bearer {platforms.x_token}"
    assert post.headers["content-type"] == "application/json"
    assert post.json() == {"text": f"Have your say on our Serious and Organised Crime Strategy: {LINK}"}
    assert receipt.provider_id and receipt.provider_id.isdigit()
    assert receipt.url == f"https://x.com/i/web/status/{receipt.provider_id}"


def test_x_adds_the_link_when_the_template_left_it_out(platforms: Platforms, channel_for: Callable[..., Any]) -> None:
    channel_for("x").send(delivery("pcc-x"), payload("The consultation is open."))

    [post] = platforms.accepted("x")
    assert post.json()["text"] == f"The consultation is open.\n\n{LINK}"


def test_facebook_posts_message_and_link_to_the_page_feed(
    platforms: Platforms, channel_for: Callable[..., Any]
) -> None:
    receipt = channel_for("facebook").send(delivery("pcc-facebook"), payload("The consultation is open."))

    [post] = platforms.accepted("facebook")
    assert post.path == f"/v26.0/{platforms.page_id}/feed"
    assert post.form() == {
        "message": "The consultation is open.",
        "link": LINK,
        "access_token": platforms.facebook_token,
    }
    assert post.query == {}  # the token is never in the URL
    page, _, story = (receipt.provider_id or "").partition("_")
    assert page == platforms.page_id
    assert receipt.url == f"https://www.facebook.com/{page}/posts/{story}"


def test_facebook_uses_the_accounts_graph_version(platforms: Platforms) -> None:
    account = Account(
        id="pcc-facebook",
        platform="facebook",
        page_id=platforms.page_id,
        api_base=platforms.url,
        graph_version="v19.0",
    )
    with client() as c:
        FacebookChannel(account, token=platforms.facebook_token, client=c).send(delivery("pcc-facebook"), payload())

    assert [p.path for p in platforms.accepted("facebook")] == [f"/v19.0/{platforms.page_id}/feed"]


def test_mastodon_posts_with_bearer_token_and_an_idempotency_key(
    platforms: Platforms, channel_for: Callable[..., Any]
) -> None:
    d = delivery("pcc-mastodon")
    receipt = channel_for("mastodon").send(d, payload())

    [post] = platforms.accepted("mastodon")
    assert post.headers["authorization"] == f"Bearer {platforms.mastodon_token}"
    assert d.key in post.headers["idempotency-key"]
    assert post.json() == {"status": f"Have your say on our Serious and Organised Crime Strategy: {LINK}"}
    assert receipt.url == f"{platforms.url}/@pcc/{receipt.provider_id}"


def test_mastodon_idempotency_key_differs_per_occurrence(platforms: Platforms, channel_for: Callable[..., Any]) -> None:
    channel = channel_for("mastodon")
    first = channel.send(delivery("pcc-mastodon"), payload())
    again = channel.send(delivery("pcc-mastodon", occurrence="soc-strategy-2019/opened/2"), payload())

    assert len(platforms.accepted("mastodon")) == 2  # `send --again` is a new occurrence: a new post
    assert first.provider_id != again.provider_id


def test_bluesky_posts_a_record_with_link_facets_at_byte_offsets(
    platforms: Platforms, channel_for: Callable[..., Any]
) -> None:
    text = f"Consultation ouverte — “Stratégie” 🚔: {LINK} et aussi https://pcc.example/é"
    d = delivery("pcc-bluesky")
    receipt = channel_for("bluesky").send(d, payload(text))

    [session] = platforms.seen("bluesky-session")
    assert session.json() == {"identifier": "pcc.example", "password": platforms.bluesky_password}
    [post] = platforms.accepted("bluesky")
    assert post.headers["authorization"].startswith("Bearer access-")
    body = post.json()
    assert body["repo"] == platforms.bluesky_did
    assert body["collection"] == "app.bsky.feed.post"
    assert body["rkey"] == record_key(d)
    record = body["record"]
    assert record["text"] == text
    datetime.fromisoformat(record["createdAt"])
    raw = text.encode("utf-8")
    linked = [
        (raw[f["index"]["byteStart"] : f["index"]["byteEnd"]].decode(), f["features"][0]["uri"])
        for f in record["facets"]
    ]
    assert linked == [(LINK, LINK), ("https://pcc.example/é", "https://pcc.example/é")]
    assert record["facets"][0]["features"][0]["$type"] == "app.bsky.richtext.facet#link"
    assert record["embed"]["external"]["uri"] == LINK
    assert receipt.provider_id == f"at://{platforms.bluesky_did}/app.bsky.feed.post/{body['rkey']}"
    assert receipt.url == f"https://bsky.app/profile/pcc.example/post/{body['rkey']}"


def test_bluesky_reuses_its_session(platforms: Platforms, channel_for: Callable[..., Any]) -> None:
    channel = channel_for("bluesky")
    channel.send(delivery("pcc-bluesky"), payload("first"))
    channel.send(delivery("pcc-bluesky", occurrence="soc-strategy-2019/reminder/1"), payload("second"))

    assert len(platforms.accepted("bluesky")) == 2
    assert platforms.sessions_created == 1


def test_bluesky_renews_an_expired_session_once(platforms: Platforms, channel_for: Callable[..., Any]) -> None:
    channel = channel_for("bluesky")
    channel.send(delivery("pcc-bluesky"), payload("first"))
    platforms.expire_sessions()

    channel.send(delivery("pcc-bluesky", occurrence="soc-strategy-2019/reminder/1"), payload("second"))

    texts = [p.json()["record"]["text"] for p in platforms.accepted("bluesky")]
    assert texts == [f"first\n\n{LINK}", f"second\n\n{LINK}"]
    assert len(platforms.seen("bluesky-refresh")) == 1


def test_webhook_posts_a_signed_json_body(platforms: Platforms, channel_for: Callable[..., Any]) -> None:
    d = delivery("website")
    receipt = channel_for("webhook").send(d, payload("The consultation is open."))

    [post] = platforms.accepted("webhook")
    assert post.path == "/hooks/website"
    assert json.loads(post.body) == {
        "event": "opened",
        "event_at": OPENS.isoformat(),
        "account": "website",
        "consultation": {
            "id": "soc-strategy-2019",
            "title": "Serious and Organised Crime Strategy",
            "url": LINK,
        },
        "opens": OPENS.isoformat(),
        "closes": CLOSES.isoformat(),
        "url": LINK,
        "text": "The consultation is open.",
        "delivery": d.key,
    }
    signature = post.headers["x-notifier-signature"]
    assert signature.startswith("sha256=")
    assert verify_signature(post.body, signature, platforms.webhook_key)
    assert not verify_signature(post.body, signature, b"another-key")
    assert not verify_signature(post.body + b" ", signature, platforms.webhook_key)
    assert not verify_signature(post.body, None, platforms.webhook_key)
    assert post.headers["x-notifier-delivery"] == d.key
    assert receipt.provider_id and receipt.provider_id.startswith("wh-")


@pytest.mark.parametrize("status", [201, 202, 204])
def test_webhook_any_2xx_is_success(platforms: Platforms, channel_for: Callable[..., Any], status: int) -> None:
    platforms.webhook_reply = (status, {}, b"")
    d = delivery("website")

    receipt = channel_for("webhook").send(d, payload())

    assert len(platforms.accepted("webhook")) == 1
    assert receipt.provider_id == d.key


def test_webhook_redirect_is_permanent_and_names_the_new_address(
    platforms: Platforms, channel_for: Callable[..., Any]
) -> None:
    platforms.script("webhook", Scripted(301, {"Location": "https://cms.example/new-hook"}, ""))

    with pytest.raises(PermanentDeliveryError, match=r"redirected to https://cms\.example/new-hook"):
        channel_for("webhook").send(delivery("website"), payload())


# ---------------------------------------------------------------------------
# Transient failures: the engine retries, the platform ends up with one post
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "wait"),
    [
        ("x", 120),
        ("mastodon", 300),
        ("bluesky", 90),
        ("facebook", 300),
        ("webhook", 30),
    ],
)
def test_rate_limited_then_success_waits_as_told_and_posts_once(
    platforms: Platforms, channel_for: Callable[..., Any], platform: str, wait: int
) -> None:
    channel = channel_for(platform)
    platforms.rate_limit(platform, wait)
    d = delivery(channel.name)

    with pytest.raises(TransientDeliveryError) as caught:
        channel.send(d, payload())
    assert caught.value.retry_after is not None
    assert wait - 2 <= caught.value.retry_after <= wait + 1
    assert platforms.accepted(platform) == []

    receipt = channel.send(retry(d), payload())

    assert len(platforms.accepted(platform)) == 1
    assert receipt.provider_id


def test_bluesky_rate_limited_login_is_transient(platforms: Platforms, channel_for: Callable[..., Any]) -> None:
    platforms.rate_limit("bluesky-session", 60)
    channel = channel_for("bluesky")
    d = delivery("pcc-bluesky")

    with pytest.raises(TransientDeliveryError) as caught:
        channel.send(d, payload())
    assert caught.value.retry_after is not None and 58 <= caught.value.retry_after <= 61

    channel.send(retry(d), payload())
    assert len(platforms.accepted("bluesky")) == 1


@pytest.mark.parametrize("platform", LIVE)
def test_server_error_then_success_posts_once(
    platforms: Platforms, channel_for: Callable[..., Any], platform: str
) -> None:
    channel = channel_for(platform)
    platforms.fail(platform, 500, message="Something went wrong")
    d = delivery(channel.name)

    with pytest.raises(TransientDeliveryError, match="500") as caught:
        channel.send(d, payload())
    # X sends x-rate-limit-reset on every reply; it is no reason to wait after a 500.
    assert caught.value.retry_after is None
    assert caught.value.provider_reply and "Something went wrong" in caught.value.provider_reply

    channel.send(retry(d), payload())
    assert len(platforms.accepted(platform)) == 1


def test_service_unavailable_honours_retry_after_date(platforms: Platforms, channel_for: Callable[..., Any]) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    platforms.fail("webhook", 503, headers={"Retry-After": when})

    with pytest.raises(TransientDeliveryError) as caught:
        channel_for("webhook").send(delivery("website"), payload())
    assert caught.value.retry_after is not None and 118 <= caught.value.retry_after <= 121


@pytest.mark.parametrize("platform", ["x", "mastodon", "bluesky"])
def test_timeout_after_the_post_landed_still_ends_with_one_post(
    platforms: Platforms, channel_for: Callable[..., Any], platform: str
) -> None:
    channel = channel_for(platform, timeout=0.5)
    platforms.slow(platform)
    d = delivery(channel.name)

    with pytest.raises(TransientDeliveryError, match="timed out"):
        channel.send(d, payload())
    assert len(platforms.accepted(platform)) == 1  # it landed, though we never heard

    receipt = channel.send(retry(d), payload())

    assert len(platforms.accepted(platform)) == 1
    assert isinstance(receipt, Receipt)
    if platform == "x":  # X refused the repeat as a duplicate: we took that as sent
        assert [r.route for r in platforms.seen("x")] == ["x", "x"]
    if platform == "mastodon":  # the key brought back the same status
        assert receipt.url == f"{platforms.url}/@pcc/{receipt.provider_id}"
    if platform == "bluesky":
        assert receipt.provider_id == f"at://{platforms.bluesky_did}/app.bsky.feed.post/{record_key(d)}"


def test_bluesky_taken_record_key_on_a_first_attempt_is_our_post(
    platforms: Platforms, channel_for: Callable[..., Any]
) -> None:
    """Were the attempt count lost, the PDS's error for a taken key still ends in success."""
    channel = channel_for("bluesky")
    d = delivery("pcc-bluesky")
    first = channel.send(d, payload())

    again = channel.send(d, payload())

    assert [r.route for r in platforms.seen("bluesky")] == ["bluesky", "bluesky"]
    assert len(platforms.accepted("bluesky")) == 1
    assert again == first


def test_x_duplicate_on_a_first_attempt_is_permanent(platforms: Platforms, channel_for: Callable[..., Any]) -> None:
    channel = channel_for("x")
    channel.send(delivery("pcc-x"), payload())

    with pytest.raises(PermanentDeliveryError, match="duplicate content"):
        channel.send(delivery("pcc-x", occurrence="soc-strategy-2019/opened/2"), payload())
    assert len(platforms.accepted("x")) == 1


def test_connection_refused_is_transient(platforms: Platforms) -> None:
    port = int(platforms.url.rsplit(":", 1)[1])
    platforms.close()
    account = Account(id="pcc-x", platform="x", api_base=f"http://127.0.0.1:{port}")
    with client() as c, pytest.raises(TransientDeliveryError, match=r"cannot reach http://127\.0\.0\.1"):
        XChannel(account, token="secret-token-value", client=c).send(delivery("pcc-x"), payload())


# ---------------------------------------------------------------------------
# Permanent failures and secrecy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "says"),
    [
        ("x", "HTTP 401 Unauthorized: Unauthorized; check NOTIFIER_PCC_X_TOKEN"),
        (
            "facebook",
            "Invalid OAuth access token - Cannot parse access token (code 190); check NOTIFIER_PCC_FACEBOOK_TOKEN",
        ),
        ("mastodon", "HTTP 401 Unauthorized: The access token is invalid; check NOTIFIER_PCC_MASTODON_TOKEN"),
        (
            "bluesky",
            "cannot log in as pcc.example: HTTP 401 Unauthorized: AuthenticationRequired: Invalid identifier "
            "or password; check NOTIFIER_PCC_BLUESKY_TOKEN",
        ),
        ("webhook", "HTTP 401 Unauthorized: bad signature; the receiver refused"),
    ],
)
def test_refused_credentials_are_permanent_with_a_clear_message(
    platforms: Platforms, channel_for: Callable[..., Any], platform: str, says: str
) -> None:
    channel = channel_for(platform, wrong=True)

    with pytest.raises(PermanentDeliveryError) as caught:
        channel.send(delivery(channel.name), payload())

    assert says in str(caught.value)
    assert "not-the-right-credential-42" not in str(caught.value)
    assert "not-the-right-credential-42" not in (caught.value.provider_reply or "")
    assert platforms.accepted(platform) == []


def _encodings(secret: str) -> dict[str, str]:
    """Spellings of ``secret`` a far side may echo (in a URL it logs, a JSON or HTML reply)."""
    every_byte = "".join(f"%{b:02X}" for b in secret.encode())
    return {
        "percent-encoded, every byte": every_byte,
        "percent-encoded, lower-case hex": every_byte.lower(),
        "percent-encoded twice": every_byte.replace("%", "%25"),
        "percent-encoded, hyphens only": secret.replace("-", "%2D"),
        "JSON escapes": "".join(f"\\u{ord(c):04x}" for c in secret),
        "HTML entities": "".join(f"&#{ord(c)};" for c in secret),
        "base64": base64.b64encode(secret.encode()).decode(),
    }


@pytest.mark.parametrize("encoding", list(_encodings("x")))
@pytest.mark.parametrize("platform", ["x", "facebook"])
def test_a_credential_echoed_in_another_encoding_never_reaches_errors(
    platforms: Platforms, channel_for: Callable[..., Any], platform: str, encoding: str
) -> None:
    secret = secret_of(platform, platforms)
    echoed = _encodings(secret)[encoding]
    channel = channel_for(platform)
    platforms.fail(platform, 400, message=f"bad request for https://api.example/post?token={echoed}&x=1 ({echoed})")
    with pytest.raises((TransientDeliveryError, PermanentDeliveryError)) as caught:
        channel.send(delivery(channel.name), payload())
    for text in (str(caught.value), caught.value.provider_reply or ""):
        assert echoed not in text and secret not in text, text
        assert echoed.lower() not in text.lower(), text
    assert "***" in str(caught.value)


@pytest.mark.parametrize("platform", LIVE)
def test_a_credential_never_reaches_logs_errors_or_reprs(
    platforms: Platforms, channel_for: Callable[..., Any], platform: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = secret_of(platform, platforms)
    channel = channel_for(platform)
    platforms.fail(platform, 500, message=f"echoing your credential {secret} back")
    platforms.fail(platform, 400, message=f"echoing your credential {secret} back")
    errors = []
    for attempt in (1, 2):
        with pytest.raises((TransientDeliveryError, PermanentDeliveryError)) as caught:
            channel.send(delivery(channel.name, attempt=attempt), payload())
        errors.append(caught.value)
    channel.send(delivery(channel.name, attempt=3), payload())

    for error in errors:
        assert secret not in str(error)
        assert "***" in (error.provider_reply or "")
        assert secret not in (error.provider_reply or "")
    assert secret not in repr(channel)
    assert secret not in caplog.text
    assert "HTTP Request: POST" in caplog.text  # httpx did log: just not the secret


def test_x_post_over_280_weighted_characters_is_refused_before_posting(
    platforms: Platforms, channel_for: Callable[..., Any]
) -> None:
    text = "字" * 141  # CJK weighs 2: 282
    with pytest.raises(PermanentDeliveryError, match="over x's limit of 280"):
        channel_for("x").send(delivery("pcc-x"), payload(text, link=""))
    assert platforms.seen("x") == []


def test_x_counts_each_url_as_23(platforms: Platforms, channel_for: Callable[..., Any]) -> None:
    long_link = "https://www.pcc.example/" + "a" * 200
    text = "a" * (280 - 23 - 1) + " " + long_link
    channel_for("x").send(delivery("pcc-x"), payload(text, link=long_link))
    assert len(platforms.accepted("x")) == 1


def test_bluesky_post_over_300_graphemes_is_refused_before_posting(
    platforms: Platforms, channel_for: Callable[..., Any]
) -> None:
    text = "👩‍👩‍👧" * 301  # one grapheme each, however many code points
    with pytest.raises(PermanentDeliveryError, match="over bluesky's limit of 300"):
        channel_for("bluesky").send(delivery("pcc-bluesky"), payload(text, link=""))
    assert platforms.seen("bluesky") == []


def test_mastodon_validation_error_is_permanent_with_its_message(
    platforms: Platforms, channel_for: Callable[..., Any]
) -> None:
    with pytest.raises(PermanentDeliveryError, match="Text can't be blank"):
        channel_for("mastodon").send(delivery("pcc-mastodon"), payload("", link=""))


@pytest.mark.parametrize(("account", "platform"), [("pcc-mastodon", "mastodon"), ("pcc-x", "x")])
def test_a_post_over_the_limit_is_refused_before_it_reaches_the_platform(
    platforms: Platforms, channel_for: Callable[..., Any], account: str, platform: str
) -> None:
    with pytest.raises(PermanentDeliveryError, match=f"over {platform}'s limit"):
        channel_for(platform).send(delivery(account), payload("x" * 501, link=""))
    assert platforms.seen(platform) == []


def test_unsupported_scheme_is_permanent() -> None:
    account = Account(id="pcc-x", platform="x", api_base="ftp://api.example")
    with client() as c, pytest.raises(PermanentDeliveryError, match="bad URL"):
        XChannel(account, token="t0ken-value", client=c).send(delivery("pcc-x"), payload())


# ---------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------


def test_record_key_is_a_stable_tid_per_delivery() -> None:
    d = delivery("pcc-bluesky")
    key = record_key(d)
    assert key == record_key(retry(d))
    assert key != record_key(delivery("pcc-bluesky", occurrence="soc-strategy-2019/opened/2"))
    assert len(key) == 13
    assert key[0] in "234567abcdefghij"
    assert set(key) <= set("234567abcdefghijklmnopqrstuvwxyz")


def test_link_facets_count_utf8_bytes() -> None:
    text = "é " + LINK
    [facet] = link_facets(text)
    assert facet["index"] == {"byteStart": 3, "byteEnd": 3 + len(LINK)}


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (429, {"retry-after": "7"}, 7.0),
        (503, {"retry-after": "7"}, 7.0),
        (429, {"x-rate-limit-reset": "1700000100"}, 100.0),
        (429, {"X-RateLimit-Reset": "2023-11-14T22:15:00Z"}, 100.0),
        (429, {"ratelimit-reset": "1700000100"}, 100.0),
        (429, {"retry-after": "Tue, 14 Nov 2023 22:15:00 GMT"}, 100.0),
        (429, {"x-rate-limit-reset": "1699999000"}, 0.0),  # already past
        (500, {"x-rate-limit-reset": "1700000100"}, None),
        (429, {"retry-after": "soon"}, None),
        (429, {}, None),
    ],
)
def test_retry_after(status: int, headers: dict[str, str], expected: float | None) -> None:
    response = httpx.Response(status, headers=headers)
    assert http.retry_after(response, now=1_700_000_000.0) == expected


# ---------------------------------------------------------------------------
# The outbox and the registry
# ---------------------------------------------------------------------------


def test_outbox_writes_one_line_per_delivery(tmp_path: Path) -> None:
    account = Account(id="pcc-x", platform="x")
    outbox = OutboxChannel(account, data_dir=tmp_path)
    d = delivery("pcc-x")

    first = outbox.send(d, payload("The consultation is open."))
    again = outbox.send(retry(d), payload("The consultation is open."))
    other = outbox.send(delivery("pcc-x", occurrence="soc-strategy-2019/closed/1"), payload("Closed."))

    lines = (tmp_path / "outbox" / "social" / "pcc-x.jsonl").read_text().splitlines()
    assert len(lines) == 2
    entry = json.loads(lines[0])
    assert entry["account"] == "pcc-x"
    assert entry["delivery"] == d.key
    assert entry["text"] == f"The consultation is open.\n\n{LINK}"  # as X would have had it
    assert entry["link"] == LINK
    assert entry["event"] == "opened"
    assert entry["consultation"] == "soc-strategy-2019"
    datetime.fromisoformat(entry["time"])
    assert first == again == Receipt(provider_id="outbox:pcc-x.jsonl:1", outbox=True)
    assert other.provider_id == "outbox:pcc-x.jsonl:2"


def test_outbox_lines_never_interleave_across_threads(tmp_path: Path) -> None:
    account = Account(id="pcc-facebook", platform="facebook", page_id="1")
    long_text = "word " * 4000  # bigger than a pipe buffer, so an unlocked write could tear

    def post(worker: int) -> None:
        outbox = OutboxChannel(account, data_dir=tmp_path)  # its own file handle, like another process
        for i in range(10):
            outbox.send(delivery("pcc-facebook", occurrence=f"occ-{worker}-{i}"), payload(long_text))

    threads = [threading.Thread(target=post, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    lines = outbox_path(tmp_path, "pcc-facebook").read_text().split("\n")
    assert lines[-1] == ""
    entries = [json.loads(line) for line in lines[:-1]]
    assert len(entries) == 80
    assert len({e["delivery"] for e in entries}) == 80


def test_is_outbox_follows_the_contract() -> None:
    settings = Settings(env={"NOTIFIER_PCC_X_TOKEN": "t0ken"})
    assert not is_outbox(Account(id="pcc-x", platform="x"), settings)
    assert is_outbox(Account(id="pcc-mastodon", platform="mastodon", instance="https://m.example"), settings)
    assert not is_outbox(Account(id="website", platform="webhook", url="https://cms.example/h"), settings)
    assert is_outbox(Account(id="website", platform="webhook", url="https://cms.example/h", outbox=True), settings)


def test_build_account_channel_picks_live_or_outbox(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        secret_key_env="k3y-value",
        env={"NOTIFIER_PCC_X_TOKEN": "t0ken", "NOTIFIER_PCC_BLUESKY_TOKEN": "app-password"},
    )
    accounts = {
        "pcc-x": Account(id="pcc-x", platform="x"),
        "pcc-facebook": Account(id="pcc-facebook", platform="facebook", page_id="1"),
        "pcc-bluesky": Account(id="pcc-bluesky", platform="bluesky", handle="pcc.example"),
        "website": Account(id="website", platform="webhook", url="https://cms.example/h"),
        "quiet": Account(id="quiet", platform="webhook", url="https://cms.example/h", outbox=True),
    }
    built: dict[str, Channel[PostPayload]] = {k: build_account_channel(a, settings) for k, a in accounts.items()}
    try:
        assert isinstance(built["pcc-x"], XChannel)
        assert isinstance(built["pcc-facebook"], OutboxChannel)
        assert isinstance(built["pcc-bluesky"], BlueskyChannel)
        assert isinstance(built["website"], WebhookChannel)
        assert isinstance(built["quiet"], OutboxChannel)
        assert all(c.name == k for k, c in built.items())
        outbox = built["pcc-facebook"]
        assert isinstance(outbox, OutboxChannel)
        assert outbox.path == tmp_path / "outbox" / "social" / "pcc-facebook.jsonl"
        assert set(CHANNELS) == {"x", "facebook", "mastodon", "bluesky", "webhook"}
    finally:
        for channel in built.values():
            channel.close()


# ---------------------------------------------------------------------------
# End to end: `notifier send` posts once to every account and `report` shows it
# ---------------------------------------------------------------------------


def test_send_posts_once_to_every_live_account_and_report_shows_each_post(
    platforms: Platforms, project: Any, redis_url: str, smtp_server: Any
) -> None:
    platforms.webhook_key = b"test-secret-key"  # the project's NOTIFIER_SECRET_KEY signs webhook bodies
    project.write(
        "config/notifier.yaml",
        (project.config / "notifier.yaml").read_text().split("accounts:")[0]
        + (
            "accounts:\n"
            f"  pcc-x: {{platform: x, api_base: '{platforms.url}'}}\n"
            f"  pcc-facebook: {{platform: facebook, page_id: '{platforms.page_id}', api_base: '{platforms.url}'}}\n"
            f"  pcc-mastodon: {{platform: mastodon, instance: '{platforms.url}'}}\n"
            f"  pcc-bluesky: {{platform: bluesky, handle: {platforms.bluesky_handle}, api_base: '{platforms.url}'}}\n"
            f"  pcc-website: {{platform: webhook, url: '{platforms.url}/hooks/website'}}\n"
        ),
    )
    consultation = project.config / "consultations" / "soc-strategy-2019.yaml"
    consultation.write_text(
        consultation.read_text()
        .replace(
            "channels: [email, pcc-x, pcc-facebook, pcc-website, police-website]",
            "channels: [email, pcc-x, pcc-facebook, pcc-mastodon, pcc-bluesky, pcc-website]",
        )
        .replace("channels: [email, pcc-x, pcc-facebook, pcc-website]", "channels: [email, pcc-x]")
    )
    for event in ("opened", "reminder", "closed", "outcome"):  # the short X wording fits them all
        for platform in ("mastodon", "bluesky"):
            project.write(f"templates/{event}/{platform}.j2", (project.templates / event / "x.j2").read_text())
    project.env.update(
        {
            "NOTIFIER_REDIS_URL": redis_url,
            "NOTIFIER_SMTP_URL": smtp_server.url,
            "NOTIFIER_PCC_X_TOKEN": platforms.x_token,
            "NOTIFIER_PCC_FACEBOOK_TOKEN": platforms.facebook_token,
            "NOTIFIER_PCC_MASTODON_TOKEN": platforms.mastodon_token,
            "NOTIFIER_PCC_BLUESKY_TOKEN": platforms.bluesky_password,
        }
    )
    assert project.run("validate").returncode == 0, project.run("validate").stderr

    project.run("send", "soc-strategy-2019", "opened", "--wait", check=True)
    project.run("send", "soc-strategy-2019", "opened", "--wait", check=True)  # already fired: no-op

    for route in ("x", "facebook", "mastodon", "bluesky", "webhook"):
        assert len(platforms.accepted(route)) == 1, route
    assert "https://www.pcc.example/consultations/soc-strategy" in platforms.accepted("x")[0].json()["text"]
    assert smtp_server.handler.count() > 30
    report = json.loads(project.run("report", "soc-strategy-2019", "--format", "json", check=True).stdout)
    posts = {r["channel"]: r for r in report["deliveries"] if r["recipient"] == "*"}
    assert set(posts) == {"pcc-x", "pcc-facebook", "pcc-mastodon", "pcc-bluesky", "pcc-website"}
    assert all(p["status"] == "sent" and p["provider_id"] for p in posts.values()), posts
    assert posts["pcc-x"]["url"].startswith("https://x.com/")
    assert not (project.data / "outbox" / "social").exists(), "live accounts never write to the outbox"
    text = json.dumps(report)
    for secret in (platforms.x_token, platforms.facebook_token, platforms.mastodon_token, platforms.bluesky_password):
        assert secret not in text
