"""Every platform's live channel class, by platform name. Each class declares its rules
(:class:`~notifier.channels.limits.PostRules`: its limit, how it counts, whether the link
goes in the text), so the outbox, ``validate`` and ``preview`` read them from here."""

from __future__ import annotations

from notifier.channels.bluesky import BlueskyChannel
from notifier.channels.facebook import FacebookChannel
from notifier.channels.http import HttpChannel
from notifier.channels.mastodon import MastodonChannel
from notifier.channels.webhook import WebhookChannel
from notifier.channels.x import XChannel

TokenChannel = type[XChannel] | type[FacebookChannel] | type[MastodonChannel] | type[BlueskyChannel]

# The live channel of each platform that authenticates with NOTIFIER_<ACCOUNT>_TOKEN.
TOKEN_CHANNELS: dict[str, TokenChannel] = {
    "x": XChannel,
    "facebook": FacebookChannel,
    "mastodon": MastodonChannel,
    "bluesky": BlueskyChannel,
}

# Every platform's live channel class, webhooks included.
CHANNELS: dict[str, TokenChannel | type[WebhookChannel]] = {**TOKEN_CHANNELS, "webhook": WebhookChannel}


def rules(platform: str) -> type[HttpChannel]:
    """The channel class of ``platform``, whose class attributes are its posts' rules."""
    return CHANNELS[platform]
