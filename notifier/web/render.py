"""HTML pages from the Jinja2 templates under ``notifier/web/templates/``.

Every template extends ``base.html`` (language, skip link, header with the organisation,
main landmark) and is autoescaped: a value from config, a token or an address can never
become markup. The stylesheet is inline and allowed by its hash in the Content-Security-Policy,
so nothing else (no script, no other style, no foreign content) can load.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from importlib.resources import files
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from notifier.web.state import mask_email, state

# Colours: #0b0c0c on #fff (19:1); white on #00703c buttons (5.7:1); a yellow and black focus
# ring visible on both. Text is at least 19px, and the layout works from 320px up.
STYLE = files("notifier.web").joinpath("templates/style.css").read_text(encoding="utf-8")
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
#: Nothing but our own inline style may load, forms post only to us, and no other site may
#: frame the pages (so no one can overlay our buttons to trick a click).
CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def sha256(text: str) -> str:
    """A CSP hash source for ``text``: ``'sha256-…'``."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def console_csp(*, styles: Iterable[str] = (), style_attributes: Iterable[str] = (), script: str | None = None) -> str:
    """:data:`CSP` for a console page that needs more, and only that much more: the ``<style>``
    elements and ``style`` attributes of an e-mail previewed in a sandboxed ``srcdoc`` iframe
    (which inherits this policy), each allowed by its hash; and one inline ``script`` allowed
    by its hash, which may fetch from this site (the live progress of a send)."""
    style = " ".join(dict.fromkeys([f"'sha256-{_STYLE_HASH}'", *map(sha256, styles)]))
    attributes = list(dict.fromkeys(map(sha256, style_attributes)))
    if attributes:
        style += " 'unsafe-hashes' " + " ".join(attributes)
    extra = f"; script-src {sha256(script)}; connect-src 'self'" if script is not None else ""
    return f"default-src 'none'; style-src {style}; form-action 'self'; frame-ancestors 'none'; base-uri 'none'{extra}"


#: Headers on every page: not cached (the state changes), not indexed, and the URL (which
#: holds the token) never sent on as a Referer.
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex, nofollow",
}


def _environment() -> Environment:
    """Autoescaped for every template name (``.html`` or not), and strict: a name a template
    uses but no handler passes is an error, not a blank on the page."""
    env = Environment(
        loader=PackageLoader("notifier.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["mask"] = mask_email
    # Our own file, hashed into the CSP above: it must reach the page byte for byte.
    env.globals["style"] = Markup(STYLE)  # noqa: S704
    return env


def _brand(request: Request) -> dict[str, Any]:
    return {"brand": state(request).brand}


templates = Jinja2Templates(env=_environment(), context_processors=[_brand])


def render(
    request: Request, name: str, *, status: int = 200, headers: Mapping[str, str] | None = None, **context: Any
) -> Response:
    """The page ``name`` with ``context`` (and ``brand``), with :data:`PAGE_HEADERS` and ``headers``."""
    return templates.TemplateResponse(
        request, name, context, status_code=status, headers={**PAGE_HEADERS, **(headers or {})}
    )
