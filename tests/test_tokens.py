"""Unsubscribe tokens: only the exact token we made is accepted."""

from __future__ import annotations

import base64

import pytest

from notifier.tokens import BadToken, sign, verify

KEY = b"test-secret-key"
ZOE = "zoe.baxter@gazette.example"


def _lenient_decode(text: str) -> bytes:
    """How verify reads each half: padding restored, anything else base64 tolerates."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _flip_unused_bits(text: str) -> str:
    """``text`` with its last character changed only in bits that 16 bytes of base64 do not use."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return text[:-1] + alphabet[alphabet.index(text[-1]) ^ 0b0001]


def test_a_token_names_its_address() -> None:
    assert verify(KEY, sign(KEY, ZOE)) == ZOE


def test_the_address_is_compared_without_case() -> None:
    assert sign(KEY, "Zoe.Baxter@Gazette.example") == sign(KEY, ZOE)
    assert verify(KEY, sign(KEY, "Zoe.Baxter@Gazette.example")) == ZOE


def test_another_key_is_refused() -> None:
    with pytest.raises(BadToken):
        verify(KEY, sign(b"another-key", ZOE))


@pytest.mark.parametrize("where", [2, -3], ids=["address", "signature"])
def test_an_altered_token_is_refused(where: int) -> None:
    token = sign(KEY, ZOE)
    altered = token[:where] + ("A" if token[where] != "A" else "B") + token[where + 1 :]
    with pytest.raises(BadToken):
        verify(KEY, altered)


@pytest.mark.parametrize("cut", [1, 4, 23])
def test_a_truncated_token_is_refused(cut: int) -> None:
    with pytest.raises(BadToken):
        verify(KEY, sign(KEY, ZOE)[:-cut])


def test_an_address_swapped_under_a_good_signature_is_refused() -> None:
    _, mac = sign(KEY, ZOE).split(".")
    body = base64.urlsafe_b64encode(b"someone.else@gazette.example").rstrip(b"=").decode()
    with pytest.raises(BadToken):
        verify(KEY, f"{body}.{mac}")


def _non_canonical() -> dict[str, str]:
    token = sign(KEY, ZOE)
    body, mac = token.split(".")
    return {
        "padding on the signature": f"{token}==",
        "padding on the address": f"{body}{'=' * (-len(body) % 4) or '===='}.{mac}",
        "unused bits changed": f"{body}.{_flip_unused_bits(mac)}",
        # base64 skips characters outside its alphabet (four keep the padding arithmetic right)
        "trailing characters": f"{token}!!!!",
        "characters inside": f"{body}.{mac[:5]}.~.~{mac[5:]}",
        "trailing whitespace": f"{body}.{mac}\r\n\r\n",
    }


@pytest.mark.parametrize("kind", list(_non_canonical()))
def test_a_token_spelt_differently_is_refused_even_if_it_decodes_the_same(kind: str) -> None:
    token = sign(KEY, ZOE)
    variant = _non_canonical()[kind]
    assert variant != token
    body, mac = token.split(".")
    other_body, other_mac = variant.split(".", 1)
    assert (_lenient_decode(other_body), _lenient_decode(other_mac)) == (_lenient_decode(body), _lenient_decode(mac))
    with pytest.raises(BadToken):
        verify(KEY, variant)


@pytest.mark.parametrize("token", ["", ".", "no-dot", "a.b.c", "%%%.%%%", "é.é"])
def test_garbage_is_refused(token: str) -> None:
    with pytest.raises(BadToken):
        verify(KEY, token)
