"""The one small protocol every channel speaks, and the values that cross it.

A channel turns one rendered payload into one side effect (an e-mail accepted by SMTP, a
post on an account, a line in the outbox) and returns a :class:`Receipt`, or raises
:class:`~notifier.errors.TransientDeliveryError` / :class:`~notifier.errors.PermanentDeliveryError`.
It never decides whether to send: the ledger did that before calling it.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, runtime_checkable

from notifier.errors import PermanentDeliveryError, TransientDeliveryError
from notifier.rendering import EmailContent

if TYPE_CHECKING:
    from notifier.config import Consultation


class Addressing(enum.Enum):
    """How a channel is addressed, declared by each channel class (``addressing``).

    ``RECIPIENT``: one message per stakeholder of the audience (e-mail), rendered for each;
    ``ACCOUNT``: one post per account (social accounts, websites), the same for everyone.
    """

    RECIPIENT = "recipient"
    ACCOUNT = "account"


@dataclass(frozen=True, slots=True)
class Delivery:
    """Which delivery this is: the same on every attempt of it."""

    occurrence_id: str
    channel: str
    recipient: str  # lower-cased address for e-mail, "*" for an account's one post
    attempt: int = 1

    @property
    def key(self) -> str:
        """A stable id for this delivery: Message-IDs, idempotency keys, record keys."""
        raw = f"{self.occurrence_id}|{self.channel}|{self.recipient}".encode()
        return hashlib.sha256(raw).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file attached to an e-mail (a calendar invite)."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class EmailPayload:
    """A rendered e-mail and its envelope."""

    to_email: str
    to_name: str | None
    content: EmailContent
    unsubscribe_url: str
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True, slots=True)
class PostPayload:
    """A rendered social post or website notice, with what webhooks also carry."""

    text: str
    link: str
    consultation_id: str
    consultation_title: str
    event: str
    event_at: datetime
    opens: datetime
    closes: datetime

    @classmethod
    def of(cls, consultation: Consultation, event: str, text: str, context: Mapping[str, Any]) -> PostPayload:
        """The post of ``event`` with rendered ``text``; times from the rendering ``context``."""
        return cls(
            text=text,
            link=consultation.url,
            consultation_id=consultation.id,
            consultation_title=consultation.title,
            event=event,
            event_at=context["event"]["at"],
            opens=context["consultation"]["opens"],
            closes=context["consultation"]["closes"],
        )


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the far side gave back: its id for the message or post, and a URL if any.

    ``outbox`` is true when the payload was written to the outbox (the Maildir, a JSONL
    file) instead of being delivered: the ledger records it as ``outbox``, not ``sent``, so
    the evidence never passes a file on disk off as a delivery.
    """

    provider_id: str | None = None
    url: str | None = None
    outbox: bool = False


Payload = EmailPayload | PostPayload
P_contra = TypeVar("P_contra", EmailPayload, PostPayload, contravariant=True)


class Channel(Protocol[P_contra]):
    """Sends one payload of its kind (``Channel[EmailPayload]`` sends e-mails,
    ``Channel[PostPayload]`` posts). Implementations are safe to share between threads.

    Each class declares how it is addressed (:class:`Addressing`): callers ask the class
    (through :mod:`notifier.channels.registry`) rather than switch on channel names."""

    name: str
    addressing: ClassVar[Addressing]

    def send(self, delivery: Delivery, payload: P_contra) -> Receipt:
        """Deliver ``payload`` once; raise a DeliveryError subclass when it did not happen."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class BatchChannel(Channel[P_contra], Protocol[P_contra]):
    """A channel that sends several payloads together faster than one at a time (SMTP
    pipelines them on one connection). The delivery engine uses :meth:`send_many` where a
    channel has it, and :meth:`send` one by one elsewhere."""

    def send_many(
        self,
        items: Sequence[tuple[Delivery, P_contra]],
        on_result: Callable[[int, Receipt | TransientDeliveryError | PermanentDeliveryError], None] | None = None,
    ) -> list[Receipt | TransientDeliveryError | PermanentDeliveryError]:
        """For each item, in order, its receipt or the error :meth:`send` would raise for it.

        ``on_result(index, result)`` is called for each item as soon as its result is known
        (before anything more is sent on the connection it went on), so the caller can
        record it while the rest are still being sent."""
        ...
