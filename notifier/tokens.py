"""Unsubscribe tokens: the address encrypted and authenticated, so a link neither shows
nor lets anyone forge it.

A token is ``base64url(AES-SIV(k, address lower-cased))`` (RFC 5297, from the
``cryptography`` package), with ``k`` derived from ``NOTIFIER_SECRET_KEY`` by HKDF-SHA256.
AES-SIV is deterministic authenticated encryption: the same address always gives the same
token (so a link is stable across events), nothing of the address can be read from it,
and any altered, truncated or forged token fails :func:`verify` without touching anything.
It is 16 bytes longer than the address (about 60 characters for a usual address), short
enough for a ``List-Unsubscribe`` header; the key object is made once per key, so minting
one costs a single AES-SIV call on the worker's hot path.

Tokens minted before this format, ``<address, base64url>.<HMAC-SHA256, 128 bits>``, showed
the address; links already sent with them keep working: :func:`verify` still accepts them,
checked exactly as before. Only the new format is minted. The two cannot be confused: the
old one always has a dot, which base64url never produces.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from notifier.errors import BadToken

#: Bound into every token (as associated data) and into the key derivation, so a token is
#: good for unsubscribing and for nothing else signed with the same secret.
PURPOSE = b"unsubscribe:"
_HKDF_INFO = b"notifier unsubscribe token v2 (AES-SIV)"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@functools.lru_cache(maxsize=8)
def _cipher(key: bytes) -> AESSIV:
    """The AES-SIV-256 key object for a secret (HKDF-derived once per secret and kept)."""
    derived = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=_HKDF_INFO).derive(key)
    return AESSIV(derived)


def sign(key: bytes, email: str) -> str:
    """An opaque token for ``email`` (compared case-insensitively)."""
    return _b64(_cipher(key).encrypt(email.lower().encode(), [PURPOSE]))


def verify(key: bytes, token: str) -> str:
    """The address a token names; BadToken if it is not one of ours.

    Only the exact text a signer made is accepted: base64 is lenient (padding, unused low
    bits, ignored characters), so a token that merely decodes to a valid one, but is spelt
    differently, is rejected too.
    """
    if "." in token:
        return _verify_legacy(key, token)
    try:
        sealed = _unb64(token)
    except (ValueError, binascii.Error):
        raise BadToken("malformed token") from None
    if _b64(sealed) != token:
        raise BadToken("not in canonical form")
    try:
        return _cipher(key).decrypt(sealed, [PURPOSE]).decode()
    except (InvalidTag, ValueError):  # ValueError: shorter than the 16-byte tag, or not UTF-8
        raise BadToken("not a token of ours") from None


# --- tokens minted before: verified exactly as before, never minted ------------------------


def _legacy_mac(key: bytes, email: str) -> bytes:
    return hmac.new(key, PURPOSE + email.lower().encode(), hashlib.sha256).digest()[:16]


def _legacy_sign(key: bytes, email: str) -> str:
    return f"{_b64(email.lower().encode())}.{_b64(_legacy_mac(key, email))}"


def _verify_legacy(key: bytes, token: str) -> str:
    """The address an old-format token names (see the module docstring); BadToken if not ours."""
    try:
        body, mac = token.split(".", 1)
        email = _unb64(body).decode()
        given = _unb64(mac)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadToken("malformed token") from None
    if len(given) != 16 or not hmac.compare_digest(given, _legacy_mac(key, email)):
        raise BadToken("signature does not match")
    if not hmac.compare_digest(token.encode(), _legacy_sign(key, email).encode()):
        raise BadToken("not in canonical form")
    return email


def unsubscribe_url(public_url: str, key: bytes, email: str) -> str:
    """The one-click unsubscribe link for ``email``."""
    return f"{public_url.rstrip('/')}/unsubscribe/{sign(key, email)}"
