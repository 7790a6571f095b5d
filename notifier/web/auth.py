"""Who is signed in to the console, what their role lets them do, and the CSRF check of every form.

The session is a signed cookie (Starlette's ``SessionMiddleware``, itsdangerous underneath):
``HttpOnly``, ``SameSite=Lax``, ``Secure`` when ``NOTIFIER_PUBLIC_URL`` is https. It holds the
user's e-mail address and role, and the CSRF token of the session; nothing else.

Roles are ordered: a ``viewer`` sees, a ``sender`` also sends and records responses, an ``admin``
also manages suppressions and users. :func:`require` guards a handler; :func:`checked_form` reads
a POSTed form and refuses it (403) without the session's CSRF token. :func:`require` also reads
the user from the record at every request, so removing a user ends their sessions at once and a
new role applies at their next click.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

import anyio.to_thread
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from notifier.errors import StoreError
from notifier.web.state import state

Role = Literal["viewer", "sender", "admin"]
#: Each role can do what the ones before it can.
ROLES: tuple[Role, ...] = ("viewer", "sender", "admin")
SESSION_COOKIE = "notifier_session"
SIGN_IN_PATH = "/admin/sign-in"
#: A session lasts a working day at most; signing in again is cheap, a stolen cookie is not.
SESSION_MAX_AGE_S = 8 * 3600
_USER = "user"
_CSRF = "csrf"

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class SignedIn:
    """The console user of this request."""

    email: str
    role: Role

    def can(self, role: Role) -> bool:
        """Whether this user's role includes ``role``."""
        return ROLES.index(self.role) >= ROLES.index(role)


def session_middleware(secret_key: bytes, *, public_url: str | None) -> Middleware:
    """The cookie session, signed with a key derived from ``NOTIFIER_SECRET_KEY`` (never the key itself)."""
    key = hmac.new(secret_key, b"notifier console session", hashlib.sha256).hexdigest()
    return Middleware(
        SessionMiddleware,
        secret_key=key,
        session_cookie=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE_S,
        same_site="lax",
        https_only=bool(public_url and public_url.startswith("https://")),
    )


def current_user(request: Request) -> SignedIn | None:
    """The signed-in user, or None."""
    found = request.session.get(_USER) if "session" in request.scope else None
    if not isinstance(found, dict) or found.get("role") not in ROLES:
        return None
    return SignedIn(email=str(found["email"]), role=found["role"])


def sign_in(request: Request, email: str, role: Role) -> None:
    """Start a new session for ``email`` (a fresh CSRF token too: no session fixation)."""
    request.session.clear()
    request.session[_USER] = {"email": email, "role": role}
    request.session[_CSRF] = secrets.token_urlsafe(32)


def sign_out(request: Request) -> None:
    """End the session."""
    request.session.clear()


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first use; every form carries it as ``csrf_token``."""
    token = request.session.get(_CSRF)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        request.session[_CSRF] = token
    return token


def _same(sent: str, expected: str) -> bool:
    """Constant-time comparison of text (bytes: ``compare_digest`` refuses non-ASCII text)."""
    return hmac.compare_digest(sent.encode(), expected.encode())


def csrf_header_matches(request: Request) -> bool:
    """Whether the request's ``X-CSRF-Token`` header is the session's CSRF token (a page's
    script calling the JSON API sends it, as a form sends ``csrf_token``)."""
    sent = request.headers.get("x-csrf-token", "")
    expected = request.session.get(_CSRF)
    return isinstance(expected, str) and bool(sent) and _same(sent, expected)


async def checked_form(request: Request) -> FormData:
    """The POSTed form, or 403 when its ``csrf_token`` is missing or not this session's."""
    form = await request.form()
    sent = form.get("csrf_token")
    expected = request.session.get(_CSRF)
    if not isinstance(sent, str) or not isinstance(expected, str) or not _same(sent, expected):
        raise HTTPException(403, "The form was out of date or did not come from this site. Go back and try again.")
    return form


async def signed_in(request: Request) -> SignedIn | None:
    """The signed-in user as the record has them now: a removed user's session ends (None), a
    changed role applies at their next request, not when the cookie runs out."""
    user = current_user(request)
    store = state(request).store
    if user is None or store is None:
        return user
    try:
        found = await anyio.to_thread.run_sync(store.user, user.email)
    except StoreError:
        raise HTTPException(503, "The consultation record is not available: try again in a minute.") from None
    if found is None or found.role not in ROLES:
        sign_out(request)
        return None
    if found.role != user.role:
        user = SignedIn(email=user.email, role=found.role)
        request.session[_USER] = {"email": user.email, "role": user.role}
    return user


def require(role: Role) -> Callable[[Handler], Handler]:
    """Guard a console handler: not signed in redirects to sign-in; a role short of ``role`` is 403."""

    def guard(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: Request) -> Response:
            user = await signed_in(request)
            if user is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"{SIGN_IN_PATH}?next={quote(target, safe='')}", status_code=303)
            if not user.can(role):
                raise HTTPException(403, f"Your role ({user.role}) cannot do this: it needs {role}.")
            request.state.user = user
            return await handler(request)

        return guarded

    return guard
