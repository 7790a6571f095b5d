"""Signed unsubscribe tokens: the address and an HMAC of it, so a link cannot be forged.

A token is ``<address, base64url>.<HMAC-SHA256(key, "unsubscribe:" + address), base64url, 128 bits>``.
It names one address and does nothing else; an altered, truncated or forged token fails
:func:`verify` and is rejected without touching anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

PURPOSE = b"unsubscribe:"


class BadToken(ValueError):  # noqa: N818 - reads as what it is
    """The token was not made with our key, or was altered or cut short."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, email: str) -> bytes:
    return hmac.new(key, PURPOSE + email.lower().encode(), hashlib.sha256).digest()[:16]


def sign(key: bytes, email: str) -> str:
    """A token for ``email`` (compared case-insensitively)."""
    return f"{_b64(email.lower().encode())}.{_b64(_mac(key, email))}"


def verify(key: bytes, token: str) -> str:
    """The address a token names; BadToken if it is not one of ours.

    Only the exact text :func:`sign` makes is accepted: base64 is lenient (padding, unused
    low bits, ignored characters), so a token that merely decodes to a valid address and
    signature, but is spelt differently, is rejected too.
    """
    try:
        body, mac = token.split(".", 1)
        email = _unb64(body).decode()
        given = _unb64(mac)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadToken("malformed token") from None
    if len(given) != 16 or not hmac.compare_digest(given, _mac(key, email)):
        raise BadToken("signature does not match")
    if not hmac.compare_digest(token.encode(), sign(key, email).encode()):
        raise BadToken("not in canonical form")
    return email


def unsubscribe_url(public_url: str, key: bytes, email: str) -> str:
    """The one-click unsubscribe link for ``email``."""
    return f"{public_url.rstrip('/')}/unsubscribe/{sign(key, email)}"
