"""The one redactor: credentials and unsubscribe tokens out of everything we write down.

:func:`redact` is applied to provider replies and error messages before they reach the
ledger (and so the report), to the web service's access log, and to Redis URLs and errors
in messages and ``/healthz``. It replaces with ``***``:

* each given secret (an access token, a password) in any spelling a far side might echo
  it in: as is, percent-encoded (any character, once or twice, hex in either case, ``+``
  for a space), as JSON ``\\uXXXX`` or HTML ``&#NN;`` escapes, and as base64 / base64url;
* the credentials in a URL: its user and password (``redis://***@host``) and a
  ``password=`` query parameter;
* the token of every ``/unsubscribe/…`` or ``/resubscribe/…`` path, whatever its case;
* any other path segment or query value that looks like a token (24 or more base64url
  characters, percent-escapes or dots, mixing upper and lower case): an unsubscribe token
  is a capability, and may turn up under any path (a mistyped one, a proxy's prefix).

Identifiers we do want to read (consultation ids, event names, provider ids) are lower
case or digits, so they are left alone.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterable

MASK = "***"
#: Secrets shorter than this are not redacted: they would match ordinary text.
MIN_SECRET = 4

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#]*@")
_PASSWORD_PARAM = re.compile(r"(?P<name>[?&;]password=)[^&#\s]*", re.IGNORECASE)
_TOKEN_PATH = re.compile(r"/(unsubscribe|resubscribe)/[^/?#&\s\"']+", re.IGNORECASE)
_SEGMENT = r"[A-Za-z0-9_.~%-]"
_TOKEN_LIKE = re.compile(rf"(?<=[/=])(?={_SEGMENT}*?[A-Z])(?={_SEGMENT}*?[a-z]){_SEGMENT}{{24,}}")


def _char(char: str) -> str:
    """A regex for one character of a secret in any of the spellings in the module docstring."""
    forms = [re.escape(char)]
    forms.append("".join(f"%(?:25)?(?i:{byte:02x})" for byte in char.encode()))
    forms.append(f"\\\\u(?i:{ord(char):04x})")
    forms.append(f"&#0*{ord(char)};|&#(?i:x0*{ord(char):x});")
    if char == " ":
        forms.append(r"\+")
    return "(?:" + "|".join(forms) + ")"


@functools.lru_cache(maxsize=64)
def _pattern(secret: str) -> re.Pattern[str]:
    """Every spelling of ``secret`` we redact, as one compiled pattern (kept per secret)."""
    raw = secret.encode()
    encoded = {base64.b64encode(raw).decode().rstrip("="), base64.urlsafe_b64encode(raw).decode().rstrip("=")}
    return re.compile("|".join(["".join(_char(c) for c in secret), *(re.escape(e) + "=*" for e in sorted(encoded))]))


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with each secret (in any spelling) and every token-like path part as ``***``."""
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET:
            text = _pattern(secret).sub(MASK, text)
    text = _USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    text = _PASSWORD_PARAM.sub(rf"\g<name>{MASK}", text)
    text = _TOKEN_PATH.sub(rf"/\1/{MASK}", text)
    return _TOKEN_LIKE.sub(MASK, text)
