"""E-mail MIME: the fast path parses back to what EmailMessage would build; no header injection."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from dataclasses import replace
from email import message_from_bytes, policy
from email.headerregistry import Address
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller

from notifier.channels.base import Delivery, EmailPayload
from notifier.channels.email import Sender, SmtpTarget, build_message, message_id, translate
from notifier.errors import ConfigError, PermanentDeliveryError, TransientDeliveryError
from notifier.rendering import EmailContent
from tests.conftest import free_port

SENDER = Sender.parse("PCC Policy Team <policy@pcc.example>", "policy@pcc.example")
HTML = '<p>Dear Siân,</p>\n<p>Read the <a href="https://pcc.example/c">draft strategy</a>.</p>\n' * 20
TEXT = "Dear Siân Prys,\n\n.A line that starts with a dot\n" + "Long line " * 40 + "\n=Equals= and tabs\t\n"


def payload(
    name: str | None = "Siân Prys", html: str | None = HTML, subject: str = "Consultation: draft strategy"
) -> EmailPayload:
    return EmailPayload(
        "sian.prys@nhs.example",
        name,
        EmailContent(subject, TEXT, html),
        "https://notify.pcc.example/unsubscribe/abc.def",
    )


def reference(p: EmailPayload, msgid: str, date: str) -> EmailMessage:
    """The same e-mail built the slow, obviously correct way."""
    msg = EmailMessage()
    msg["From"] = "PCC Policy Team <policy@pcc.example>"
    msg["To"] = Address(display_name=p.to_name or "", addr_spec=p.to_email)
    msg["Subject"] = p.content.subject
    msg["Date"] = date
    msg["Message-ID"] = msgid
    msg["Reply-To"] = "policy@pcc.example"
    msg["List-Unsubscribe"] = f"<{p.unsubscribe_url}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(p.content.text)
    if p.content.html:
        msg.add_alternative(p.content.html, subtype="html")
    return msg


@pytest.mark.parametrize(
    "case",
    [
        payload(),
        payload(html=None),
        payload(name="Łukasz Wójcik", subject="Zoë’s consultation — closes 15 August"),
        payload(name="王小明", subject=" ".join(["関係者への通知"] * 12)),
        payload(name="Smith, Jane (CSP)"),
        payload(name=None),
    ],
)
def test_fast_path_parses_back_to_the_same_headers_and_parts(case: EmailPayload) -> None:
    assert_parses_back_the_same(case)


def assert_parses_back_the_same(case: EmailPayload) -> tuple[bytes, EmailMessage]:
    """The fast path's bytes, parsed, match the EmailMessage-built e-mail; the bytes and the parse."""
    msgid = message_id(Delivery("c:opened:1", "email", case.to_email), SENDER.domain)
    date = "Tue, 09 Jul 2019 08:00:00 +0000"
    data = build_message(SENDER, case, msgid=msgid, date=date)
    fast = message_from_bytes(data, policy=policy.default)
    slow = message_from_bytes(reference(case, msgid, date).as_bytes(), policy=policy.default)
    for header in (
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "Reply-To",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    ):
        assert str(fast[header]) == str(slow[header]), header
    # On the wire every line ends in CRLF; the parser keeps them, so compare lines, not bytes.
    fast_parts = [
        (p.get_content_type(), p.get_content().replace("\r\n", "\n")) for p in fast.walk() if not p.is_multipart()
    ]
    slow_parts = [(p.get_content_type(), p.get_content()) for p in slow.walk() if not p.is_multipart()]
    assert fast_parts == slow_parts
    assert fast.get_content_type() == slow.get_content_type()
    assert not fast.defects and all(not p.defects for p in fast.walk())
    assert isinstance(fast, EmailMessage)
    return data, fast


ASCII_TEXT = "Dear Jane Smith,\n\n.A line that starts with a dot\n" + "Long line " * 40 + "\n=Equals= and tabs\t\n"
ASCII_HTML = '<p>Dear Jane,</p>\n<p>Read the <a href="https://pcc.example/c?a=1&amp;b=2">draft</a>.</p>\n' * 20


def ascii_payload(text: str = ASCII_TEXT, html: str | None = ASCII_HTML) -> EmailPayload:
    return EmailPayload(
        "jane.smith@csp.example",
        "Jane Smith",
        EmailContent("Consultation open", text, html),
        "https://notify.pcc.example/unsubscribe/abc.def",
    )


