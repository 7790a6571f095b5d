"""What an event would send on each of its channels, built exactly as ``notifier preview`` builds it.

:func:`notifier.compose.compose` makes each payload (as the workers do) and
:func:`notifier.channels.email.build_message` the e-mail as it would go on the wire, with a real
unsubscribe link; the page then shows the HTML part in a sandboxed iframe, the text part, and
each post with its length counted as its platform counts it. Nothing is sent or recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from html.parser import HTMLParser

from notifier.audience import Recipient, resolve
from notifier.channels import limits, registry
from notifier.channels.base import Delivery, EmailPayload
from notifier.channels.email import Sender, build_message, message_id
from notifier.compose import compose
from notifier.config import Config, Consultation, Settings
from notifier.errors import ConfigError, UsageError
from notifier.rendering import Renderer
from notifier.timeline import Event
from notifier.tokens import sign
from notifier.validation import check_event

#: The headers a preview shows, in this order (as the command prints them).
HEADERS = ("From", "To", "Reply-To", "Subject", "Date", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post")


@dataclass(frozen=True, slots=True)
class EmailPreview:
    """An e-mail as it would be sent to one recipient."""

    channel: str
    headers: tuple[tuple[str, str], ...]
    text: str
    html: str | None
    #: The HTML part's ``<style>`` contents and ``style`` attributes: the page's CSP allows them by hash.
    styles: tuple[str, ...] = ()
    style_attributes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PostPreview:
    """A post as it would go on one account."""

    channel: str
    platform: str
    text: str
    length: int
    limit: int | None

    @property
    def too_long(self) -> bool:
        """Longer than the platform allows."""
        return self.limit is not None and self.length > self.limit


class _Styles(HTMLParser):
    """Collects the inline styles of an HTML document (for the CSP hashes)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[str] = []
        self.attributes: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_style = tag == "style"
        self.attributes += [value for name, value in attrs if name == "style" and value is not None]

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.elements.append(data)


def audience_of(config: Config, event: Event) -> tuple[Recipient, ...]:
    """Everyone the event's e-mail could be previewed for (its audience before suppression)."""
    return resolve(config.lists, event.audience).recipients


def previews(  # noqa: PLR0913 - the event to preview, the key of its links, and for whom
    settings: Settings,
    config: Config,
    consultation: Consultation,
    event: Event,
    key: bytes,
    to: str | None = None,
) -> list[EmailPreview | PostPreview]:
    """Each channel of ``event``, rendered for ``to`` (default: the first of its audience).
    ConfigError when a template would not render; UsageError when ``to`` is not in the audience."""
    renderer = Renderer(config)
    problems = [p for p in check_event(config, renderer, consultation, event) if p.severity == "error"]
    if problems:
        raise ConfigError(problems)
    context = renderer.context(consultation, event)
    found: list[EmailPreview | PostPreview] = []
    for channel in event.channels:
        recipient, url = None, None
        if registry.per_recipient(channel):
            recipient = _pick(config, event, to)
            url = f"{settings.public_url}/unsubscribe/{sign(key, recipient.email)}"
        payload = compose(
            renderer, config, consultation, event, channel, recipient, context=context, unsubscribe_url=url
        )
        if isinstance(payload, EmailPayload):
            sender = Sender.parse(config.email.from_, config.email.reply_to)
            delivery = Delivery(f"{consultation.id}:{event.name}:preview", channel, payload.to_email.lower())
            raw = build_message(sender, payload, msgid=message_id(delivery, sender.domain))
            found.append(_email(channel, message_from_bytes(raw, policy=policy.default)))
        else:
            platform = config.accounts[channel].platform
            rules = registry.rules(platform)
            size = limits.length(rules, payload.text)
            found.append(PostPreview(channel, platform, payload.text, size, rules.max_length))
    return found


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


def _email(channel: str, message: EmailMessage) -> EmailPreview:
    headers = tuple((name, str(message[name])) for name in HEADERS if message[name])
    text, html = "", None
    for part in message.walk():
        if part.get_content_type() == "text/plain" and not text:
            text = str(part.get_content()).rstrip()
        elif part.get_content_type() == "text/html" and html is None:
            html = str(part.get_content())
    styles = _Styles()
    if html is not None:
        styles.feed(html)
        styles.close()
    return EmailPreview(channel, headers, text, html, tuple(styles.elements), tuple(styles.attributes))
