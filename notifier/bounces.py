"""Bounces: which delivery a bounce is about, and what it does to it.

A bounce reaches notifier three ways: a Maildir (``notifier bounces import PATH``), the IMAP
mailbox ``email.bounce_mailbox`` (polled by the scheduler), or an Amazon SES notification
through SNS (``POST /api/bounces``, :mod:`notifier.web.bounce_hook`). Each is read into a
:class:`Bounce` and given to :meth:`BounceBook.record`.

* **Reading.** DSNs (RFC 3464) and the common non-standard bounces are parsed by
  ``flufl.bounce`` (:func:`read`): permanent failures make a hard bounce, temporary ones a
  soft bounce.
* **Which delivery.** The address the bounce was sent to is the e-mail's envelope sender,
  ``bounces+<opaque id>@bounce_domain`` (VERP, :mod:`notifier.channels.email.verp`): the id
  gives the delivery's key, and so its Message-ID in the record. Without VERP (the setting
  off, or a relay that rewrote the envelope), the Message-ID of the returned message is used,
  and only when the recipient it was sent to is among the failed addresses the bounce names.
* **What it does.** A hard bounce marks the delivery ``bounced`` and suppresses the address
  (source ``bounce``), the record first, then Redis, as unsubscribing does; so do three
  soft bounces of one address within :data:`SOFT_WINDOW` (each delivery counted once, in the
  record, so a Redis ``FLUSHALL`` forgets none; lifting the suppression forgets them). Every
  step is idempotent: the same bounce read twice changes nothing more.
"""

from __future__ import annotations

import email
import email.parser
import imaplib
import logging
import mailbox
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from email.message import Message
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from flufl.bounce import all_failures

from notifier.channels.email import verp
from notifier.errors import BadToken, MailboxError
from notifier.ledger import Ledger
from notifier.store import Store

log = logging.getLogger(__name__)

#: Three soft bounces of one address within this window suppress it, as a hard bounce does.
SOFT_WINDOW = timedelta(days=30)
SOFT_LIMIT = 3
#: Where a bounce was delivered to: the VERP address is in one of these.
_ADDRESSED = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
#: The environment variable holding ``email.bounce_mailbox``'s password.
IMAPS_PORT = 993
PASSWORD_VARIABLE = "NOTIFIER_BOUNCE_PASSWORD"  # noqa: S105 - the name of the variable, not a password


@dataclass(frozen=True, slots=True)
class Bounce:
    """One bounce as read: hard or soft, why, and what names the delivery it is about."""

    hard: bool
    detail: str
    #: VERP ids found where the bounce was addressed (or a provider's envelope sender).
    opaque: tuple[str, ...] = ()
    #: Message-IDs of the returned message, for bounces without VERP.
    message_ids: tuple[str, ...] = ()
    #: The failed recipients the bounce names, lower-cased.
    addresses: tuple[str, ...] = ()


Result = Literal["bounced", "soft", "already", "unknown", "pending"]


@dataclass(frozen=True, slots=True)
class Recorded:
    """What recording one bounce did: ``bounced`` (marked and suppressed now), ``soft`` (a
    soft bounce counted), ``already`` (nothing new), ``unknown`` (no delivery of ours),
    ``pending`` (its VERP id is ours, but the delivery's outcome is not in the record yet:
    still queued for archiving)."""

    result: Result
    occurrence: str | None = None
    recipient: str | None = None

    @property
    def later(self) -> bool:
        """Whether nothing was recorded, and the bounce is to be read again later."""
        return self.result in ("unknown", "pending")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def read(message: Message) -> Bounce | None:
    """The bounce ``message`` is, or None when it is not one (an auto-reply, spam)."""
    temporary, permanent = all_failures(message)
    if not temporary and not permanent:
        return None
    failed = permanent or temporary
    opaque = [found for name in _ADDRESSED for value in message.get_all(name) or () for found in verp.find(str(value))]
    return Bounce(
        hard=bool(permanent),
        detail=_diagnostic(message) or ("permanent failure" if permanent else "temporary failure"),
        opaque=tuple(dict.fromkeys(opaque)),
        message_ids=tuple(_returned_message_ids(message)),
        addresses=tuple(sorted({_text(a).strip().lower() for a in failed})),
    )


def _diagnostic(message: Message) -> str | None:
    """The DSN's ``Diagnostic-Code`` (or ``Status``) of its first recipient, if it is a DSN."""
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        for block in blocks if isinstance(blocks, list) else ():
            if not isinstance(block, Message):
                continue
            found = block.get("Diagnostic-Code") or block.get("Status")
            if found:
                return " ".join(str(found).split())[:500]
    return None


