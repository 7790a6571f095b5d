"""Unsubscribe tokens: opaque, only the exact token we made is accepted, and links already
sent in the old format keep working."""

from __future__ import annotations

import base64

import pytest

from notifier.errors import BadToken
from notifier.tokens import sign, unsubscribe_url, verify

KEY = b"test-secret-key"
ZOE = "zoe.baxter@gazette.example"
#: sign(KEY, ZOE) as minted before tokens were encrypted (commit 4ee9b3e): such links are
#: in inboxes and must keep unsubscribing.
OLD_ZOE = "em9lLmJheHRlckBnYXpldHRlLmV4YW1wbGU.BqsqVwNovjlkE5aWUUpvMQ"


def _lenient_decode(text: str) -> bytes:
    """How a token is read: padding restored, anything else base64 tolerates."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _flip_unused_bits(text: str) -> str:
    """``text`` with its last character changed only in bits its byte count does not use."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return text[:-1] + alphabet[alphabet.index(text[-1]) ^ 0b0001]


def _readable_forms(email: str) -> list[str]:
    """Every way a piece of ``email`` could show in a URL: its local part, domain labels and
    the whole, as text, hex, and base64 (standard and url-safe, at each of the 3 alignments,
    less the edge characters that depend on neighbours)."""
    local, domain = email.split("@")
    pieces = [email, local, domain, *domain.split("."), *local.split(".")]
    forms = [p for p in pieces if len(p) >= 4]
    for piece in (email, local, domain):
        raw = piece.encode()
        forms += [raw.hex(), raw.hex().upper()]
        for shift in range(3):
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                encoded = encode(b"\0" * shift + raw).decode().rstrip("=")
                forms.append(encoded[(shift * 4 + 2) // 3 + 1 : -2])
    return [f for f in forms if len(f) >= 4]


def test_a_token_names_its_address() -> None:
    assert verify(KEY, sign(KEY, ZOE)) == ZOE


def test_the_address_is_compared_without_case() -> None:
    assert sign(KEY, "Zoe.Baxter@Gazette.example") == sign(KEY, ZOE)
    assert verify(KEY, sign(KEY, "Zoe.Baxter@Gazette.example")) == ZOE


@pytest.mark.parametrize(
    "email",
    [
        ZOE,
        "a.very.long.name+consultations@telford-and-wrekin-council.gov.example",
        "jo@x.example",
        "Zoë.Brontë@münchen.example",
    ],
)
def test_no_part_of_the_address_can_be_read_from_the_token_or_the_link(email: str) -> None:
    base = "https://notify.pcc.example"
    url = unsubscribe_url(base, KEY, email)
    assert url.startswith(f"{base}/unsubscribe/")
    token = url.rsplit("/", 1)[1]
    for form in _readable_forms(email.lower()):
        assert form.lower() not in url[len(base) :].lower(), form
    assert verify(KEY, token) == email.lower()


def test_a_token_is_short_enough_for_a_list_unsubscribe_header() -> None:
    # A header line should stay within 78 characters where it can; 998 is the hard limit.
    assert len(unsubscribe_url("https://notify.pcc.example", KEY, ZOE)) < 100


def test_an_old_format_token_from_before_still_names_its_address() -> None:
    assert verify(KEY, OLD_ZOE) == ZOE


def test_another_key_is_refused() -> None:
    with pytest.raises(BadToken):
        verify(KEY, sign(b"another-key", ZOE))
    with pytest.raises(BadToken):
        verify(b"another-key", OLD_ZOE)


@pytest.mark.parametrize("where", [0, 2, 10, 20, -3, -1])
def test_an_altered_token_is_refused(where: int) -> None:
    token = sign(KEY, ZOE)
    at = where % len(token)
    altered = token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1 :]
    with pytest.raises(BadToken):
        verify(KEY, altered)


@pytest.mark.parametrize("token", [OLD_ZOE, sign(KEY, ZOE)], ids=["old", "new"])
@pytest.mark.parametrize("cut", [1, 4, 23])
def test_a_truncated_token_is_refused(token: str, cut: int) -> None:
    with pytest.raises(BadToken):
        verify(KEY, token[:-cut])


def test_a_forged_token_is_refused() -> None:
    # Anything an attacker can make without the key: the address encoded, hashed, or random
    # bytes of the right length, in either format.
    sealed = _lenient_decode(sign(KEY, ZOE))
    forgeries = [
        base64.urlsafe_b64encode(ZOE.encode()).rstrip(b"=").decode(),
        base64.urlsafe_b64encode(bytes(len(sealed))).rstrip(b"=").decode(),
        base64.urlsafe_b64encode(bytes(16) + ZOE.encode()).rstrip(b"=").decode(),
        base64.urlsafe_b64encode(bytes(b ^ 1 for b in sealed)).rstrip(b"=").decode(),
        f"{OLD_ZOE.split('.')[0]}.{base64.urlsafe_b64encode(b'0123456789abcdef').rstrip(b'=').decode()}",
    ]
    for forged in forgeries:
        with pytest.raises(BadToken):
            verify(KEY, forged)


def test_an_address_swapped_under_a_good_old_signature_is_refused() -> None:
    _, mac = OLD_ZOE.split(".")
    body = base64.urlsafe_b64encode(b"someone.else@gazette.example").rstrip(b"=").decode()
    with pytest.raises(BadToken):
        verify(KEY, f"{body}.{mac}")


def _non_canonical() -> dict[str, tuple[str, str]]:
    """(token, the same token spelt differently) by kind."""
    new = sign(KEY, ZOE)
    short = sign(KEY, "zoe@gazette.example")  # 35 bytes: its last character has unused bits
    body, mac = OLD_ZOE.split(".")
    return {
        "new: padding": (new, f"{new}===="),
        "new: unused bits changed": (short, _flip_unused_bits(short)),
        # base64 skips characters outside its alphabet (four keep the padding arithmetic right)
        "new: trailing characters": (new, f"{new}!!!!"),
        "new: trailing whitespace": (new, f"{new}\r\n\r\n"),
        "old: padding on the signature": (OLD_ZOE, f"{OLD_ZOE}=="),
        "old: padding on the address": (OLD_ZOE, f"{body}{'=' * (-len(body) % 4) or '===='}.{mac}"),
        "old: unused bits changed": (OLD_ZOE, f"{body}.{_flip_unused_bits(mac)}"),
        "old: trailing characters": (OLD_ZOE, f"{OLD_ZOE}!!!!"),
        "old: characters inside": (OLD_ZOE, f"{body}.{mac[:5]}.~.~{mac[5:]}"),
        "old: trailing whitespace": (OLD_ZOE, f"{body}.{mac}\r\n\r\n"),
    }


@pytest.mark.parametrize("kind", list(_non_canonical()))
def test_a_token_spelt_differently_is_refused_even_if_it_decodes_the_same(kind: str) -> None:
    original, variant = _non_canonical()[kind]
    assert variant != original
    decoded = [_lenient_decode(p) for p in variant.split(".", 1)]
    assert decoded == [_lenient_decode(p) for p in original.split(".")]
    with pytest.raises(BadToken):
        verify(KEY, variant)


@pytest.mark.parametrize("token", ["", ".", "no-dot", "a.b.c", "%%%.%%%", "é.é", "é", "AAAA", "A" * 200])
def test_garbage_is_refused(token: str) -> None:
    with pytest.raises(BadToken):
        verify(KEY, token)
