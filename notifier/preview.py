"""A preview: what an event would send on each of its channels, without sending or recording it.

:func:`notifier.compose.compose` makes each payload (as the workers do) and
:func:`notifier.channels.email.build_message` the e-mail as it would go on the wire, with a real
unsubscribe link where there is a key; each post is measured as its platform counts it.
``notifier preview`` prints the result, the console's event page shows it as HTML.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email import message_from_bytes, policy

from notifier.audience import Recipient, resolve
from notifier.channels import limits, registry
from notifier.channels.base import Delivery, EmailPayload, Payload
from notifier.channels.email import Sender, build_message, message_id
from notifier.compose import compose
from notifier.config import Config, Consultation, Settings
from notifier.errors import ConfigError, UsageError
from notifier.rendering import Renderer
from notifier.timeline import Event
from notifier.tokens import sign
from notifier.validation import check_event

#: The headers a preview shows, in this order.
HEADERS = ("From", "To", "Reply-To", "Subject", "Date", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post")

#: The unsubscribe token shown when there is no secret key yet (nothing has run).
NO_KEY_TOKEN = "<signed-token>"  # noqa: S105 - a placeholder shown in a preview, not a secret


@dataclass(frozen=True, slots=True)
class EmailPreview:
    """An e-mail as it would be sent to one recipient: its headers and each part in order."""

    channel: str
    headers: tuple[tuple[str, str], ...]
    #: Each non-multipart part: its content type and content (bytes for a binary attachment).
    parts: tuple[tuple[str, str | bytes], ...]

    @property
    def text(self) -> str:
        """The (first) text part, without trailing white space."""
        return next((str(body).rstrip() for kind, body in self.parts if kind == "text/plain"), "")

    @property
    def html(self) -> str | None:
        """The (first) HTML part, if any."""
        return next((str(body) for kind, body in self.parts if kind == "text/html"), None)


@dataclass(frozen=True, slots=True)
class PostPreview:
    """A post as it would go on one account, with its length as the platform counts it."""

    channel: str
    platform: str
    text: str
    length: int
    limit: int | None

    @property
    def too_long(self) -> bool:
        """Longer than the platform allows."""
        return self.limit is not None and self.length > self.limit


def audience_of(config: Config, event: Event) -> tuple[Recipient, ...]:
    """Everyone the event's e-mail could be previewed for (its audience before suppression)."""
    return resolve(config.lists, event.audience).recipients


def previews(  # noqa: PLR0913 - the event to preview, the key of its links, for whom, and where
    settings: Settings,
    config: Config,
    consultation: Consultation,
    event: Event,
    key: bytes | None,
    to: str | None = None,
    channels: Sequence[str] | None = None,
) -> list[EmailPreview | PostPreview]:
    """Each of ``channels`` (default: the event's), rendered for ``to`` (default: the first of
    its audience). UsageError for an unknown channel or a ``to`` not in the audience;
    ConfigError when a template would not render."""
    chosen = list(channels or event.channels)
    for name in chosen:
        if not registry.per_recipient(name) and name not in config.accounts:
            raise UsageError(f"unknown channel {name!r} (known: {', '.join(config.channels)})")
    renderer = Renderer(config)
    problems = [p for p in check_event(config, renderer, consultation, event) if p.severity == "error"]
    if problems:
        raise ConfigError(problems)
    context = renderer.context(consultation, event)
    found: list[EmailPreview | PostPreview] = []
    for channel in chosen:
        recipient, url = None, None
        if registry.per_recipient(channel):
            recipient = _pick(config, event, to)
            token = sign(key, recipient.email) if key else NO_KEY_TOKEN
            url = f"{settings.public_url}/unsubscribe/{token}"
        payload = compose(
            renderer, config, consultation, event, channel, recipient, context=context, unsubscribe_url=url
        )
        found.append(_preview(config, consultation, event, channel, payload))
    return found


def _preview(
    config: Config, consultation: Consultation, event: Event, channel: str, payload: Payload
) -> EmailPreview | PostPreview:
    if isinstance(payload, EmailPayload):
        sender = Sender.parse(config.email.from_, config.email.reply_to)
        delivery = Delivery(f"{consultation.id}:{event.name}:preview", channel, payload.to_email.lower())
        return _email(channel, build_message(sender, payload, msgid=message_id(delivery, sender.domain)))
    platform = config.accounts[channel].platform
    rules = registry.rules(platform)
    return PostPreview(channel, platform, payload.text, limits.length(rules, payload.text), rules.max_length)


def _pick(config: Config, event: Event, to: str | None) -> Recipient:
    recipients = audience_of(config, event)
    if to is None:
        if not recipients:
            raise UsageError("this event's audience is empty")
        return recipients[0]
    found = next((r for r in recipients if r.key == to.strip().lower()), None)
    if found is None:
        raise UsageError(f"{to} is not in this event's audience")
    return found


def _email(channel: str, raw: bytes) -> EmailPreview:
    message = message_from_bytes(raw, policy=policy.default)
    headers = tuple((name, str(message[name])) for name in HEADERS if message[name])
    parts = tuple(
        (part.get_content_type(), part.get_content())
        for part in message.walk()
        if part.get_content_maintype() != "multipart"
    )
    return EmailPreview(channel, headers, parts)