def _returned_message_ids(message: Message) -> Iterable[str]:
    """The Message-ID of the returned message (a ``message/rfc822`` or ``text/rfc822-headers`` part)."""
    for part in message.walk():
        kind = part.get_content_type()
        headers: Message | None = None
        if kind == "message/rfc822":
            inner = part.get_payload()
            first = inner[0] if isinstance(inner, list) and inner else None
            headers = first if isinstance(first, Message) else None
        elif kind == "text/rfc822-headers":
            raw = part.get_payload(decode=True)
            headers = email.parser.HeaderParser().parsestr(_text(raw) if isinstance(raw, bytes) else "")
        if headers is not None and headers.get("Message-ID"):
            yield str(headers["Message-ID"]).strip()


def from_ses(notification: Mapping[str, Any]) -> Bounce | None:
    """The bounce an Amazon SES notification (the ``Message`` of an SNS notification) reports,
    or None when it reports something else (a delivery, a complaint)."""
    kind = notification.get("notificationType") or notification.get("eventType")
    details = notification.get("bounce")
    mail = notification.get("mail")
    if kind != "Bounce" or not isinstance(details, dict) or not isinstance(mail, dict):
        return None
    failed = [r for r in details.get("bouncedRecipients") or () if isinstance(r, dict)]
    first = failed[0] if failed else {}
    detail = first.get("diagnosticCode") or first.get("status") or details.get("bounceSubType") or "bounced"
    common = mail.get("commonHeaders")
    common = common if isinstance(common, dict) else {}
    ids = [common.get("messageId")] + [
        h.get("value") for h in mail.get("headers") or () if isinstance(h, dict) and h.get("name") == "Message-ID"
    ]
    return Bounce(
        hard=details.get("bounceType") == "Permanent",
        detail=" ".join(str(detail).split())[:500],
        opaque=tuple(verp.find(str(mail.get("source", "")))),
        message_ids=tuple(dict.fromkeys(str(i) for i in ids if i)),
        addresses=tuple(sorted({str(r.get("emailAddress", "")).strip().lower() for r in failed})),
    )


class BounceBook:
    """Records bounces in the consultation record and the ledger (see the module doc)."""

    def __init__(self, ledger: Ledger, store: Store, key: bytes) -> None:
        self.ledger = ledger
        self.store = store
        self.key = key

    def record(self, bounce: Bounce) -> Recorded:
        """Record one bounce against the delivery it names, if it names one of ours."""
        found = self._delivery(bounce)
        if isinstance(found, str):
            log.info("a bounce names delivery %s, not in the record yet (%s)", found, bounce.detail)
            return Recorded("pending")
        if found is None:
            log.info("a bounce names no delivery of ours (%s)", bounce.detail)
            return Recorded("unknown")
        occurrence, channel, recipient, key = found
        if not bounce.hard and self._soft_count(recipient, key) < SOFT_LIMIT:
            return Recorded("soft", occurrence, recipient)
        detail = bounce.detail
        if not bounce.hard:
            detail = f"{SOFT_LIMIT} soft bounces in {SOFT_WINDOW.days} days: {detail}"
        changed = self._bounced(occurrence, channel, recipient, detail)
        return Recorded("bounced" if changed else "already", occurrence, recipient)

    def _delivery(self, bounce: Bounce) -> tuple[str, str, str, str] | str | None:
        """(occurrence, channel, recipient, key) of the delivery the bounce is about; the key
        alone when a VERP id of ours names a delivery the record does not hold yet."""
        pending: str | None = None
        for opaque in bounce.opaque:
            try:
                key = verp.unseal(self.key, opaque)
            except BadToken:
                continue  # not ours (or forged): look further
            found = self.store.delivery_by_key(key)
            if found is not None:
                return found[0], found[1], found[2], key
            pending = pending or key
        for message_id in bounce.message_ids:
            key = message_id.strip("<> ").partition("@")[0]
            found = self.store.delivery_by_key(key)
            if found is not None and found[2].lower() in bounce.addresses:
                return found[0], found[1], found[2], key
        return pending

    def _soft_count(self, recipient: str, key: str) -> int:
        """Count a soft bounce of ``recipient`` (once per delivery) in the record, which
        outlives Redis; how many within the window."""
        return self.store.soft_bounce(recipient, key, within=SOFT_WINDOW)

    def _bounced(self, occurrence: str, channel: str, recipient: str, detail: str) -> bool:
        """Mark the delivery bounced and suppress the address: the record first (it outlives
        Redis), then Redis. Whether anything changed."""
        reason = f"bounced: {detail}"
        marked = self.store.mark_bounced(occurrence, channel, recipient, reason)
        existing = self.store.suppression(recipient)
        if existing is None or existing.source == "config":
            self.store.suppress(recipient, "bounce", detail=reason)
        changed = self.ledger.bounce(occurrence, f"{channel}|{recipient}", reason) == 1 or marked
        if self.ledger.suppression(recipient) is None:
            self.ledger.suppress(recipient, reason)
        if changed:
            self.store.audit("bounce", "bounce", consultation=occurrence.split(":", 1)[0], detail=occurrence)
            log.info("delivery %s of %s bounced: %s", channel, occurrence, detail)
        return changed


