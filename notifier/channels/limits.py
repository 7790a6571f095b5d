"""How long a post is, as each platform counts it. Pure.

Each platform's channel class declares its own rules (see :class:`PostRules`), as
``max_length``, ``counting`` and ``url_length``:

* X: 280 weighted characters; most Latin, Cyrillic and punctuation weigh 1, other
  scripts (CJK, say) and emoji 2; every URL counts 23 whatever its length.
* Mastodon: 500 characters; every URL counts 23.
* Bluesky: 300 graphemes (what a reader sees as one character).
* Facebook: 63,206 characters.
* Webhooks: no limit.

:func:`notifier.channels.registry.rules` gives the class of a platform by name.
"""

from __future__ import annotations

import enum
import unicodedata
from typing import Protocol

import regex

_URL = regex.compile(r"https?://[^\s<>\"]+[^\s<>\".,;:!?)\]'’”]")
_GRAPHEME = regex.compile(r"\X")
# twitter-text v3: code points in these ranges weigh 1, everything else 2.
_LIGHT = ((0x0000, 0x10FF), (0x2000, 0x200D), (0x2010, 0x201F), (0x2032, 0x2037))


class Counting(enum.Enum):
    """What a platform counts in a post; the value names it in messages."""

    CHARACTERS = "characters"  # code points, after NFC
    GRAPHEMES = "graphemes"  # what a reader sees as one character
    WEIGHTED = "weighted characters"  # twitter-text's weights


class PostRules(Protocol):
    """What a platform's channel class declares about its posts."""

    @property
    def platform(self) -> str:
        """The platform's name, as in messages."""
        ...

    @property
    def max_length(self) -> int | None:
        """The longest post it takes, counted its way; None for no limit."""
        ...

    @property
    def counting(self) -> Counting:
        """How it counts."""
        ...

    @property
    def url_length(self) -> int | None:
        """How much every URL counts whatever its length (X, Mastodon); None: as written."""
        ...

    @property
    def link_in_text(self) -> bool:
        """True when a post has no separate link field: the link goes in the text."""
        ...


def _x_weight(grapheme: str) -> int:
    if len(grapheme) > 1 and any(unicodedata.category(c) == "So" for c in grapheme):
        return 2  # an emoji sequence counts as one emoji
    return sum(1 if any(lo <= ord(c) <= hi for lo, hi in _LIGHT) else 2 for c in grapheme)


def urls(text: str) -> list[str]:
    """The http(s) URLs in ``text``, as platforms link them."""
    return _URL.findall(text)


def length(rules: PostRules, text: str) -> int:
    """``text``'s length as the platform of ``rules`` counts it."""
    text = unicodedata.normalize("NFC", text)
    links = 0
    if rules.url_length is not None:
        links = rules.url_length * len(urls(text))
        text = _URL.sub("", text)
    if rules.counting is Counting.GRAPHEMES:
        return links + len(_GRAPHEME.findall(text))
    if rules.counting is Counting.WEIGHTED:
        return links + sum(_x_weight(g) for g in _GRAPHEME.findall(text))
    return links + len(text)


def overflow(rules: PostRules, text: str) -> str | None:
    """A message saying how far ``text`` is over the limit of ``rules``, or None if it fits."""
    most = rules.max_length
    if most is None:
        return None
    n = length(rules, text)
    if n <= most:
        return None
    return f"{n} {rules.counting.value}, over {rules.platform}'s limit of {most} by {n - most}"
