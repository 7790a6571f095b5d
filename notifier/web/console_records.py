"""The record in the console: responses (list, record one, import a CSV), the evidence pack,
and suppressions (list, add, remove).

Each does what its command does: a response recorded by hand goes through
:class:`~notifier.web.desk.ResponseDesk` (as the JSON API's), an import through
:func:`notifier.responses.import_file` with ``responses import``'s rules (a file with a bad row
imports nothing; each new response is thanked once), the pack is
:func:`notifier.evidence.build` and :func:`~notifier.evidence.write`. A suppression is kept in
the record and in the ledger, as an unsubscribe is.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from email_validator import EmailNotValidError, validate_email
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from notifier import acknowledgement
from notifier import evidence as evidence_pack
from notifier import responses as responses_file
from notifier.archive import REASONS
from notifier.errors import ConfigError, Problem, StoreError
from notifier.store import record_config
from notifier.web.auth import checked_form, require
from notifier.web.console import (
    FieldError,
    audit,
    blocking,
    config,
    consultation_or_404,
    page,
    service,
    store,
    user,
)
from notifier.web.state import state

#: The files of the evidence pack, and their media types.
PACK = {
    "deliveries.csv": "text/csv; charset=utf-8",
    "evidence.json": "application/json",
    "overview.html": "text/html; charset=utf-8",
}
RESPONSE_FIELDS = ("email", "name", "organisation", "received", "reference")


def _field_errors(problems: Iterable[Problem], default: str) -> list[FieldError]:
    """Problems named ``field: message`` (as the responses reader names them) as field errors."""
    found = []
    for p in problems:
        name, colon, rest = p.message.partition(": ")
        if not colon or name not in RESPONSE_FIELDS:
            found.append(FieldError(default, str(p)))
        elif rest == "required":
            found.append(FieldError(name, f"Enter the {'e-mail address' if name == 'email' else name}"))
        else:
            found.append(FieldError(name, f"{name.capitalize()}: {rest}"))
    return found


# ---------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------


def _responses(request: Request, consultation_id: str) -> dict[str, Any]:
    item = consultation_or_404(config(request), consultation_id)
    return {"consultation": item, "responses": store(request).responses(consultation_id)}


async def _responses_page(request: Request, *, status: int = 200, **context: Any) -> Response:
    found = await blocking(_responses, request, request.path_params["consultation"])
    context.setdefault("values", {})
    context.setdefault("notice", None)
    return page(request, "console/responses.html", status=status, **found, **context)


@require("viewer")
async def responses(request: Request) -> Response:
    """GET ``/admin/consultations/{id}/responses``: the recorded responses."""
    return await _responses_page(request, notice=request.query_params.get("notice"))


@require("sender")
async def record_response(request: Request) -> Response:
    """POST ``/admin/consultations/{id}/responses``: record one response by hand; a new one is
    thanked once (``response_received``), as ``responses import`` does."""
    form = await checked_form(request)
    consultation_id = request.path_params["consultation"]
    values = {k: str(form.get(k) or "").strip() for k in RESPONSE_FIELDS}
    body = {k: v for k, v in values.items() if v}
    desk = state(request).desk
    try:
        recorded = await blocking(desk.record, consultation_id, body, actor=user(request).email)
    except ConfigError as exc:
        errors = _field_errors(exc.problems, "email")
        return await _responses_page(request, status=422, errors=errors, values=values)
    said = "recorded" if recorded.new else "was already recorded"
    notice = f"The response from {recorded.response.email} {said}."
    return RedirectResponse(f"{request.url.path}?{_notice(notice)}", status_code=303)


def _notice(text: str) -> str:
    return urlencode({"notice": text})


def _import(request: Request, consultation_id: str, path: Path, acknowledge: bool) -> int:
    """``responses import``: nothing recorded when the file has a bad row or the thank-you will
    not render; the new ones thanked once by the workers."""
    cfg = config(request)
    consultation_or_404(cfg, consultation_id)
    if acknowledge:
        acknowledgement.ready(cfg, consultation_id)
    record = store(request)
    record_config(record, cfg)
    new = responses_file.import_file(record, consultation_id, path, cfg.tz)
    record.audit(
        user(request).email,
        "responses import",
        consultation=consultation_id,
        detail=f"{path.name}: {len(new)} new" + ("" if acknowledge or not new else ", not acknowledged"),
    )
    if new and acknowledge:
        service(request).acknowledge(consultation_id, new)
    return len(new)


@require("sender")
async def import_responses(request: Request) -> Response:
    """POST ``/admin/consultations/{id}/responses/import`` (multipart ``file``): import a CSV
    with ``responses import``'s rules; every bad row is listed as ``FILE:LINE: message``."""
    form = await checked_form(request)
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        return await _responses_page(request, status=422, errors=[FieldError("file", "Choose a CSV file to import")])
    name = Path(upload.filename).name or "responses.csv"
    content = await upload.read()
    with tempfile.TemporaryDirectory(prefix="notifier-import-") as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        try:
            count = await blocking(
                _import, request, request.path_params["consultation"], path, form.get("acknowledge") != "no"
            )
        except ConfigError as exc:
            errors = [FieldError("file", str(p).removeprefix(folder + "/")) for p in exc.problems]
            return await _responses_page(request, status=422, errors=errors)
    notice = f"{count} new response(s) recorded from {name}."
    return RedirectResponse(f"{request.url.path.removesuffix('/import')}?{_notice(notice)}", status_code=303)


