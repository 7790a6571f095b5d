"""Sending from the console: the confirmation pages, then :meth:`notifier.service.Service.fire`.

``POST /admin/consultations/{id}/send`` with ``event``: without ``confirm=yes`` it only shows
what would go to whom ("36 e-mails and 4 posts"); with it, it fires, through the same path as
``notifier send`` and the scheduler. A scheduled event before its time needs a second
confirmation (``early=yes``), which says it will then not go at its time (``send --early``).
An event that already fired offers only "send again", with a warning (``send --again``).
Senders only: a viewer's POST is refused (403) before the form is read, and nothing fires.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from notifier import agenda, archive
from notifier.errors import ConfigError, TooEarlyError
from notifier.web import console_plan
from notifier.web.auth import checked_form, require
from notifier.web.console import FieldError, blocking, consultation_or_404, page, service, store, user
from notifier.web.console_pages import event_of


@dataclass(frozen=True, slots=True)
class Asked:
    """What the sender has confirmed so far."""

    event: str
    confirm: bool
    early: bool
    again: bool

    @classmethod
    def of(cls, form: FormData) -> Asked:
        """From the POSTed form."""
        return cls(
            event=str(form.get("event") or "").strip(),
            confirm=form.get("confirm") == "yes",
            early=form.get("early") == "yes",
            again=form.get("again") == "yes",
        )


def _situation(request: Request, consultation_id: str, asked: Asked) -> dict[str, Any]:
    """Everything the confirmation needs: the event, whether it fired, is early, and its reach.
    ConfigError when the event cannot be sent (no template, say)."""
    svc = service(request)
    cfg = svc.config()
    item = consultation_or_404(cfg, consultation_id)
    event = event_of(cfg, item, asked.event)
    archive.restore(svc.ledger, svc.store, item.id, [event.name])
    fired = svc.ledger.fired(item.id, event.name)
    early = event.at is not None and datetime.now(UTC) < event.at
    warnings = svc.preflight(cfg, event, again=True, early=True)
    reach = console_plan.reach(svc.ledger, store(request), cfg, item, event)
    return {
        "consultation": item,
        "event": event,
        "when": agenda.local(event.at, cfg),
        "fired": fired,
        "fired_at": agenda.local(svc.ledger.occurrence(fired).fired_at, cfg) if fired else None,
        "early": early,
        "warnings": warnings,
        "reach": reach,
        "phrase": describe_reach(reach.emails if reach.by_email else 0, len(reach.accounts)),
    }


def _fire(request: Request, consultation_id: str, asked: Asked, again: bool) -> str | None:
    svc = service(request)
    return svc.fire(consultation_id, asked.event, again=again, early=asked.early, actor=user(request).email)


@require("sender")
async def send(request: Request) -> Response:
    """POST ``/admin/consultations/{id}/send``: confirm, confirm again if early, then fire and
    show the occurrence's progress."""
    consultation_id = request.path_params["consultation"]
    asked = Asked.of(await checked_form(request))
    if not asked.event:
        errors = [FieldError("event", "Enter the name of the event to send, such as outcome")]
        return page(
            request, "console/send.html", status=422, errors=errors, stage="choose", consultation_id=consultation_id
        )
    try:
        found = await blocking(_situation, request, consultation_id, asked)
    except ConfigError as exc:
        return page(request, "console/broken.html", status=409, problems=exc.problems)
    again = found["fired"] is not None
    if not asked.confirm or (again and not asked.again):
        return page(request, "console/send.html", stage="confirm", again=again, **found)
    if found["early"] and not asked.early:
        return page(request, "console/send.html", stage="early", again=again, **found)
    try:
        occurrence_id = await blocking(_fire, request, consultation_id, asked, again)
    except TooEarlyError:
        return page(request, "console/send.html", stage="early", again=again, **found)
    if occurrence_id is None:  # someone else fired it between the confirmation and now
        return page(request, "console/send.html", status=409, stage="confirm", again=True, **found)
    _, event, number = occurrence_id.rsplit(":", 2)
    return RedirectResponse(f"/admin/consultations/{consultation_id}/occurrences/{event}/{number}", status_code=303)


def describe_reach(emails: int, accounts: int) -> str:
    """``36 e-mails and 4 posts``."""
    parts = [f"{emails} e-mail{'s' * (emails != 1)}"] * bool(emails)
    parts += [f"{accounts} post{'s' * (accounts != 1)}"] * bool(accounts)
    return " and ".join(parts) or "nothing"
