"""The evidence of who was told what, when: the ledger of one consultation as plain rows.

``notifier report`` prints it as tables, CSV or JSON, and the web service's admin API
serves the same JSON, so both always agree. Times are ISO 8601 with their offset, in the
configured time zone (``2026-07-09T09:00:03+01:00``), to the second.

Redis has the occurrences it knows, up to the moment; given the consultation record
(``store``), an occurrence Redis has lost (a ``FLUSHALL``, a new empty Redis) is read from
the database instead, with the same columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

from notifier.columns import FIELDS as FIELDS  # re-exported: the report's columns (report.FIELDS)
from notifier.ledger import Ledger, Record

if TYPE_CHECKING:  # the database's modules are imported by those who open one
    from notifier.store import OccurrenceRecord, Settled, Store


@dataclass(frozen=True, slots=True)
class Report:
    """Counts per occurrence and channel, and one row per delivery."""

    consultation: str
    summary: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """Deliveries that failed permanently."""
        return sum(row["status"] == "failed" for row in self.deliveries)

    def as_json(self) -> dict[str, Any]:
        """The JSON document of ``report --format json`` and ``GET /api/consultations/<id>/report``."""
        return {"consultation": self.consultation, "summary": self.summary, "deliveries": self.deliveries}


def local_iso(moment: datetime | str | None, tz: tzinfo) -> str:
    """``moment`` (a datetime or the ledger's ISO text) as ISO 8601 in ``tz`` with its offset,
    to the second; ``""`` for none."""
    if not moment:
        return ""
    found = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return found.astimezone(tz).isoformat(timespec="seconds")


def build(
    ledger: Ledger, consultation: str, *, event: str | None = None, tz: tzinfo = UTC, store: Store | None = None
) -> Report:
    """The report of ``consultation`` (only ``event``'s occurrences when given), its times in
    ``tz``; with ``store``, also the occurrences only the database still holds."""
    report = Report(consultation)
    occurrences = [o for o in ledger.occurrences(consultation) if event is None or o.event == event]
    known = {o.id for o in occurrences}
    lost = (
        []
        if store is None
        else [
            o
            for o in store.occurrences(consultation)
            if o.id not in known and not o.rehearsal and (event is None or o.event == event)
        ]
    )
    if lost and store is not None:
        _from_store(report, store, lost, tz)
    for occurrence in occurrences:
        for channel, counts in sorted(ledger.counts(occurrence.id).items()):
            report.summary.append(
                {
                    "occurrence": occurrence.id,
                    "event": occurrence.event,
                    "channel": channel,
                    "fired_at": local_iso(occurrence.fired_at, tz),
                    "late": occurrence.late,
                    **counts,
                }
            )
        for record in sorted(ledger.records(occurrence.id), key=lambda r: (r.channel, r.recipient)):
            report.deliveries.append(_row(occurrence.id, occurrence.event, record, tz))
    return report


def _from_store(report: Report, store: Store, lost: list[OccurrenceRecord], tz: tzinfo) -> None:
    """Add the occurrences ``lost`` by Redis from the database: their counts and rows."""
    ids = {o.id: o for o in lost}
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for count in store.counts(report.consultation):
        if count.occurrence in ids:
            counts.setdefault((count.occurrence, count.channel), {})[count.status] = count.count
    for (occurrence_id, channel), by_status in counts.items():
        occurrence = ids[occurrence_id]
        report.summary.append(
            {
                "occurrence": occurrence_id,
                "event": occurrence.event,
                "channel": channel,
                "fired_at": local_iso(occurrence.fired_at, tz),
                "late": occurrence.late,
                **by_status,
            }
        )
    for event, settled in store.deliveries(report.consultation):
        if settled.occurrence in ids:
            report.deliveries.append(_row(settled.occurrence, event, settled, tz))


def _row(occurrence: str, event: str, delivery: Record | Settled, tz: tzinfo) -> dict[str, Any]:
    """One delivery row of the report, from Redis' record or the database's settled row alike,
    so both sources give the same columns in the same form (the ledger's ``error`` is the
    database's ``last_error``)."""
    error = delivery.error if isinstance(delivery, Record) else delivery.last_error
    return {
        "occurrence": occurrence,
        "event": event,
        "channel": delivery.channel,
        "recipient": delivery.recipient,
        "name": delivery.name or "",
        "lists": " ".join(delivery.lists),
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_error": error or "",
        "provider_id": delivery.provider_id or "",
        "url": delivery.url or "",
        "created": local_iso(delivery.created, tz),
        "updated": local_iso(delivery.updated, tz),
        "sent_at": local_iso(delivery.sent_at, tz),
    }
