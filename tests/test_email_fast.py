"""The e-mail speed tricks (notifier/channels/email/_fast.py) give what the library calls
they replace give, on many generated inputs (Hypothesis)."""

from __future__ import annotations

import re
import smtplib
import time
from email.utils import formatdate

from hypothesis import example, given, settings
from hypothesis import strategies as st

from notifier.channels.base import EmailPayload
from notifier.channels.email import Sender, build_message
from notifier.channels.email._fast import date_now, envelope_path, header_text, one_line, stuffed
from notifier.config._email import check_email
from notifier.rendering import EmailContent

# Loaded shared machine: no per-example deadline; enough examples to hit the edges.
CHECK = settings(deadline=None, max_examples=300)

#: Text heavy in what the tricks special-case: controls, CR, LF, dots, spaces, non-ASCII.
TRICKY = st.text(alphabet=st.one_of(st.sampled_from("\r\n\0\t\x0b\x7f .<>@\"'\\=é王"), st.characters()))


def library_stuffing(data: bytes) -> bytes:
    """What ``smtplib.SMTP.data`` sends for ``data`` (CRLF line ends): its
    ``_quote_periods`` regex, then CRLF if missing, then the final dot line."""
    quoted = re.sub(rb"(?m)^\.", b"..", data)
    if quoted[-2:] != b"\r\n":
        quoted += b"\r\n"
    return quoted + b".\r\n"


@CHECK
@given(TRICKY)
def test_one_line_is_translating_cr_and_lf_to_spaces_then_stripping(value: str) -> None:
    assert one_line(value) == value.replace("\r", " ").replace("\n", " ").strip()


@CHECK
@given(TRICKY)
def test_header_text_is_every_control_character_as_a_space_then_stripped(value: str) -> None:
    assert header_text(value) == re.sub(r"[\x00-\x1f\x7f]", " ", value).strip()


def test_date_now_is_formatdate_of_this_second() -> None:
    before = int(time.time())
    now = date_now()
    after = int(time.time())
    assert now in {formatdate(t, usegmt=True) for t in range(before, after + 1)}


#: CRLF-only data, as build_message writes it: lines (no CR or LF inside), many starting with a dot.
LINES = st.lists(st.text(alphabet=st.sampled_from(".a ..\t=é"), max_size=6).map(lambda s: s.encode()), max_size=12)


@CHECK
@given(LINES, st.booleans())
def test_dot_stuffing_is_what_smtplib_sends(lines: list[bytes], final_crlf: bool) -> None:
    data = b"\r\n".join(lines) + (b"\r\n" if final_crlf and lines else b"")
    assert stuffed(data) == library_stuffing(data)


@CHECK
@given(st.text(max_size=40), st.text(max_size=40), st.one_of(st.none(), st.text(max_size=200)))
# Found by this test: one quoted-printable line, soft-broken right before a dot.
@example("", "00\x80\x80\x80\x80\x80\x80\U00010000\U00010000\U00010000.0", None)
def test_dot_stuffing_of_built_messages_is_what_smtplib_sends(subject: str, text: str, html: str | None) -> None:
    sender = Sender.parse("PCC <policy@pcc.example>", None)
    payload = EmailPayload("a@b.example", "A", EmailContent(subject, "." + text, html), "https://x.example/u")
    data = build_message(sender, payload, msgid="<k@pcc.example>", date="Sun, 29 Nov 2026 21:00:00 GMT")
    assert stuffed(data) == library_stuffing(data)


def accepted_by_config(address: str) -> bool:
    """Whether notifier.yaml or a list may hold ``address`` (what reaches the envelope)."""
    try:
        return bool(check_email(address) == address)
    except ValueError:
        return False


#: Addresses as the config passes them (validated and normalised): the fast path's domain.
ADDRESSES = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.text(alphabet=st.sampled_from("abcXYZ019.+-_'!#$%&*/=?^`{|}~ \"<>é\t\x1f"), min_size=1, max_size=12),
    st.sampled_from(["x.example", "b-c.example", "Caps.example", "é.example"]),
).filter(accepted_by_config)


@CHECK
@given(ADDRESSES)
def test_envelope_path_is_what_smtplib_quoteaddr_gives(address: str) -> None:
    assert envelope_path(address) == smtplib.quoteaddr(address)


@CHECK
@given(TRICKY)
def test_no_envelope_path_spans_two_lines(address: str) -> None:
    path = envelope_path(address)
    assert "\r" not in path and "\n" not in path
