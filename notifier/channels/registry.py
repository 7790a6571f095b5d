"""Which channel class serves which channel name or platform, and whether an account posts
live or to the outbox. The one place that knows the e-mail channel by its name
(:data:`~notifier.config.EMAIL_CHANNEL`): everything else asks :func:`addressing`.

The contract: an x, facebook, mastodon or bluesky account posts live when its
``NOTIFIER_<ACCOUNT>_TOKEN`` is set, and to ``$NOTIFIER_DATA_DIR/outbox/social/<account>.jsonl``
otherwise. A webhook account needs no token (its body is signed with
``NOTIFIER_SECRET_KEY``) and posts live unless it sets ``outbox: true``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from notifier.channels.base import Addressing, Channel, EmailPayload, PostPayload
from notifier.channels.email import MaildirChannel, Sender, SmtpChannel, SmtpTarget
from notifier.channels.outbox import OutboxChannel
from notifier.channels.platforms import CHANNELS, TOKEN_CHANNELS, rules
from notifier.channels.webhook import WebhookChannel
from notifier.config import EMAIL_CHANNEL, Account, Config, Settings

__all__ = [
    "CHANNELS",
    "TOKEN_CHANNELS",
    "addressing",
    "build_account_channel",
    "build_email_channel",
    "is_outbox",
    "per_recipient",
    "rules",
]


def addressing(channel: str) -> Addressing:
    """How the channel named ``channel`` (``email`` or an account id) is addressed, as its
    class declares: the e-mail channel per recipient, an account per account."""
    return SmtpChannel.addressing if channel == EMAIL_CHANNEL else OutboxChannel.addressing


def per_recipient(channel: str) -> bool:
    """True when ``channel`` sends one message per stakeholder (the e-mail channel)."""
    return addressing(channel) is Addressing.RECIPIENT


def build_email_channel(config: Config, settings: Settings, *, data_dir: Path, live: bool) -> Channel[EmailPayload]:
    """The e-mail channel: SMTP when ``NOTIFIER_SMTP_URL`` is set and ``live``, else the
    Maildir outbox under ``data_dir``."""
    sender = Sender.parse(config.email.from_, config.email.reply_to)
    if settings.smtp_url and live:
        return SmtpChannel(SmtpTarget.parse(settings.smtp_url), sender)
    return MaildirChannel(data_dir / "outbox" / "email", sender)


def is_outbox(account: Account, settings: Settings) -> bool:
    """True when ``account`` writes to the outbox: no token set, or a webhook with ``outbox: true``."""
    if account.platform == "webhook":
        return account.outbox
    return account.outbox or settings.token(account.id) is None


def build_account_channel(
    account: Account,
    settings: Settings,
    *,
    data_dir: Path | None = None,
    client: httpx.Client | None = None,
) -> Channel[PostPayload]:
    """The channel that delivers ``account``'s posts: live, or its outbox (see :func:`is_outbox`).

    ``data_dir`` defaults to ``settings.data_dir``. ``client`` is an HTTP client to share
    (it is then the caller's to close); without one each live channel makes its own.
    A webhook reads ``settings.secret_key()``, which may raise ConfigError in production
    when ``NOTIFIER_SECRET_KEY`` is unset.
    """
    if is_outbox(account, settings):
        return OutboxChannel(account, data_dir=settings.data_dir if data_dir is None else data_dir)
    if account.platform == "webhook":
        return WebhookChannel(account, secret=settings.secret_key(), client=client)
    token = settings.token(account.id)
    assert token is not None  # is_outbox said so
    return TOKEN_CHANNELS[account.platform](account, token=token, client=client)


def is_live(channel: Channel[Any]) -> bool:
    """True when ``channel`` delivers (SMTP, a platform's API), False when it writes to an
    outbox: only a live channel keeps to a rate (an outbox has no relay to overwhelm, and a
    rehearsal must not take minutes)."""
    return not isinstance(channel, MaildirChannel | OutboxChannel)
