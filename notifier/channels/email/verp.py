"""VERP: each e-mail's envelope sender names its delivery, so a bounce says which one failed.

With ``email.bounce_domain`` set, an e-mail goes out with ``MAIL FROM:<bounces+<opaque id>@domain>``
(Variable Envelope Return Path): a bounce comes back to that address, and the opaque id
gives back the delivery's key (:attr:`notifier.channels.base.Delivery.key`, the part of its
Message-ID before the ``@``). The id is ``base64url(AES-SIV(k, key))`` with ``k`` derived
from ``NOTIFIER_SECRET_KEY`` by HKDF for this purpose only, as the unsubscribe tokens are
(:mod:`notifier.tokens`): nothing of the address can be read from it, and a forged or altered
one is refused, so nobody can bounce someone else's delivery. It is 43 characters, so the
local part ``bounces+<id>`` is 51, within RFC 5321's 64.

A leaf: it imports nothing of notifier's but the error it raises.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from notifier.errors import BadToken

PREFIX = "bounces+"
_PURPOSE = b"verp:"
_HKDF_INFO = b"notifier VERP envelope sender v1 (AES-SIV)"
#: ``bounces+<id>@`` anywhere in a header value; the id is base64url without padding.
_FOUND = re.compile(r"bounces\+([A-Za-z0-9_-]{20,60})@", re.IGNORECASE)


@functools.lru_cache(maxsize=8)
def _cipher(key: bytes) -> AESSIV:
    derived = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=_HKDF_INFO).derive(key)
    return AESSIV(derived)


def seal(key: bytes, delivery_key: str) -> str:
    """The opaque id of a delivery (its 32-hex-digit key)."""
    sealed = _cipher(key).encrypt(bytes.fromhex(delivery_key), [_PURPOSE])
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()


def unseal(key: bytes, opaque: str) -> str:
    """The delivery key an opaque id names; BadToken if it is not one of ours."""
    try:
        sealed = base64.urlsafe_b64decode(opaque + "=" * (-len(opaque) % 4))
        return _cipher(key).decrypt(sealed, [_PURPOSE]).hex()
    except (ValueError, binascii.Error, InvalidTag):
        raise BadToken("not a bounce address of ours") from None


def find(text: str) -> list[str]:
    """Every opaque id in ``text`` (a header value, a webhook's envelope sender), in order."""
    return _FOUND.findall(text)


@dataclass(frozen=True, slots=True)
class Verp:
    """The envelope sender of each delivery: ``bounces+<opaque id>@domain``."""

    domain: str
    key: bytes

    def sender(self, delivery_key: str) -> str:
        """The envelope sender of the delivery with this key."""
        return f"{PREFIX}{seal(self.key, delivery_key)}@{self.domain}"
