"""What every console page shares: who is signed in, the core's objects, and the page itself.

The console (``/admin/``) is the policy team's way to do what the commands do, without a
terminal. Its handlers live in modules by concept (:mod:`notifier.web.console_pages` for the
consultations and their timelines and previews, :mod:`~notifier.web.console_send`,
:mod:`~notifier.web.console_report`, :mod:`~notifier.web.console_records`); each calls the
same core functions as the matching command, off the event loop (:func:`blocking`), and
renders a template that extends ``console_base.html`` with :func:`page`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_thread
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from notifier.config import Config, Settings
from notifier.errors import UsageError
from notifier.service import Service
from notifier.store import Store
from notifier.web.auth import SignedIn, csrf_token, current_user
from notifier.web.render import render
from notifier.web.state import state

T = TypeVar("T")

#: The console's top-level sections, for its navigation: (path, label).
SECTIONS: tuple[tuple[str, str], ...] = (
    ("/admin/consultations", "Consultations"),
    ("/admin/suppressions", "Suppressions"),
)


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with a form field: shown in the page's error summary, linking to the field
    (``#<field>``), and beside the field itself (the GOV.UK error summary pattern)."""

    field: str
    message: str


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on a worker thread: the core is synchronous (Redis, SQL, rendering)."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


def settings(request: Request) -> Settings:
    """The settings the web service was started with."""
    return state(request).desk.settings


def service(request: Request) -> Service:
    """The app's :class:`Service` (made on first use, closed with the app): fire, retry, progress."""
    return state(request).desk.service()


def store(request: Request) -> Store:
    """The consultation record the app opened."""
    found = state(request).store
    if found is None:
        raise HTTPException(503, "The consultation record is not open.")
    return found


def user(request: Request) -> SignedIn:
    """The signed-in user (the handler is guarded by :func:`notifier.web.auth.require`)."""
    found = current_user(request)
    if found is None:
        raise HTTPException(403, "Sign in first.")
    return found


def config(request: Request) -> Config:
    """The current, validated config (what a send would use); ConfigError when it has errors."""
    return service(request).config()


def consultation_or_404(cfg: Config, consultation_id: str) -> Any:
    """The configured consultation, or a 404 page."""
    try:
        return cfg.consultation(consultation_id)
    except UsageError:
        raise HTTPException(404, f"There is no consultation {consultation_id!r}.") from None


async def audit(request: Request, action: str, *, consultation: str | None = None, detail: str | None = None) -> None:
    """Record in the audit log that the signed-in user did ``action``."""
    await blocking(store(request).audit, user(request).email, action, consultation=consultation, detail=detail)


def page(
    request: Request,
    name: str,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    errors: list[FieldError] | None = None,
    **context: Any,
) -> Response:
    """The console page ``name``: the template gets the user, the session's CSRF token, the
    navigation, the form ``errors`` (their summary leads the page, and the title says so)."""
    return render(
        request,
        name,
        status=status,
        headers=headers,
        user=current_user(request),
        csrf_token=csrf_token(request),
        sections=SECTIONS,
        path=request.url.path,
        errors=errors or [],
        **context,
    )
