"""E-mail address checks for stakeholder lists: ``email_validator``'s verdict, fast for plain addresses.

A leaf of :mod:`notifier.config`: it imports nothing of notifier's.
"""

from __future__ import annotations

import re

from email_validator import EmailNotValidError, validate_email

from notifier.errors import InvalidValueError


def check_email(value: str) -> str:
    """``value`` normalised as ``email_validator`` normalises it, or ValueError saying why not.

    A stakeholder list can hold 100,000 addresses, and ``email_validator`` spends most of
    its time on per-character Unicode checks that a plain ASCII address does not need. So
    :func:`fast_email` accepts the common shape itself and everything else, every address
    it is not certain of, goes to ``email_validator``: the result is the same either way.
    """
    fast = fast_email(value)
    if fast is not None:
        return fast
    return slow_email(value)


def slow_email(value: str) -> str:
    """``email_validator``'s verdict on ``value``: its normalised form, or ValueError."""
    try:
        return validate_email(value, check_deliverability=False, allow_smtputf8=False).normalized
    except EmailNotValidError as exc:
        raise InvalidValueError(f"invalid e-mail address {value!r}: {exc}") from None


# An ASCII dot-atom local part (RFC 5322 3.2.3: atext separated by single dots), which
# email_validator accepts unchanged, and an ASCII domain made of letters, digits, hyphens
# and dots, whose real checks are email_validator's own (see _fast_domain).
_FAST_LOCAL = re.compile(r"[A-Za-z0-9_!#$%&'*+/=?^`{|}~-]+(?:\.[A-Za-z0-9_!#$%&'*+/=?^`{|}~-]+)*")
_FAST_DOMAIN = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_MAX_ADDRESS = 254  # email_validator's limit on the whole address (RFC 5321 4.5.3.1.3)
# RFC 2142 mailbox names, which email_validator lower-cases: left to it.
_LOWERED_MAILBOXES = frozenset(
    {
        "info",
        "marketing",
        "sales",
        "support",
        "abuse",
        "noc",
        "security",
        "postmaster",
        "hostmaster",
        "usenet",
        "news",
        "webmaster",
        "www",
        "uucp",
        "ftp",
    }
)
_DOMAINS: dict[str, str | None] = {}  # domain as written -> email_validator's form, or None: ask it
_DOMAINS_MAX = 50_000


def fast_email(value: str) -> str | None:
    """The normalised form of a plain ASCII address, without ``email_validator``'s
    per-character work; None when the address is anything else (then ask
    :func:`slow_email`, which accepts or rejects it and says why).

    What is accepted here ``email_validator`` accepts too, normalised the same way: one
    ``@``, a dot-atom local part kept as written (one not lower-cased by RFC 2142), a domain
    ``email_validator`` itself accepted (cached per domain) and whose normalised form is
    plain ASCII, and at most 254 characters before and after normalisation.
    """
    if not value.isascii() or len(value) > _MAX_ADDRESS:
        return None
    local, at, domain = value.partition("@")
    if not at or not _FAST_LOCAL.fullmatch(local) or local.lower() in _LOWERED_MAILBOXES:
        return None
    normalised = _fast_domain(domain)
    if normalised is None:
        return None
    address = f"{local}@{normalised}"
    return address if len(address) <= _MAX_ADDRESS else None


def _fast_domain(domain: str) -> str | None:
    """``email_validator``'s normalised form of an ASCII ``domain`` it accepts, when that
    form is ASCII too (no Punycode label to turn into Unicode); None otherwise. Asked once
    per domain: a list of 100,000 people has a few thousand domains at most."""
    try:
        return _DOMAINS[domain]
    except KeyError:
        pass
    found: str | None = None
    if _FAST_DOMAIN.fullmatch(domain):
        try:
            checked = validate_email("x@" + domain, check_deliverability=False, allow_smtputf8=False)
        except EmailNotValidError:
            pass  # rejected: slow_email says why, with the whole address
        else:
            if checked.domain == checked.ascii_domain and checked.domain.isascii():
                found = checked.domain
    if len(_DOMAINS) >= _DOMAINS_MAX:
        _DOMAINS.clear()
    _DOMAINS[domain] = found
    return found
