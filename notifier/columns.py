"""The columns of a delivery as the report and the evidence pack show it, in order.

A leaf (it imports nothing of ours) so that :mod:`notifier.report`, which reads Redis, and
:mod:`notifier.store`, which reads the database, name the very same columns instead of each
keeping its own copy.
"""

from __future__ import annotations

#: One delivery in ``report`` (CSV header, JSON keys): which occurrence, to whom, how it went.
FIELDS: tuple[str, ...] = (
    "occurrence",
    "event",
    "channel",
    "recipient",
    "name",
    "lists",
    "status",
    "attempts",
    "last_error",
    "provider_id",
    "url",
    "created",
    "updated",
    "sent_at",
)
#: One delivery in the evidence pack (``Store.delivery_rows``): the report's, then the Message-ID.
REPORT_COLUMNS: tuple[str, ...] = (*FIELDS, "message_id")
