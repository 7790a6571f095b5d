"""Amazon SNS messages: their signature checked, as AWS documents it, before anything is believed.

SNS signs each message with the private key of an X.509 certificate it publishes at
``SigningCertURL``. :class:`SnsVerifier` accepts a message only when:

* its ``Type`` is one SNS sends and every field that is signed for that type is there;
* ``SigningCertURL`` is ``https://sns.<region>.amazonaws.com/…`` (or ``.amazonaws.com.cn``):
  anyone can make a certificate and a signature, so where the certificate comes from is
  what makes a message Amazon's;
* the certificate is within its validity period, and ``Signature`` verifies over the
  canonical string (each signed field as ``Name\\nValue\\n``, in order) with RSA PKCS#1 v1.5
  and SHA-1 (``SignatureVersion`` 1) or SHA-256 (2).

``trusted_prefix`` (``NOTIFIER_SNS_CERT_URL``, unset in production) names one more exact
place certificates may come from: tests serve their own certificate on loopback there. It
adds a place, it never loosens the check of the others. Certificates are kept by URL.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from notifier.errors import BadSignatureError

#: The environment variable naming one more trusted certificate URL prefix (tests only).
TRUSTED_CERT_VARIABLE = "NOTIFIER_SNS_CERT_URL"
_NOTIFICATION = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_SUBSCRIPTION = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
SIGNED: dict[str, tuple[str, ...]] = {
    "Notification": _NOTIFICATION,
    "SubscriptionConfirmation": _SUBSCRIPTION,
    "UnsubscribeConfirmation": _SUBSCRIPTION,
}
_OPTIONAL = frozenset({"Subject"})  # signed when present
_AWS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
_MAX_CERT = 64 * 1024


def canonical(message: Mapping[str, Any]) -> bytes:
    """The string SNS signed for ``message``; BadSignatureError when a signed field is missing."""
    fields = SIGNED.get(str(message.get("Type")))
    if fields is None:
        raise BadSignatureError(f"not an SNS message type: {message.get('Type')!r}")
    parts = []
    for name in fields:
        value = message.get(name)
        if value is None and name in _OPTIONAL:
            continue
        if not isinstance(value, str):
            raise BadSignatureError(f"the SNS message has no {name}")
        parts.append(f"{name}\n{value}\n")
    return "".join(parts).encode()


def amazon_url(url: str) -> bool:
    """Whether ``url`` is an https URL on an SNS host of Amazon's."""
    parts = urlsplit(url)
    return parts.scheme == "https" and _AWS_HOST.match(parts.hostname or "") is not None and parts.port in (None, 443)


class SnsVerifier:
    """Checks SNS messages' signatures (see the module doc)."""

    def __init__(self, trusted_prefix: str | None = None) -> None:
        self.trusted_prefix = trusted_prefix or None
        self._certs: dict[str, x509.Certificate] = {}

    def allowed(self, url: str) -> bool:
        """Whether a signing certificate may be fetched from ``url``."""
        return amazon_url(url) or (self.trusted_prefix is not None and url.startswith(self.trusted_prefix))

    async def verify(self, message: Mapping[str, Any]) -> None:
        """Return when ``message`` is signed by SNS; raise BadSignatureError otherwise."""
        algorithm = _HASHES.get(str(message.get("SignatureVersion")))
        if algorithm is None:
            raise BadSignatureError("unsigned, or an unknown SignatureVersion")
        url = message.get("SigningCertURL")
        if not isinstance(url, str) or not self.allowed(url):
            raise BadSignatureError(f"SigningCertURL {url!r} is not an SNS certificate of Amazon's")
        try:
            signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
        except (ValueError, binascii.Error):
            raise BadSignatureError("the Signature is not base64") from None
        data = canonical(message)
        key = (await self._certificate(url)).public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise BadSignatureError("the signing certificate's key is not RSA")
        try:
            key.verify(signature, data, padding.PKCS1v15(), algorithm())
        except InvalidSignature:
            raise BadSignatureError("the signature does not match the message") from None

    async def _certificate(self, url: str) -> x509.Certificate:
        cert = self._certs.get(url)
        if cert is None:
            try:
                async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
                    response = await client.get(url)
                response.raise_for_status()
                if len(response.content) > _MAX_CERT:
                    raise BadSignatureError("the signing certificate is too large")
                cert = x509.load_pem_x509_certificate(response.content)
            except (httpx.HTTPError, ValueError) as exc:
                raise BadSignatureError(f"cannot fetch the signing certificate: {exc}") from None
            if len(self._certs) > 32:
                self._certs.clear()
            self._certs[url] = cert
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise BadSignatureError("the signing certificate is not valid now")
        return cert
