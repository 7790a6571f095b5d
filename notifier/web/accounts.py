"""The console's user management, for admins: ``/admin/users`` lists the users, adds one with a
role and a first password, and removes one. The same rules and audit log as ``notifier users``
(:mod:`notifier.users`); every form carries the session's CSRF token.

An admin cannot remove themselves here (that is how the last admin would lock everyone out);
another admin, or ``notifier users remove`` at a terminal, can.
"""

from __future__ import annotations

import functools
from typing import Any

import anyio.to_thread
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from notifier import users
from notifier.errors import InvalidValueError, StoreError, UsageError
from notifier.web.auth import checked_form, csrf_token, require
from notifier.web.console import FieldError, page, store, user

PATH = "/admin/users"
_FLASH = "users_flash"


async def _page(request: Request, *, status: int = 200, **context: Any) -> Response:
    """The users page in the console's frame (its navigation); ``errors`` maps a field to its problem."""
    try:
        found = await anyio.to_thread.run_sync(store(request).users)
    except StoreError:
        raise HTTPException(503, "The consultation record is not available.") from None
    values: dict[str, Any] = {"errors": {}, "email": "", "role": "viewer", **context}
    field_errors = values.pop("errors")
    return page(
        request,
        "users.html",
        status=status,
        errors=[FieldError(name, message) for name, message in field_errors.items()],
        field_errors=field_errors,
        users=found,
        roles=users.ROLES,
        me=user(request),
        is_locked=users.is_locked,
        csrf=csrf_token(request),
        flash=request.session.pop(_FLASH, None),
        **values,
    )


@require("admin")
async def user_list(request: Request) -> Response:
    """GET ``/admin/users``: every console user, and the form to add one."""
    return await _page(request)


def _field_errors(email: str, role: str, password: str) -> dict[str, str]:
    errors: dict[str, str] = {}
    try:
        users.normalise_email(email)
    except InvalidValueError:
        errors["email"] = "Enter an email address in the correct format, like name@example.org"
    if role not in users.ROLES:
        errors["role"] = "Select a role"
    try:
        users.check_password(password)
    except InvalidValueError as exc:
        errors["password"] = f"Enter a password: {exc}"
    return errors


@require("admin")
async def user_add(request: Request) -> Response:
    """POST ``/admin/users`` (``email``, ``role``, ``password``): add a user; the page again with
    the errors (GOV.UK summary) when a field is wrong or the address has a user already."""
    form = await checked_form(request)
    email, role, password = (str(form.get(name) or "") for name in ("email", "role", "password"))
    email = email.strip()
    errors = _field_errors(email, role, password)
    if not errors:
        add = functools.partial(users.add_user, store(request), email, role, password, actor=user(request).email)
        try:
            added = await anyio.to_thread.run_sync(add)
        except UsageError:
            errors["email"] = f"{email} already has an account: remove it first to change its role"
        else:
            request.session[_FLASH] = f"Added {added.email} as {added.role}."
            return RedirectResponse(PATH, status_code=303)
    return await _page(request, status=400, errors=errors, email=email, role=role)


@require("admin")
async def user_remove(request: Request) -> Response:
    """POST ``/admin/users/remove`` (``email``): remove that user (not yourself); their sessions end."""
    form = await checked_form(request)
    email = str(form.get("email") or "").strip().lower()
    if email == user(request).email:
        return await _page(request, status=400, errors={"users": "You cannot remove your own account"})
    try:
        await anyio.to_thread.run_sync(
            functools.partial(users.remove_user, store(request), email, actor=user(request).email)
        )
    except UsageError:
        return await _page(request, status=400, errors={"users": f"There is no user {email}"})
    request.session[_FLASH] = f"Removed {email}."
    return RedirectResponse(PATH, status_code=303)