def encodings(message: EmailMessage) -> dict[str, str]:
    return {p.get_content_type(): str(p["Content-Transfer-Encoding"]) for p in message.walk() if not p.is_multipart()}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (ascii_payload(), {"text/plain": "7bit", "text/html": "7bit"}),
        (ascii_payload(html=None), {"text/plain": "7bit"}),
        (payload(), {"text/plain": "quoted-printable", "text/html": "quoted-printable"}),
        (ascii_payload(html="<p>Dear Siân,</p>\n"), {"text/plain": "7bit", "text/html": "quoted-printable"}),
        (ascii_payload(text="x" * 1_200 + "\n"), {"text/plain": "quoted-printable", "text/html": "7bit"}),
    ],
    ids=["ascii", "ascii-text-only", "non-ascii", "non-ascii-html", "ascii-line-over-998"],
)
def test_plain_ascii_parts_go_7bit_as_written_and_others_quoted_printable(
    case: EmailPayload, expected: dict[str, str]
) -> None:
    data, fast = assert_parses_back_the_same(case)

    assert encodings(fast) == expected
    if expected["text/plain"] == "7bit":
        assert b"\r\n=Equals= and tabs\t\r\n" in data, "a 7bit part is on the wire exactly as written"


def test_every_line_is_crlf_and_short() -> None:
    data = build_message(SENDER, payload(), msgid="<k@pcc.example>")
    lines = data.split(b"\r\n")
    assert b"\n" not in b"".join(lines) and all(len(line) <= 998 for line in lines)


def test_message_id_is_the_same_on_every_attempt_of_a_delivery() -> None:
    first = message_id(Delivery("c:opened:1", "email", "a@x.example", attempt=1), "pcc.example")
    again = message_id(Delivery("c:opened:1", "email", "a@x.example", attempt=3), "pcc.example")
    other = message_id(Delivery("c:opened:2", "email", "a@x.example", attempt=1), "pcc.example")
    assert first == again != other


def test_no_value_can_add_a_header() -> None:
    evil = EmailPayload(
        "a@x.example",
        "Eve\r\nBcc: all@x.example",
        EmailContent("Hi\nBcc: b@x.example", "t", None),
        "https://x.example/u\r\nBcc: c@x.example",
    )
    parsed = message_from_bytes(build_message(SENDER, evil, msgid="<k@x>"), policy=policy.default)
    assert parsed["Bcc"] is None
    assert parsed.get_all("To") is not None and len(parsed.get_all("To") or []) == 1


def test_smtp_urls() -> None:
    target = SmtpTarget.parse("smtp://user%40x:p%2Fss@mail.example:587?starttls=1")
    assert (target.host, target.port, target.starttls, target.username, target.password) == (
        "mail.example",
        587,
        True,
        "user@x",
        "p/ss",
    )
    assert SmtpTarget.parse("smtps://mail.example").port == 465
    with pytest.raises(ConfigError, match="NOTIFIER_SMTP_URL"):
        SmtpTarget.parse("http://mail.example")


def test_smtp_replies_are_translated_at_the_boundary() -> None:
    import smtplib

    soft = translate(smtplib.SMTPRecipientsRefused({"a@x": (451, b"4.7.1 Try again later")}))
    hard = translate(smtplib.SMTPRecipientsRefused({"a@x": (550, b"5.1.1 No such user")}))
    policy_block = translate(smtplib.SMTPDataError(554, b"5.7.1 Message rejected"))
    assert isinstance(soft, TransientDeliveryError)
    assert isinstance(hard, PermanentDeliveryError) and hard.bounce and "550 5.1.1 No such user" in str(hard)
    assert isinstance(policy_block, PermanentDeliveryError) and not policy_block.bounce
    assert isinstance(translate(ConnectionRefusedError()), TransientDeliveryError)


