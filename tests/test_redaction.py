"""The one redactor: what it hides and what it leaves readable."""

from __future__ import annotations

import pytest

from notifier.redaction import redact
from notifier.tokens import sign

TOKEN = sign(b"k", "jane.smith@telford.example")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cannot reach redis://:s3cret@cache:6379/0", "cannot reach redis://***@cache:6379/0"),
        ("redis://user:p@ss@cache/0?x=1", "redis://***@cache/0?x=1"),
        ("redis://cache:6379/0?db=2&password=s3cret&x=1", "redis://cache:6379/0?db=2&password=***&x=1"),
        ("smtp://policy:s3cret@relay:587 refused", "smtp://***@relay:587 refused"),
        (f'"GET /Unsubscribe/{TOKEN} HTTP/1.1" 200', '"GET /Unsubscribe/*** HTTP/1.1" 200'),
        (f"POST /resubscribe/{TOKEN}?x=1", "POST /resubscribe/***?x=1"),
        (f"GET /elsewhere/{TOKEN}/", "GET /elsewhere/***/"),
        (f"GET /?t={TOKEN}", "GET /?t=***"),
    ],
)
def test_credentials_and_tokens_are_hidden(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "GET /api/consultations/violence-reduction-strategy-2026/report?event=opened HTTP/1.1",
        "https://x.com/pcc/status/1845000000000000000",
        "GET /healthz?require=workers,scheduler",
        "SMTP server refused: 550 5.1.1 <jane@x.example>: no such user",
    ],
)
def test_what_is_no_secret_is_left_readable(text: str) -> None:
    assert redact(text) == text


def test_a_secret_is_hidden_in_every_spelling_and_short_ones_are_left() -> None:
    secret = "tok en/42+x"
    spellings = [
        secret,
        "tok%20en%2F42%2Bx",
        "tok+en%2f42%2Bx",
        "tok%2520en%252F42%252Bx",
        "tok\\u0020en\\u002f42\\u002bx",
        "tok&#32;en&#x2F;42&#43;x",
        "dG9rIGVuLzQyK3g",
        "dG9rIGVuLzQyK3g=",
    ]
    for spelling in spellings:
        assert redact(f"echo [{spelling}]", [secret]) == "echo [***]", spelling
    assert redact("abc abc", ["abc"]) == "abc abc", "three characters would match ordinary text"
