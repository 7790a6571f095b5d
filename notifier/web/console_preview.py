"""What the console's event page needs beyond :mod:`notifier.preview`: the inline styles of an
e-mail's HTML part, which the page's Content-Security-Policy allows by hash so that the
sandboxed iframe shows the e-mail as its recipients would see it.
"""

from __future__ import annotations

from collections.abc import Iterable
from html.parser import HTMLParser

from notifier.preview import EmailPreview, PostPreview


class _Styles(HTMLParser):
    """Collects the inline styles of an HTML document (for the CSP hashes)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[str] = []
        self.attributes: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_style = tag == "style"
        self.attributes += [value for name, value in attrs if name == "style" and value is not None]

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.elements.append(data)


def styles(previews: Iterable[EmailPreview | PostPreview]) -> tuple[list[str], list[str]]:
    """The ``<style>`` contents and ``style`` attributes of every e-mail's HTML part."""
    elements: list[str] = []
    attributes: list[str] = []
    for item in previews:
        if isinstance(item, EmailPreview) and item.html is not None:
            found = _Styles()
            found.feed(item.html)
            found.close()
            elements += found.elements
            attributes += found.attributes
    return elements, attributes
