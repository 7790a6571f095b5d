"""Signing in to the console and out of it: ``/admin/sign-in``, ``/admin/sign-out`` and ``/admin/``.

The sign-in form posts ``email``, ``password`` and ``csrf_token`` (the session's, so another
site cannot sign a visitor in to an account of its choosing either). Its errors follow the
GOV.UK pattern: a summary after the heading whose links move to the field, and the message
again beside the field. A refusal never says whether the address has an account
(:mod:`notifier.users`); a locked account says for how long.

After signing in, the browser goes back to the console page it asked for (``next``), but
only to a path of this site under ``/admin``: ``next=//elsewhere.example`` or
``next=https://…`` is ignored, so a link to our sign-in page cannot send people on to a
look-alike site.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import anyio.to_thread
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from notifier import users
from notifier.errors import SignInRefused, StoreError
from notifier.store import User
from notifier.web.auth import SIGN_IN_PATH, Role, checked_form, csrf_token, current_user, sign_in, sign_out, signed_in
from notifier.web.console import store
from notifier.web.render import render

log = logging.getLogger(__name__)

#: Where a signed-in user lands when they did not ask for a page.
HOME = "/admin/consultations"
#: The longest ``next`` kept: a console URL with its filters is far shorter.
MAX_NEXT = 2_000


def safe_next(target: object) -> str | None:
    """``target`` when it is a path of this site under ``/admin`` (with its query), else None.

    Refused: anything with a scheme or host (``https://x``, ``//x``, ``/\\x``, which browsers
    read as ``//x``), control characters, and paths outside the console (``/admin/../x`` too)."""
    if not isinstance(target, str) or not target or len(target) > MAX_NEXT:
        return None
    if "\\" in target or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or target.startswith("//"):
        return None
    if parts.path != "/admin" and not parts.path.startswith("/admin/"):
        return None
    if any(segment in {".", ".."} for segment in unquote(parts.path).split("/")):
        return None  # /admin/../x is /x to a browser
    if parts.path.rstrip("/") in {SIGN_IN_PATH, "/admin/sign-out"}:
        return None  # signed in, the sign-in page would send the browser back to itself
    return target


def _form(request: Request, *, status: int = 200, **context: Any) -> Response:
    """The sign-in page, with the session's CSRF token and whatever ``context`` adds."""
    values: dict[str, Any] = {"errors": {}, "email": "", "next": None, "signed_out": False, **context}
    return render(request, "sign_in.html", status=status, csrf=csrf_token(request), **values)


async def sign_in_form(request: Request) -> Response:
    """GET ``/admin/sign-in[?next=/admin/…]``: the form; signed in already, on to ``next``, or
    without one a page saying who is signed in, with the way out."""
    target = safe_next(request.query_params.get("next"))
    user = await signed_in(request)
    if user is not None and target:
        return RedirectResponse(target, status_code=303)
    if user is not None:
        return render(request, "signed_in.html", user=user, csrf=csrf_token(request), home=HOME)
    return _form(request, next=target, signed_out=request.query_params.get("signed-out") == "1")


def _missing(email: str, password: str) -> dict[str, str]:
    errors: dict[str, str] = {}
    if not email:
        errors["email"] = "Enter your email address"
    if not password:
        errors["password"] = "Enter your password"  # noqa: S105 - a message, not a password
    return errors


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


async def sign_in_submit(request: Request) -> Response:
    """POST ``/admin/sign-in``: check the password (off the event loop: argon2 takes a while on
    purpose), start a fresh session and go on to ``next``; else the form again with the error."""
    form = await checked_form(request)
    email, password = _text(form, "email").strip(), _text(form, "password")
    target = safe_next(form.get("next"))
    errors = _missing(email, password)
    if errors:
        return _form(request, status=400, errors=errors, email=email, next=target)
    check = functools.partial(users.authenticate, store(request), email, password)
    try:
        user: User = await anyio.to_thread.run_sync(check)
    except SignInRefused as exc:
        return _form(request, status=400, errors={"email": str(exc)}, email=email, next=target)
    except StoreError as exc:
        log.error("sign-in failed: the consultation record is unavailable: %s", exc)
        raise HTTPException(503, "The consultation record is not available.") from None
    sign_in(request, user.email, cast(Role, user.role))
    log.info("console sign-in: %s (%s)", user.email, user.role)
    return RedirectResponse(target or HOME, status_code=303)


async def sign_out_submit(request: Request) -> Response:
    """POST ``/admin/sign-out`` (with the form's CSRF token: another site cannot sign people out)."""
    await checked_form(request)
    user = current_user(request)
    sign_out(request)
    if user is not None:
        await anyio.to_thread.run_sync(functools.partial(store(request).audit, user.email, "sign-out"))
    return RedirectResponse("/admin/sign-in?signed-out=1", status_code=303)


async def admin_home(request: Request) -> Response:
    """GET ``/admin/``: the console starts at the consultations."""
    return RedirectResponse(HOME, status_code=303)
