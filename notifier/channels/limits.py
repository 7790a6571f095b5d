"""How long a post is, as each platform counts it. Pure.

* X: 280 weighted characters; most Latin, Cyrillic and punctuation weigh 1, other
  scripts (CJK, say) and emoji 2; every URL counts 23 whatever its length.
* Mastodon: 500 characters; every URL counts 23.
* Bluesky: 300 graphemes (what a reader sees as one character).
* Facebook: 63,206 characters.
* Webhooks: no limit.
"""

from __future__ import annotations

import unicodedata

import regex

LIMITS = {"x": 280, "mastodon": 500, "bluesky": 300, "facebook": 63_206}
URL_WEIGHT = 23
_URL = regex.compile(r"https?://[^\s<>\"]+[^\s<>\".,;:!?)\]'’”]")
_GRAPHEME = regex.compile(r"\X")
# twitter-text v3: code points in these ranges weigh 1, everything else 2.
_LIGHT = ((0x0000, 0x10FF), (0x2000, 0x200D), (0x2010, 0x201F), (0x2032, 0x2037))


def _x_weight(grapheme: str) -> int:
    if len(grapheme) > 1 and any(unicodedata.category(c) == "So" for c in grapheme):
        return 2  # an emoji sequence counts as one emoji
    return sum(1 if any(lo <= ord(c) <= hi for lo, hi in _LIGHT) else 2 for c in grapheme)


def urls(text: str) -> list[str]:
    """The http(s) URLs in ``text``, as platforms link them."""
    return _URL.findall(text)


def length(platform: str, text: str) -> int:
    """``text``'s length as ``platform`` counts it."""
    text = unicodedata.normalize("NFC", text)
    if platform == "bluesky":
        return len(_GRAPHEME.findall(text))
    if platform in ("x", "mastodon"):
        found = urls(text)
        rest = _URL.sub("", text)
        if platform == "x":
            return URL_WEIGHT * len(found) + sum(_x_weight(g) for g in _GRAPHEME.findall(rest))
        return URL_WEIGHT * len(found) + len(rest)
    return len(text)


def limit(platform: str) -> int | None:
    """The longest post ``platform`` takes, or None when it has no limit."""
    return LIMITS.get(platform)


def overflow(platform: str, text: str) -> str | None:
    """A message saying how far ``text`` is over ``platform``'s limit, or None if it fits."""
    most = limit(platform)
    if most is None:
        return None
    n = length(platform, text)
    if n <= most:
        return None
    unit = "weighted characters" if platform == "x" else "graphemes" if platform == "bluesky" else "characters"
    return f"{n} {unit}, over {platform}'s limit of {most} by {n - most}"