@dataclass(slots=True)
class Tally:
    """What an import or a poll did."""

    read: int = 0
    bounced: int = 0
    soft: int = 0
    unknown: int = 0
    not_bounces: int = 0

    def add(self, recorded: Recorded | None) -> None:
        """Count one message."""
        self.read += 1
        if recorded is None:
            self.not_bounces += 1
        elif recorded.result == "bounced":
            self.bounced += 1
        elif recorded.result == "soft":
            self.soft += 1
        elif recorded.later:
            self.unknown += 1

    def __str__(self) -> str:
        return (
            f"{self.read} message(s) read: {self.bounced} delivery(ies) marked bounced, {self.soft} soft bounce(s), "
            f"{self.unknown} naming no delivery of ours, {self.not_bounces} not a bounce"
        )


def import_maildir(path: Path, book: BounceBook) -> Tally:
    """Record every bounce in the Maildir ``path``. Each message read is marked seen (and
    moved to ``cur``); one naming no delivery yet is left unseen, for a later import."""
    if not all((path / sub).is_dir() for sub in ("new", "cur", "tmp")):
        raise MailboxError(f"{path}: not a Maildir (it needs new/, cur/ and tmp/)")
    box = mailbox.Maildir(str(path), create=False)
    tally = Tally()
    for key in list(box.keys()):
        message = box[key]
        if "S" in message.get_flags():
            continue
        bounce = read(message)
        recorded = None if bounce is None else book.record(bounce)
        tally.add(recorded)
        if recorded is None or not recorded.later:
            message.set_subdir("cur")
            message.add_flag("S")
            box[key] = message
    return tally


@dataclass(frozen=True, slots=True)
class ImapMailbox:
    """``email.bounce_mailbox``: ``imaps://user@host[:port]/FOLDER``."""

    host: str
    port: int
    user: str
    folder: str

    @classmethod
    def parse(cls, url: str) -> ImapMailbox:
        """The mailbox a (validated) ``bounce_mailbox`` URL names."""
        parts = urlsplit(url)
        return cls(
            host=parts.hostname or "",
            port=parts.port or IMAPS_PORT,
            user=unquote(parts.username or ""),
            folder=unquote(parts.path.lstrip("/")) or "INBOX",
        )


def poll_imap(
    mailbox_: ImapMailbox, password: str, book: BounceBook, *, context: ssl.SSLContext | None = None
) -> Tally:
    """Record every unseen bounce in the IMAP mailbox; each one read is flagged ``\\Seen``
    (one naming no delivery yet is left unseen, for the next poll)."""
    tally = Tally()
    try:
        secure = context or ssl.create_default_context()
        with imaplib.IMAP4_SSL(mailbox_.host, mailbox_.port, ssl_context=secure) as imap:
            imap.login(mailbox_.user, password)
            imap.select(_quoted(mailbox_.folder))
            _, found = imap.uid("SEARCH", "UNSEEN")
            for uid in (found[0] or b"").decode().split():
                _, data = imap.uid("FETCH", uid, "(BODY.PEEK[])")
                raw = next((item[1] for item in data if isinstance(item, tuple)), b"")
                bounce = read(email.message_from_bytes(raw))
                recorded = None if bounce is None else book.record(bounce)
                tally.add(recorded)
                if recorded is None or not recorded.later:
                    imap.uid("STORE", uid, "+FLAGS", "(\\Seen)")
    except (imaplib.IMAP4.error, OSError) as exc:
        raise MailboxError(f"bounce mailbox imaps://{mailbox_.user}@{mailbox_.host}/{mailbox_.folder}: {exc}") from None
    return tally


def _quoted(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'
