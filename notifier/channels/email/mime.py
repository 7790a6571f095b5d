"""MIME: the RFC 5322 bytes of one e-mail (headers, text part, HTML part) and its Message-ID.

:func:`build_message` writes the bytes directly rather than through ``EmailMessage``,
which spends most of its time in its header policy machinery (about 1,200 messages/s on
this machine; this path is several times faster). Its output parses back to the same
headers and parts (``tests/test_email.py`` checks that). Every value that reaches a header
has its control characters (CR, LF, NUL, ...) made spaces first, so no value can add a
header, and a bare CR in a part becomes a line break, so none reaches the wire without its
LF (what SMTP smuggling relies on). A part that is ASCII with lines within RFC 5322's 998
goes ``7bit`` (as it is); any other part is quoted-printable.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr, parseaddr
from urllib.parse import quote

from notifier.channels.base import Attachment, Delivery, EmailPayload
from notifier.channels.email._fast import date_now as _date_now
from notifier.channels.email._fast import header_text as _header_text
from notifier.rendering import EmailContent


def _encode_header(value: str) -> str:
    value = _header_text(value)
    if value.isascii() and len(value) < 900:
        return value
    return Header(value, "utf-8", maxlinelen=76).encode(linesep="\r\n")  # folded with CRLF, not a bare LF


def _ascii_url(url: str) -> str:
    """``url`` for a header: one line, non-ASCII characters percent-encoded (RFC 3987 3.1)."""
    url = _header_text(url)
    return url if url.isascii() else quote(url, safe=_URL_SAFE)


_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"


def format_address(name: str | None, address: str) -> str:
    """``"Name" <address>`` with the name RFC 2047-encoded where it is not ASCII."""
    return formataddr((_header_text(name or ""), _header_text(address)), charset="utf-8")


def _qp(text: str) -> bytes:
    """Quoted-printable with CRLF line ends, ending in CRLF (a part's last line break is
    its own; the one before a boundary belongs to the boundary)."""
    # A bare CR is a line break, as mail readers show it: never a CR without its LF on the wire.
    body = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n").encode("utf-8")
    encoded = binascii.b2a_qp(body, istext=True)
    if b"\r\n" not in body:
        # b2a_qp ends its soft line breaks as the text's first line ends, and with a bare LF
        # when the text is one line: a bare LF on the wire (SMTP smuggling's tool), and a
        # line after it that starts with a dot would not be dot-stuffed.
        encoded = encoded.replace(b"\n", b"\r\n")
    return encoded if encoded.endswith(b"\r\n") else encoded + b"\r\n"


_MAX_LINE = 998  # RFC 5322 2.1.1: a line MUST be at most 998 characters, CRLF excluded


def _part(content_type: str, text: str) -> bytes:
    """One text part, headers and body. ASCII text whose lines fit the RFC 5322 limit goes
    as it is (``7bit``: no encoding, most e-mails); anything else as quoted-printable."""
    if text.isascii() and "\r" not in text and "\0" not in text:
        lines = text.split("\n")  # no CR: these are all the lines
        if max(map(len, lines)) <= _MAX_LINE:
            body = "\r\n".join(lines).encode("ascii")
            if not body.endswith(b"\r\n"):
                body += b"\r\n"
            return (
                f'Content-Type: {content_type}; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n'
            ).encode() + body
    return (
        f'Content-Type: {content_type}; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
    ).encode() + _qp(text)


@dataclass(frozen=True, slots=True)
class Sender:
    """The fixed headers of every e-mail from this config, encoded once."""

    from_header: str
    from_address: str
    reply_to: str | None
    domain: str

    @classmethod
    def parse(cls, from_: str, reply_to: str | None) -> Sender:
        """From ``email.from`` and ``email.reply_to`` of notifier.yaml."""
        name, address = parseaddr(_header_text(from_))
        reply = None
        if reply_to:
            reply_name, reply_address = parseaddr(_header_text(reply_to))
            reply = format_address(reply_name, reply_address)
        return cls(format_address(name, address), address, reply, address.rpartition("@")[2] or "localhost")


def message_id(delivery: Delivery, domain: str) -> str:
    """The Message-ID of a delivery: the same on every attempt, so retries are recognisable."""
    return f"<{delivery.key}@{domain}>"


def build_message(
    sender: Sender,
    payload: EmailPayload,
    *,
    msgid: str,
    date: str | None = None,
) -> bytes:
    """The whole e-mail as bytes with CRLF line ends: headers, text part and HTML part.

    Whatever it is given, the bytes hold no CR without its LF, no LF without its CR and no
    NUL: control characters in header values become spaces, and a bare CR in a part is a
    line break (the quoted-printable encoding writes a NUL as ``=00``).
    """
    content = payload.content
    msgid = _header_text(msgid)  # it also names the MIME boundary
    headers = [
        f"From: {_header_text(sender.from_header)}",
        f"To: {format_address(payload.to_name, payload.to_email)}",
        f"Subject: {_encode_header(content.subject)}",
        f"Date: {_header_text(date or _date_now())}",
        f"Message-ID: {msgid}",
    ]
    if sender.reply_to:
        headers.append(f"Reply-To: {_header_text(sender.reply_to)}")
    headers += [
        f"List-Unsubscribe: <{_ascii_url(payload.unsubscribe_url)}>",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        "MIME-Version: 1.0",
    ]
    entity = _content(content, msgid)
    if payload.attachments:
        entity = _mixed(entity, payload.attachments, msgid)
    return "\r\n".join(headers).encode("ascii") + b"\r\n" + entity


def _content(content: EmailContent, msgid: str) -> bytes:
    """The text part, or the text and HTML parts as multipart/alternative: its own
    Content-Type header first (the message's headers end just before it)."""
    text_part = _part("text/plain", content.text)
    if content.html is None:
        return text_part
    html_part = _part("text/html", content.html)
    # "=_" never occurs in quoted-printable output; in 7bit text it could, so check.
    boundary = f"=_{msgid.strip('<>').partition('@')[0]}"
    while f"--{boundary}".encode() in text_part or f"--{boundary}".encode() in html_part:
        boundary += "_"
    sep = f"--{boundary}\r\n".encode()
    return b"".join(
        (
            f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode(),
            sep,
            text_part,
            b"\r\n",
            sep,
            html_part,
            b"\r\n",
            f"--{boundary}--\r\n".encode(),
        )
    )


def _mixed(content: bytes, attachments: tuple[Attachment, ...], msgid: str) -> bytes:
    """``content`` and the attachments (base64) as multipart/mixed."""
    parts = [content]
    for attachment in attachments:
        name = _header_text(attachment.filename).replace('"', "")
        parts.append(
            (
                f'Content-Type: {_header_text(attachment.content_type)}; name="{name}"\r\n'
                f'Content-Disposition: attachment; filename="{name}"\r\n'
                "Content-Transfer-Encoding: base64\r\n\r\n"
            ).encode()
            + base64.encodebytes(attachment.data).replace(b"\n", b"\r\n")
        )
    boundary = f"=_mixed_{msgid.strip('<>').partition('@')[0]}"
    while any(f"--{boundary}".encode() in part for part in parts):
        boundary += "_"
    sep = f"--{boundary}\r\n".encode()
    body = b"".join(sep + part + b"\r\n" for part in parts)
    return (
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode() + body + f"--{boundary}--\r\n".encode()
    )
