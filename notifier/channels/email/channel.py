"""The e-mail channels: :class:`SmtpChannel` (live, over SMTP) and :class:`MaildirChannel`
(the outbox, for review).

Each builds a delivery's message with :func:`~notifier.channels.email.mime.build_message`
(its Message-ID is the provider id, the same on every attempt) and hands it on: to the
pipelined :class:`~notifier.channels.email.smtp.SmtpEngine`, or to a Maildir.
"""

from __future__ import annotations

import mailbox
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from notifier.channels.base import Addressing, Delivery, EmailPayload, Receipt
from notifier.channels.email.mime import Sender, build_message, message_id
from notifier.channels.email.smtp import SmtpEngine, SmtpTarget
from notifier.channels.email.verp import Verp
from notifier.errors import PermanentDeliveryError, TransientDeliveryError


class SmtpChannel:
    """Sends over SMTP, with up to :data:`~notifier.channels.email.smtp.LANES` connections
    per thread kept open and reused (:class:`~notifier.channels.email.smtp.SmtpEngine`)."""

    name = "email"
    addressing: ClassVar[Addressing] = Addressing.RECIPIENT  # one e-mail per stakeholder, rendered for each

    def __init__(self, target: SmtpTarget, sender: Sender, verp: Verp | None = None) -> None:
        self.target = target
        self.sender = sender
        #: With ``email.bounce_domain``: each e-mail's envelope sender names its delivery.
        self.verp = verp
        self.engine = SmtpEngine(target)

    def envelope_sender(self, delivery: Delivery) -> str:
        """MAIL FROM of ``delivery``: its VERP address, or the From address when bounces are off."""
        return self.verp.sender(delivery.key) if self.verp is not None else self.sender.from_address

    def send(self, delivery: Delivery, payload: EmailPayload) -> Receipt:
        """Send one e-mail; the Message-ID is the provider id."""
        msgid = message_id(delivery, self.sender.domain)
        data = build_message(self.sender, payload, msgid=msgid)
        return self.engine.send(self.envelope_sender(delivery), payload.to_email, data, msgid)

    def send_many(
        self,
        items: Sequence[tuple[Delivery, EmailPayload]],
        on_result: Callable[[int, Receipt | TransientDeliveryError | PermanentDeliveryError], None] | None = None,
    ) -> list[Receipt | TransientDeliveryError | PermanentDeliveryError]:
        """Send several e-mails pipelined on this thread's connections
        (:meth:`SmtpEngine.send_many <notifier.channels.email.smtp.SmtpEngine.send_many>`,
        which says how); for each, in order, its receipt or the error :meth:`send` would
        raise for it, each also passed to ``on_result(index, result)`` as soon as it is read."""
        emails = [payload for _, payload in items]
        msgids = [message_id(delivery, self.sender.domain) for delivery, _ in items]
        envelopes = [
            (payload.to_email, build_message(self.sender, payload, msgid=msgid))
            for payload, msgid in zip(emails, msgids, strict=True)
        ]
        senders = [self.envelope_sender(delivery) for delivery, _ in items] if self.verp is not None else None
        return self.engine.send_many(self.sender.from_address, envelopes, msgids, on_result, senders)

    def close(self) -> None:
        """Quit every open connection."""
        self.engine.close()


class MaildirChannel:
    """Writes each e-mail to a Maildir (``$NOTIFIER_DATA_DIR/outbox/email``), for review."""

    name = "email"
    addressing: ClassVar[Addressing] = Addressing.RECIPIENT  # one e-mail per stakeholder, rendered for each

    def __init__(self, path: Path, sender: Sender) -> None:
        self.path = path
        self.sender = sender
        # Maildir(create=True) makes tmp/new/cur only when the folder itself is new.
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        self._maildir = mailbox.Maildir(str(path), create=False)

    def send(self, delivery: Delivery, payload: EmailPayload) -> Receipt:
        """Store one e-mail (an ``outbox`` receipt: not delivered); the Message-ID is the provider id."""
        msgid = message_id(delivery, self.sender.domain)
        try:
            self._maildir.add(build_message(self.sender, payload, msgid=msgid))
        except OSError as exc:
            raise TransientDeliveryError(f"cannot write to the outbox {self.path}: {exc}") from None
        return Receipt(provider_id=msgid, outbox=True)

    def close(self) -> None:
        """Nothing to release."""
