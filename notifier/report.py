"""The evidence of who was told what, when: the ledger of one consultation as plain rows.

``notifier report`` prints it as tables, CSV or JSON, and the web service's admin API
serves the same JSON, so both always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from notifier.ledger import Ledger

#: The columns of a delivery row, in the order CSV writes them.
FIELDS = ("occurrence", "event", "channel", "recipient", "name", "lists", "status", "attempts",
          "last_error", "provider_id", "url", "created", "updated", "sent_at")


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


def build(ledger: Ledger, consultation: str, *, event: str | None = None) -> Report:
    """The report of ``consultation`` (only ``event``'s occurrences when given)."""
    report = Report(consultation)
    for occurrence in ledger.occurrences(consultation):
        if event is not None and occurrence.event != event:
            continue
        for channel, counts in sorted(ledger.counts(occurrence.id).items()):
            report.summary.append({
                "occurrence": occurrence.id, "event": occurrence.event, "channel": channel,
                "fired_at": occurrence.fired_at.isoformat(), "late": occurrence.late, **counts,
            })
        for record in sorted(ledger.records(occurrence.id), key=lambda r: (r.channel, r.recipient)):
            report.deliveries.append({
                "occurrence": occurrence.id, "event": occurrence.event, "channel": record.channel,
                "recipient": record.recipient, "name": record.name or "", "lists": " ".join(record.lists),
                "status": record.status, "attempts": record.attempts, "last_error": record.error or "",
                "provider_id": record.provider_id or "", "url": record.url or "", "created": record.created,
                "updated": record.updated or "", "sent_at": record.sent_at or "",
            })
    return report
