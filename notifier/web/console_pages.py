"""The console's consultations: the list (with ``validate``'s result), one consultation's
timeline and audience, and one event's preview on every channel.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from notifier import agenda, preview, timeline
from notifier.config import Config, Consultation
from notifier.errors import ConfigError, NotifierError, UsageError
from notifier.validation import load_and_check
from notifier.web import console_plan, console_preview
from notifier.web.auth import require
from notifier.web.console import blocking, consultation_or_404, page, service, settings, store
from notifier.web.render import console_csp
from notifier.web.state import state


async def home(request: Request) -> Response:
    """GET ``/admin/``: the consultations."""
    return RedirectResponse("/admin/consultations", status_code=303)


def _overview(request: Request) -> dict[str, Any]:
    """``validate``'s result and each consultation's plan (None where it cannot be made)."""
    cfg, problems = load_and_check(settings(request))
    svc = service(request)
    plans: list[tuple[Consultation, agenda.Agenda | None]] = []
    for item in sorted(cfg.consultations.values(), key=lambda c: c.opens, reverse=True):
        try:
            plans.append((item, console_plan.plan(svc.settings, svc.ledger, store(request), cfg, item)))
        except NotifierError:
            plans.append((item, None))
    errors = [p for p in problems if p.severity == "error"]
    return {"config": cfg, "problems": problems, "error_count": len(errors), "plans": plans}


@require("viewer")
async def consultations(request: Request) -> Response:
    """GET ``/admin/consultations``: each consultation's dates, state and next event, and the
    result of ``validate`` (every problem as ``PATH:LINE: message``)."""
    found = await blocking(_overview, request)
    return page(request, "console/consultations.html", local=agenda.local, **found)


def _consultation(request: Request, consultation_id: str) -> dict[str, Any]:
    cfg = service(request).config()
    item = consultation_or_404(cfg, consultation_id)
    svc = service(request)
    found = console_plan.plan(svc.settings, svc.ledger, store(request), cfg, item, by_list=True)
    occurrences = [o for o in store(request).occurrences(consultation_id) if not o.rehearsal]
    return {"config": cfg, "consultation": item, "plan": found, "occurrences": occurrences}


@require("viewer")
async def consultation(request: Request) -> Response:
    """GET ``/admin/consultations/{id}``: the timeline as ``plan`` prints it, the audience by
    list, the occurrences so far, and links to each event's preview."""
    try:
        found = await blocking(_consultation, request, request.path_params["consultation"])
    except ConfigError as exc:
        return page(request, "console/broken.html", status=409, problems=exc.problems)
    return page(request, "console/consultation.html", local=agenda.local, describe=console_plan.describe, **found)


def event_of(cfg: Config, item: Consultation, name: str) -> timeline.Event:
    """The event ``name`` of ``item`` (configured, or one fired on demand with its template)."""
    if not name or name == timeline.RESPONSE_RECEIVED:
        raise HTTPException(404, f"{item.id} has no event {name!r} to preview or send.")
    return timeline.event(item, name, cfg.tz)


def _previews(request: Request, consultation_id: str, name: str, to: str | None) -> dict[str, Any]:
    cfg = service(request).config()
    item = consultation_or_404(cfg, consultation_id)
    event = event_of(cfg, item, name)
    key = state(request).key
    found = preview.previews(settings(request), cfg, item, event, key, to)
    fired = service(request).ledger.fired(item.id, event.name)
    return {
        "consultation": item,
        "event": event,
        "when": agenda.local(event.at, cfg),
        "previews": found,
        "audience": preview.audience_of(cfg, event),
        "options": [(r.email, f"{r.name} <{r.email}>" if r.name else r.email) for r in preview.audience_of(cfg, event)],
        "fired": fired,
    }


@require("viewer")
async def event_preview(request: Request) -> Response:
    """GET ``/admin/consultations/{id}/events/{event}[?to=EMAIL]``: what the event would send
    on each channel, exactly as ``preview`` renders it; the send button for senders."""
    to = request.query_params.get("to") or None
    try:
        found = await blocking(
            _previews, request, request.path_params["consultation"], request.path_params["event"], to
        )
    except ConfigError as exc:
        return page(request, "console/broken.html", status=409, problems=exc.problems)
    except UsageError as exc:
        raise HTTPException(404, str(exc)) from None
    inline, attributes = console_preview.styles(found["previews"])
    csp = console_csp(styles=inline, style_attributes=attributes)
    return page(request, "console/event.html", headers={"Content-Security-Policy": csp}, to=to, **found)
