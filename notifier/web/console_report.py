"""An occurrence in the console: its progress (live), its deliveries table, and "retry the failed ones".

The counts come from the ledger, as ``send --wait`` shows them (:meth:`Service.progress`),
or from the record once Redis has let them go; ``progress.json`` serves them to the page's
small script, which updates them without a reload (without JavaScript, a link refreshes the
page). The deliveries are the record's rows (:meth:`Store.delivery_page`, keyset-paginated
on indexed columns): a delivery appears there once it is final. Retrying is
:meth:`Service.retry`, as ``notifier retry`` does it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from typing import Any
from urllib.parse import urlencode

from markupsafe import Markup
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from notifier import agenda
from notifier.errors import UnknownOccurrenceError, UsageError
from notifier.ledger import FINAL, STATUSES
from notifier.service import Progress
from notifier.web.auth import checked_form, require
from notifier.web.console import blocking, consultation_or_404, page, service, store, user
from notifier.web.render import PAGE_HEADERS, console_csp

#: The page's script (live counts), allowed by its hash in the page's CSP.
SCRIPT = files("notifier.web").joinpath("templates/console/progress.js").read_text(encoding="utf-8")
PAGE_SIZE = 50


@dataclass(frozen=True, slots=True)
class Counts(Progress):
    """An occurrence's deliveries counted by channel and status, as the progress page shows them."""

    #: Counted from the record's rows (not the ledger's): they count what the table lists.
    from_record: bool = False

    @property
    def by_channel(self) -> dict[str, dict[str, int]]:
        """Deliveries by channel, then by status."""
        return self.counts

    @property
    def percent(self) -> int:
        """How many are final, in whole percent (100 only when all are)."""
        if not self.total:
            return 100 if self.fanned_out else 0
        return 100 if self.finished else min(99, self.done * 100 // self.total)

    def as_json(self) -> dict[str, Any]:
        """What ``progress.json`` answers."""
        return {
            "total": self.total,
            "done": self.done,
            "percent": self.percent,
            "finished": self.finished,
            "counts": self.by_channel,
        }


def occurrence_id(request: Request) -> str:
    """``<consultation>:<event>:<number>`` from the path."""
    p = request.path_params
    return f"{p['consultation']}:{p['event']}:{p['number']}"


def counts(request: Request, occurrence: str) -> Counts:
    """The occurrence's counts from the ledger; from the record when Redis no longer has them
    (a restored occurrence has its state back in Redis, not its deliveries); 404 when neither
    knows it."""
    try:
        found = service(request).progress(occurrence)
    except UnknownOccurrenceError:
        found = None
    if found is not None and found.counts:
        return Counts(found.total, found.done, found.counts, found.fanned_out)
    by_channel = store(request).occurrence_counts(occurrence)
    if not by_channel and found is not None:  # fired, nothing fanned out yet
        return Counts(found.total, found.done, found.counts, found.fanned_out)
    if not by_channel:
        raise HTTPException(404, f"There is no occurrence {occurrence!r}.")
    total = sum(sum(v.values()) for v in by_channel.values())
    done = sum(n for v in by_channel.values() for s, n in v.items() if s in FINAL)
    return Counts(total, done, by_channel, fanned_out=True, from_record=True)


@dataclass(frozen=True, slots=True)
class Filters:
    """The deliveries table's filters and place, from the query string."""

    status: str | None
    channel: str | None
    list_id: str | None
    search: str | None
    after: tuple[str, str] | None

    @classmethod
    def of(cls, request: Request) -> Filters:
        """From ``?status=&channel=&list=&q=&after=CHANNEL|RECIPIENT``."""
        q = request.query_params
        after = q.get("after") or ""
        channel, bar, recipient = after.partition("|")
        return cls(
            status=q.get("status") or None,
            channel=q.get("channel") or None,
            list_id=q.get("list") or None,
            search=(q.get("q") or "").strip() or None,
            after=(channel, recipient) if bar else None,
        )

    def query(self, **changes: str | None) -> str:
        """The query string of these filters, with ``changes`` (None drops a key)."""
        values = {"status": self.status, "channel": self.channel, "list": self.list_id, "q": self.search}
        values.update(changes)
        return urlencode({k: v for k, v in values.items() if v})


def _matching(request: Request, occurrence: str, filters: Filters, found: Counts, shown: int) -> int:
    """How many deliveries the filters match: all of them when a first page is not full; from
    the counts when they are the record's and only status and channel filter; else counted."""
    if filters.after is None and shown < PAGE_SIZE:
        return shown
    if found.from_record and not filters.list_id and not filters.search:
        return sum(
            n
            for channel, by_status in found.by_channel.items()
            if filters.channel in (None, channel)
            for status, n in by_status.items()
            if filters.status in (None, status)
        )
    where = {"status": filters.status, "channel": filters.channel, "list_id": filters.list_id}
    return store(request).delivery_total(occurrence, search=filters.search, **where)


def _occurrence_page(request: Request, occurrence: str, filters: Filters) -> dict[str, Any]:
    svc = service(request)
    cfg = svc.config()
    consultation_id, event, _ = occurrence.rsplit(":", 2)
    item = consultation_or_404(cfg, consultation_id)
    found = counts(request, occurrence)
    where = {
        "status": filters.status,
        "channel": filters.channel,
        "list_id": filters.list_id,
        "search": filters.search,
    }
    rows = store(request).delivery_page(occurrence, after=filters.after, limit=PAGE_SIZE, **where)
    return {
        "config": cfg,
        "consultation": item,
        "event": event,
        "occurrence": occurrence,
        "counts": found,
        "statuses": STATUSES,
        "rows": rows,
        "matching": _matching(request, occurrence, filters, found, len(rows)),
        "filters": filters,
        "next_after": f"{rows[-1].channel}|{rows[-1].recipient}" if len(rows) == PAGE_SIZE else None,
        "status_options": [("", "Any status"), *((s, s) for s in STATUSES)],
        "channel_options": [("", "Any channel"), *((c, c) for c in sorted(found.by_channel))],
        "list_options": [("", "Any list"), *((k, str(cfg.lists[k].name or k)) for k in sorted(cfg.lists))],
        "local": agenda.local,
    }


@require("viewer")
async def occurrence(request: Request) -> Response:
    """GET ``/admin/consultations/{id}/occurrences/{event}/{number}``: progress and deliveries."""
    found = await blocking(_occurrence_page, request, occurrence_id(request), Filters.of(request))
    retried = request.query_params.get("retried")
    csp = console_csp(script=SCRIPT)
    return page(
        request,
        "console/occurrence.html",
        headers={"Content-Security-Policy": csp},
        script=Markup(SCRIPT),  # noqa: S704 - our own file, hashed into the CSP: it must reach the page byte for byte
        retried=retried,
        **found,
    )


@require("viewer")
async def progress(request: Request) -> Response:
    """GET ``…/progress.json``: the occurrence's counts, for the page's script."""
    found = await blocking(counts, request, occurrence_id(request))
    return JSONResponse(found.as_json(), headers={"Cache-Control": "no-store", **_json_headers()})


def _json_headers() -> dict[str, str]:
    return {k: v for k, v in PAGE_HEADERS.items() if k in ("X-Content-Type-Options", "Referrer-Policy")}


@require("sender")
async def retry(request: Request) -> Response:
    """POST ``…/retry``: put the failed deliveries of the event's latest occurrence back to
    pending and deliver only those (``notifier retry``)."""
    await checked_form(request)
    p = request.path_params
    svc = service(request)
    try:
        retried, count = await blocking(svc.retry, p["consultation"], p["event"], actor=user(request).email)
    except UsageError as exc:
        raise HTTPException(404, str(exc)) from None
    _, event, number = retried.rsplit(":", 2)  # Service.retry wrote the audit entry, naming the user
    target = f"/admin/consultations/{p['consultation']}/occurrences/{event}/{number}?retried={count}"
    return RedirectResponse(target, status_code=303)