@pytest.mark.parametrize(
    "address",
    [
        "a@b.example",
        "José@b.example",
        "o'connor@b.example",
        "a b@x.example",
        "a<b@x.example",
        "a>@x.example",
        "a\tb@x.example",
        "a\r\nRCPT TO:<evil@x.example>",
        '"q u"@x.example',
    ],
)
def test_envelope_paths_are_what_smtplib_would_send_and_one_line(address: str) -> None:
    import smtplib

    from notifier.channels.email._fast import envelope_path as _path

    path = _path(address)
    assert "\r" not in path and "\n" not in path  # no second SMTP command from an address
    if "\r" not in address and "\n" not in address:
        assert path == smtplib.quoteaddr(address)


# The SMTP-smuggling pattern (a bare CR before and after a dot, then a new command), bare
# LFs, a NUL and other controls; with and without non-ASCII (7bit and quoted-printable parts).
HOSTILE = {
    "smuggling": "C\r.\rMAIL FROM:<evil@attacker.example>\rRCPT TO:<all@x.example>\rDATA\r",
    "bare-lf": "a\n.\nMAIL FROM:<evil@attacker.example>\n\nBcc: all@x.example\n",
    "nul-and-controls": "N\x00U\x00L\x0b\x0c\x1b\x7f\r\n.\r\nQUIT\r\n",
    "non-ascii": "Siân\r.\r\x00é\n.\nMAIL FROM:<evil@attacker.example>\r\n",
    # One line of non-ASCII text, long enough to be broken by quoted-printable's soft breaks,
    # with a dot where a broken line starts.
    "one-long-line": "é" * 17 + "." + "é" * 60 + ".MAIL FROM:<evil@attacker.example>",
}
# Where each hostile string goes: every header and body input of the MIME writer.
FIELDS = ("from", "reply_to", "to_name", "to_email", "subject", "text", "html", "unsubscribe_url", "msgid")
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n|\x00")


class KeepRaw:
    """An aiosmtpd handler that keeps each message's bytes as they came over the wire."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))  # type: ignore[attr-defined]
        return "250 Message accepted"


@pytest.fixture
def raw_smtp() -> Iterator[tuple[KeepRaw, int]]:
    handler, port = KeepRaw(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


def hostile_message(field: str, value: str) -> bytes:
    """The writer's bytes with ``value`` in ``field`` and ordinary values everywhere else."""
    sender = ("PCC Policy Team <policy@pcc.example>", "policy@pcc.example")
    if field in ("from", "reply_to"):
        sender = (f"{value} <policy@pcc.example>", sender[1]) if field == "from" else (sender[0], value)
    base = payload()
    content = base.content
    if field in ("subject", "text", "html"):
        content = replace(content, **{field: f"Consultation {value} {field}"})
    to_email = f"a{value}@x.example" if field == "to_email" else base.to_email
    to_name = f"Jane {value}" if field == "to_name" else base.to_name
    unsubscribe = base.unsubscribe_url + value if field == "unsubscribe_url" else base.unsubscribe_url
    msgid = f"<k{value}@pcc.example>" if field == "msgid" else "<k@pcc.example>"
    hostile = EmailPayload(to_email, to_name, content, unsubscribe)
    return build_message(Sender.parse(*sender), hostile, msgid=msgid)


# Addresses and Message-IDs are ASCII (the config's checks and message_id() see to it).
@pytest.mark.parametrize(
    ("kind", "field"),
    [
        (kind, field)
        for kind in HOSTILE
        for field in FIELDS
        if not (kind in ("non-ascii", "one-long-line") and field in ("to_email", "msgid"))
    ],
)
def test_no_input_puts_a_bare_cr_or_lf_or_a_nul_on_the_wire(
    raw_smtp: tuple[KeepRaw, int], field: str, kind: str
) -> None:
    handler, port = raw_smtp
    data = hostile_message(field, HOSTILE[kind])
    assert not _BARE.findall(data), f"the writer made a bare CR, LF or NUL: {data!r}"
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as conn:
        conn.sendmail("policy@pcc.example", ["jane@x.example"], data)
    assert len(handler.received) == 1, "one message sent, one received (nothing smuggled)"
    mail_from, rcpt_tos, wire = handler.received[0]
    assert (mail_from, rcpt_tos) == ("policy@pcc.example", ["jane@x.example"])
    assert not _BARE.findall(wire), f"a bare CR, LF or NUL reached the server: {wire!r}"
    parsed = message_from_bytes(wire, policy=policy.default)
    assert parsed["Bcc"] is None and len(parsed.get_all("To") or []) == 1
