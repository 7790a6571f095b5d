"""E-mail: MIME built fast and correctly, sent pipelined over SMTP or dropped in the Maildir outbox.

* :mod:`.mime`: the RFC 5322 bytes of one e-mail and its Message-ID (no value can add a
  header, no bare CR, LF or NUL reaches the wire);
* :mod:`.smtp`: the pipelined SMTP engine (lanes, kept-open connections, timeouts,
  STARTTLS and AUTH checks, each result passed on as soon as it is read) and SMTP errors
  translated to transient or permanent;
* :mod:`.channel`: :class:`SmtpChannel` and :class:`MaildirChannel`, the channels;
* :mod:`._fast`: the speed tricks, each beside the library call it replaces
  (``tests/test_email_fast.py`` checks they agree).
"""

from notifier.channels.email.channel import MaildirChannel, SmtpChannel
from notifier.channels.email.mime import Sender, build_message, format_address, message_id
from notifier.channels.email.smtp import LANES, SmtpEngine, SmtpTarget, Step, transaction, transactions, translate

__all__ = [
    "LANES",
    "MaildirChannel",
    "Sender",
    "SmtpChannel",
    "SmtpEngine",
    "SmtpTarget",
    "Step",
    "build_message",
    "format_address",
    "message_id",
    "transaction",
    "transactions",
    "translate",
]
