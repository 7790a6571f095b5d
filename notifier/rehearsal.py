"""``notifier rehearse``: a consultation's whole timeline, fired now, in order, into an outbox.

A rehearsal runs the real fan-out and delivery code (:mod:`notifier.delivery`) in this
process, but on a :class:`~notifier.runtime.Runtime` of its own: a separate ledger
namespace, so it never marks a real event fired, and outbox-only channels under
``$NOTIFIER_DATA_DIR/rehearsals/<consultation>-<time>/``, so nothing goes live. Real
suppressions (unsubscribes, bounces) are copied in, so it shows what people would get.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path

from notifier import delivery, timeline
from notifier.broker import NAMESPACE, connect
from notifier.channels.registry import per_recipient
from notifier.config import Settings
from notifier.ledger import FANNED_OUT, SUCCEEDED, Ledger, Record
from notifier.runtime import Runtime
from notifier.source import ConfigSource

#: Rehearsal ledgers are kept this long in Redis, then expire.
KEEP_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Received:
    """One thing a stakeholder or account would have received."""

    event: str
    at: datetime
    channel: str
    recipient: str
    name: str | None
    lists: tuple[str, ...]
    status: str
    what: str  # the e-mail's subject or the post's text; the reason when not sent


@dataclass(frozen=True, slots=True)
class Rehearsal:
    """The outcome of a rehearsal: where its outbox is and what each delivery carried."""

    consultation_id: str
    title: str
    folder: Path
    events: list[timeline.Event]
    received: list[Received]


def rehearse(settings: Settings, consultation_id: str, *, now: datetime | None = None) -> Rehearsal:
    """Fire every event of the consultation, in time order, into a fresh outbox."""
    source = ConfigSource(settings)  # loaded and checked once, for the rehearsal's runtime too
    config = source.validated()
    consultation = config.consultation(consultation_id)
    started = now or datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%S")
    folder = settings.data_dir / "rehearsals" / f"{consultation_id}-{stamp}"
    client = connect(settings)
    namespace = f"{NAMESPACE}-rehearsal:{consultation_id}:{stamp}"
    rt = Runtime(settings, client=client, namespace=namespace, data_dir=folder, source=source)
    try:
        for email, reason in Ledger(client).suppressed().items():
            rt.ledger.suppress(email, reason)
        events = timeline.events(consultation, config.tz)
        received: list[Received] = []
        for event in events:
            at = event.at or started
            occurrence_id = rt.ledger.claim_occurrence(consultation_id, event.name, at=at, rehearsal=True)
            assert occurrence_id is not None  # a fresh namespace has fired nothing
            for batch in delivery.fan_out(rt, occurrence_id):
                _deliver(rt, batch)
            rt.ledger.set_state(occurrence_id, FANNED_OUT)
            received += _what(rt, folder, event, at, rt.ledger.records(occurrence_id))
        for key in client.scan_iter(f"{namespace}:*"):
            client.expire(key, KEEP_SECONDS)
        return Rehearsal(consultation_id, consultation.title, folder, events, received)
    finally:
        rt.close()


def _deliver(rt: Runtime, batch: delivery.Batch) -> None:
    """Deliver a batch now, waiting out retries (the outbox only fails when the disk does)."""
    while (retry := delivery.deliver(rt, batch)) is not None:
        time.sleep(min(retry, 1.0))


def _what(rt: Runtime, folder: Path, event: timeline.Event, at: datetime, records: list[Record]) -> list[Received]:
    subjects = _subjects(folder / "outbox" / "email")
    found = []
    for r in sorted(records, key=lambda r: (not per_recipient(r.channel), r.channel, (r.name or r.recipient).lower())):
        if r.status not in SUCCEEDED:
            what = r.error or r.status
        elif per_recipient(r.channel):
            what = subjects.get(r.provider_id or "", "")
        else:
            what = _post_text(folder, r)
        found.append(Received(event.name, at, r.channel, r.recipient, r.name, tuple(r.lists), r.status, what))
    return found


def _subjects(maildir: Path) -> dict[str, str]:
    """Message-ID -> Subject of every e-mail in the outbox."""
    parser = BytesHeaderParser(policy=default_policy)
    subjects = {}
    for path in (maildir / "new").glob("*") if (maildir / "new").exists() else ():
        with path.open("rb") as f:
            headers = parser.parse(f)
        subjects[str(headers["Message-ID"])] = str(headers["Subject"])
    return subjects


def _post_text(folder: Path, record: Record) -> str:
    """The text of an account's post, from the line its receipt names."""
    _, filename, line = (record.provider_id or "outbox::0").split(":")
    path = folder / "outbox" / "social" / filename
    lines = path.read_text(encoding="utf-8").split("\n") if path.exists() else []
    number = int(line or 0)
    if 0 < number <= len(lines):
        return str(json.loads(lines[number - 1])["text"])
    return ""