# ---------------------------------------------------------------------------
# Evidence
# ---------------------------------------------------------------------------


@require("viewer")
async def evidence(request: Request) -> Response:
    """GET ``/admin/consultations/{id}/evidence``: the pack's files to download, and its overview."""
    consultation_id = request.path_params["consultation"]
    try:
        facts = await blocking(evidence_pack.build, store(request), consultation_id)
    except StoreError as exc:
        return page(request, "console/evidence.html", consultation_id=consultation_id, overview=None, why=str(exc))
    overview = evidence_pack.overview(facts)
    return page(request, "console/evidence.html", consultation_id=consultation_id, overview=overview, files=PACK)


def _pack_file(request: Request, consultation_id: str, name: str) -> bytes:
    facts = evidence_pack.build(store(request), consultation_id)
    with tempfile.TemporaryDirectory(prefix="notifier-evidence-") as folder:
        evidence_pack.write(facts, Path(folder), generated=datetime.now(UTC))
        return (Path(folder) / name).read_bytes()


@require("viewer")
async def evidence_file(request: Request) -> Response:
    """GET ``/admin/consultations/{id}/evidence/{name}``: one file of the pack, as ``notifier
    evidence`` writes it, as a download."""
    consultation_id, name = request.path_params["consultation"], request.path_params["name"]
    if name not in PACK:
        raise HTTPException(404, f"The evidence pack has no file {name!r}.")
    try:
        content = await blocking(_pack_file, request, consultation_id, name)
    except StoreError as exc:
        raise HTTPException(404, str(exc)) from None
    await audit(request, "evidence download", consultation=consultation_id, detail=name)
    filename = f"{consultation_id}-{name}"
    headers = {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
    }
    return Response(content, media_type=PACK[name], headers=headers)


# ---------------------------------------------------------------------------
# Suppressions
# ---------------------------------------------------------------------------


async def _suppressions_page(request: Request, *, status: int = 200, **context: Any) -> Response:
    found = await blocking(store(request).suppressions)
    context.setdefault("values", {})
    context.setdefault("notice", None)
    return page(request, "console/suppressions.html", status=status, suppressions=found, reasons=REASONS, **context)


@require("viewer")
async def suppressions(request: Request) -> Response:
    """GET ``/admin/suppressions``: every suppressed address with its source, reason and date."""
    return await _suppressions_page(request, notice=request.query_params.get("notice"))


def _suppress(request: Request, email: str, reason: str) -> None:
    store(request).suppress(email, "manual", detail=reason)
    service(request).ledger.suppress(email, reason)


def _unsuppress(request: Request, email: str) -> bool:
    lifted = store(request).unsuppress(email)
    return service(request).ledger.unsuppress(email) or lifted


def _check(values: dict[str, str], *, address_field: str, reason_field: str) -> list[FieldError]:
    errors = []
    try:
        values[address_field] = validate_email(values[address_field], check_deliverability=False).normalized
    except EmailNotValidError as exc:
        errors.append(FieldError(address_field, f"Enter an e-mail address, like name@example.org ({exc})"))
    if not values[reason_field]:
        errors.append(FieldError(reason_field, "Say why (it goes into the audit log)"))
    return errors


@require("admin")
async def add_suppression(request: Request) -> Response:
    """POST ``/admin/suppressions``: suppress an address, with a reason."""
    form = await checked_form(request)
    values = {k: str(form.get(k) or "").strip() for k in ("email", "reason")}
    errors = _check(values, address_field="email", reason_field="reason")
    if errors:
        return await _suppressions_page(request, status=422, errors=errors, values=values)
    await blocking(_suppress, request, values["email"], values["reason"])
    await audit(request, "suppress", detail=f"{values['email']}: {values['reason']}")
    return RedirectResponse(f"/admin/suppressions?{_notice(values['email'] + ' is suppressed.')}", status_code=303)


@require("admin")
async def remove_suppression(request: Request) -> Response:
    """POST ``/admin/suppressions/remove``: lift a suppression, with a reason."""
    form = await checked_form(request)
    values = {k: str(form.get(k) or "").strip() for k in ("remove_email", "remove_reason")}
    errors = _check(values, address_field="remove_email", reason_field="remove_reason")
    if errors:
        return await _suppressions_page(request, status=422, errors=errors, values=values)
    lifted = await blocking(_unsuppress, request, values["remove_email"])
    if not lifted:
        errors = [FieldError("remove_email", f"{values['remove_email']} is not suppressed")]
        return await _suppressions_page(request, status=422, errors=errors, values=values)
    await audit(request, "unsuppress", detail=f"{values['remove_email']}: {values['remove_reason']}")
    notice = f"{values['remove_email']} is no longer suppressed."
    return RedirectResponse(f"/admin/suppressions?{_notice(notice)}", status_code=303)
