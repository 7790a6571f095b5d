"""The e-mail path's speed tricks, each beside the library call it replaces and why.

Every function here does what a standard-library call does, faster on the inputs notifier
gives it, and ``tests/test_email_fast.py`` checks on many generated inputs that the two
agree (Hypothesis). Measured with ``bench/hotpath.py`` (bench/RESULTS.md, round 5 on):

* :func:`one_line`, :func:`header_text` replace an unconditional ``str.translate``: most
  values have nothing to replace, and a ``str.isprintable`` or ``in`` check costs a small
  part of a ``translate``.
* :func:`date_now` replaces ``email.utils.formatdate()`` per message: the Date header is
  formatted once a second.
* :func:`stuffed` replaces ``smtplib``'s dot-stuffing (``smtplib._quote_periods``, a
  multiline regex, then the final ``.`` line): ``bytes.replace`` on CRLF data; the regex
  alone cost more than building the message.
* :func:`envelope_path` replaces ``smtplib.quoteaddr`` (``email.utils.parseaddr`` under
  it) for the plain addresses that are nearly all of them: ``<address>``, checked by one
  regex.
"""

from __future__ import annotations

import re
import smtplib
import time
from email.utils import formatdate

_NO_BREAK = str.maketrans({"\r": " ", "\n": " "})


def one_line(value: str) -> str:
    """``value.translate`` CR and LF to spaces, stripped; the translation only where there
    is a CR or LF."""
    if "\r" in value or "\n" in value:
        value = value.translate(_NO_BREAK)
    return value.strip()


#: Each C0 control character (CR, LF and NUL among them) and DEL, as a space.
NO_CONTROL = str.maketrans(dict.fromkeys([*range(32), 127], " "))


def header_text(value: str) -> str:
    """``value`` with no control character, for a header: a CR or LF could start a header
    (or, as a bare CR, end the message on a lax server: SMTP smuggling), and a NUL has no
    place in one. ``value.translate(NO_CONTROL).strip()``, translated only where
    ``isprintable`` says there may be something to replace."""
    if not value.isprintable():
        value = value.translate(NO_CONTROL)
    return value.strip()


_date: tuple[int, str] = (0, "")


def date_now() -> str:
    """Now as a Date header value (``formatdate(usegmt=True)``), formatted once a second
    rather than once a message."""
    global _date
    second = int(time.time())
    if _date[0] != second:
        _date = (second, formatdate(second, localtime=False, usegmt=True))
    return _date[1]


def stuffed(data: bytes) -> bytes:
    """``data`` (CRLF line ends, as :func:`~notifier.channels.email.mime.build_message`
    writes) as the DATA section: leading dots doubled (RFC 5321 4.5.2), then the final
    ``.`` line, as ``SMTP.data`` sends it; ``bytes.replace`` where smtplib runs a regex."""
    data = data.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data + (b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n")


_UNSAFE_IN_PATH = re.compile(r"[<>\r\n \t]")


def envelope_path(address: str) -> str:
    """``<address>`` for MAIL FROM and RCPT TO, as ``smtplib.quoteaddr`` writes it
    (addresses were validated with the config); never more than one line."""
    if address.isascii() and _UNSAFE_IN_PATH.search(address) is None:
        return f"<{address}>"
    return smtplib.quoteaddr(one_line(address))
