"""One way to build what is sent: the payload of one event on one channel, for one recipient
or for the account.

Workers (:mod:`notifier.delivery`), ``preview``, ``send --dry-run``, ``validate``
(:mod:`notifier.validation`) and the workers' warm-up all call :func:`compose`, so what is
checked, previewed and rehearsed is built exactly as what is sent. How a channel is
addressed is its class's to say (:func:`notifier.channels.registry.addressing`), not the
caller's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from notifier import invite
from notifier.audience import Recipient
from notifier.channels import registry
from notifier.channels.base import Addressing, EmailPayload, PostPayload
from notifier.config import Config, Consultation
from notifier.rendering import Renderer
from notifier.timeline import Event


def compose(  # noqa: PLR0913 - the parts of one message; a parameter object would be built per e-mail on the hot path
    renderer: Renderer,
    config: Config,
    consultation: Consultation,
    event: Event,
    channel: str,
    recipient: Recipient | None = None,
    *,
    context: Mapping[str, Any],
    unsubscribe_url: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> EmailPayload | PostPayload:
    """The payload of ``event`` on ``channel`` (``email`` or an account id).

    A channel addressed per recipient (e-mail) renders for ``recipient`` with its
    ``unsubscribe_url``; one addressed per account renders the account platform's post.
    ``context`` is :meth:`Renderer.context` for the event; ``extra`` adds names to it for
    this payload (an acknowledgement's ``response``, say). Raises ConfigError, naming the
    template's file and line, when a template cannot render.
    """
    if extra:
        context = {**context, **extra}
    if registry.addressing(channel) is Addressing.RECIPIENT:
        if recipient is None or unsubscribe_url is None:
            raise ValueError(f"the {channel} channel is addressed per recipient: give a recipient and its link")
        content = renderer.email(event, recipient, context=context, unsubscribe_url=unsubscribe_url)
        attachments = (invite.attachment(consultation, config),) if event.attach_calendar else ()
        return EmailPayload(recipient.email, recipient.name, content, unsubscribe_url, attachments)
    platform = config.accounts[channel].platform
    text = renderer.social(event, platform, context=context)
    return PostPayload.of(consultation, event.name, text, context)
