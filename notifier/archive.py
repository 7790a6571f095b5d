"""Keeping the consultation record (:mod:`notifier.store`) up to date from the Redis ledger.

Redis holds the queues, the claims and what is in flight; the database holds what has
settled. They meet here:

* **Outcomes, in batches.** Each time the ledger records a delivery's final status (the
  mark script, or a suppressed delivery at fan-out) it also appends the delivery's field to
  ``arc:<occurrence>`` and names the occurrence in ``arcq``, in the same Lua call: no extra
  round trip on the sending path. An :class:`Archiver` (a thread in every worker process, and
  ``send --wait`` before its summary) takes up to :data:`BATCH` fields at a time under a
  per-occurrence lock, reads their records, upserts them with :meth:`Store.archive` (one
  transaction), and only then trims them from the list. A crash between the commit and the
  trim archives them again, which the upsert makes harmless.
* **Fired is fired.** Before an event fires, :func:`restore` puts back into Redis an
  occurrence the database records and Redis has lost (``FLUSHALL``, a new empty Redis), with
  its settled deliveries, so the event is not sent again, ``--again`` numbers after it, and
  ``notifier retry`` finds its failed deliveries.
* **Suppressions.** Unsubscribes, bounces and ``subscribed: false`` are written to the
  database with their source; :func:`seed_suppressions` copies the database's back into an
  empty Redis before a fan-out, so the delivery path (which reads Redis) still sees them.
* **Who fired what**: :func:`actor` names the person at the command line for the audit log.
"""

from __future__ import annotations

import getpass
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

import dramatiq

from notifier.broker import text
from notifier.channels import registry
from notifier.channels.base import Delivery
from notifier.channels.email import message_id as email_message_id
from notifier.config import Config
from notifier.errors import StoreError
from notifier.extension import CLOSES_FIELD, PREVIOUS_FIELD
from notifier.ledger import Ledger, Occurrence, Record, Status, now_iso
from notifier.store import OccurrenceRecord, Settled, Store, record_config

log = logging.getLogger(__name__)

#: Outcomes archived per transaction: the store's own executemany batch.
BATCH = 2_000
#: How long an archiver's hold on an occurrence's queue lasts without being renewed.
LOCK_MS = 120_000
#: How often a worker's archiver looks for outcomes to archive.
EVERY_S = 1.0
#: How a suppression's source reads in the ledger (the reason the report shows).
REASONS = {"unsubscribe": "unsubscribed", "bounce": "bounced", "manual": "suppressed by hand"}

# KEYS: arc, dl, out, lock.  ARGV: owner, n, lock_ms.  Hold the occurrence's queue (false if
# another archiver does) and read up to n fields, each with its record and outcome.
_TAKE = """
local holder = redis.call('GET', KEYS[4])
if holder and holder ~= ARGV[1] then return false end
redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[3])
local out = {}
for _, f in ipairs(redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)) do
  out[#out + 1] = f
  out[#out + 1] = redis.call('HGET', KEYS[2], f) or ''
  out[#out + 1] = redis.call('HGET', KEYS[3], f) or ''
end
return out
"""

# KEYS: arc, arcq, lock.  ARGV: owner, n, occurrence id.  Drop the n fields just archived, if
# the queue is still held (-1 otherwise: another archiver may have read them and will trim);
# forget an emptied queue and let it go.  Returns how many fields are left.
_DONE = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return -1 end
redis.call('LTRIM', KEYS[1], tonumber(ARGV[2]), -1)
local left = redis.call('LLEN', KEYS[1])
if left == 0 then
  redis.call('SREM', KEYS[2], ARGV[3])
  redis.call('DEL', KEYS[3])
end
return left
"""

# KEYS: lock.  ARGV: owner.
_LET_GO = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


def actor() -> str:
    """Who is at the command line, for the audit log: ``cli:<login name>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name (a container with an unnamed uid)
        return "cli"


#: ``json.loads`` looks for the encoding of bytes and checks its arguments on every call.
_decode = json.JSONDecoder().decode


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class Archiver:
    """Moves settled outcomes from the ledger to the store in batches (see the module doc).

    ``domain`` gives the sender's domain, from which an e-mail's Message-ID is derived (it is
    not kept in Redis). Several archivers (one per process) may run: one at a time drains a
    given occurrence.
    """

    def __init__(self, ledger: Ledger, store: Store, domain: Callable[[], str], *, owner: str) -> None:
        self.ledger = ledger
        self.store = store
        self.domain = domain
        self.owner = owner
        self._take = ledger.client.register_script(_TAKE)
        self._done = ledger.client.register_script(_DONE)
        self._let_go = ledger.client.register_script(_LET_GO)
        self._states: dict[str, str] = {}  # occurrence id -> the state last recorded

    def _keys(self, occurrence_id: str) -> tuple[str, ...]:
        ns = self.ledger.ns
        return (
            f"{ns}:arc:{occurrence_id}",
            f"{ns}:dl:{occurrence_id}",
            f"{ns}:out:{occurrence_id}",
            f"{ns}:arclock:{occurrence_id}",
            f"{ns}:arcq",
        )

    def waiting(self) -> list[str]:
        """The occurrences with outcomes waiting to be archived."""
        return sorted(text(i) for i in self.ledger.client.smembers(f"{self.ledger.ns}:arcq"))

    def drain(self) -> int:
        """Archive what is waiting for every occurrence no other archiver is at; how many outcomes."""
        return sum(self.drain_one(occurrence_id)[0] for occurrence_id in self.waiting())

    def drain_one(self, occurrence_id: str) -> tuple[int, bool]:
        """Archive what is waiting for one occurrence: (how many outcomes, whether another
        archiver held it, so that some may be left)."""
        arc, dl, out, lock, arcq = self._keys(occurrence_id)
        count = 0
        try:
            while True:
                raw = self._take(keys=[arc, dl, out, lock], args=[self.owner, BATCH, LOCK_MS])
                if raw is None:
                    return count, True
                if raw:
                    self._record_occurrence(occurrence_id)
                    self.store.archive(self._settled(occurrence_id, raw))
                left = int(self._done(keys=[arc, arcq, lock], args=[self.owner, len(raw) // 3, occurrence_id]))
                count += len(raw) // 3
                if left <= 0 or len(raw) // 3 < BATCH:  # what came in meanwhile waits for the next round
                    return count, left < 0
        finally:
            self._let_go(keys=[lock], args=[self.owner])

    def flush(self, occurrence_id: str, *, timeout: float = 120.0) -> int:
        """Archive everything waiting for one occurrence, waiting for another archiver at it
        to finish (``send --wait`` before its summary); how many outcomes this one archived."""
        deadline = time.monotonic() + timeout
        count = 0
        arc = self._keys(occurrence_id)[0]
        while True:
            done, busy = self.drain_one(occurrence_id)
            count += done
            if not busy and not self.ledger.client.llen(arc):
                return count
            if time.monotonic() > deadline:
                raise StoreError(f"outcomes of {occurrence_id} are still waiting to be archived after {timeout:.0f} s")
            time.sleep(0.05)

    def _record_occurrence(self, occurrence_id: str) -> None:
        """Record the occurrence (its outcomes' rows refer to it) when its state has changed."""
        occurrence = self.ledger.occurrence(occurrence_id)
        if self._states.get(occurrence_id) != occurrence.state:
            self.store.record_occurrence(occurrence)
            self._states[occurrence_id] = occurrence.state

    def _settled(self, occurrence_id: str, raw: list[Any]) -> Iterator[Settled]:
        """The settled outcomes in ``raw`` (field, record, outcome, ...), each delivery once."""
        seen: set[bytes] = set()
        domain: str | None = None
        for i in range(len(raw) - 3, -1, -3):  # the latest mention of a field first
            field, record, outcome = raw[i], raw[i + 1], raw[i + 2]
            if field in seen or not record:
                continue
            seen.add(field)
            values = _decode(record.decode())
            if outcome:
                values.update(_decode(outcome.decode()))
            if values["status"] == "pending":
                continue  # put back by `retry`: archived when it settles again
            message_id = None
            if registry.per_recipient(values["channel"]) and values["attempts"]:
                domain = domain or self.domain()
                message_id = email_message_id(Delivery(occurrence_id, values["channel"], values["recipient"]), domain)
            yield Settled(
                occurrence_id,
                values["channel"],
                values["recipient"],
                values["status"],
                _time(values["created"]) or datetime.now(UTC),
                name=values["name"],
                lists=tuple(values["lists"] or ()),
                attempts=values["attempts"],
                last_error=values["error"],
                provider_id=values["provider_id"],
                message_id=message_id,
                url=values["url"],
                updated=_time(values["updated"]),
                sent_at=_time(values["sent_at"]),
            )


class ArchiveMiddleware(dramatiq.Middleware):
    """Runs an :class:`Archiver` in every worker process: every :data:`EVERY_S`, and once more
    when the worker has stopped (after its in-flight messages finished)."""

    def __init__(self, archiver: Callable[[], Archiver | None]) -> None:
        self.archiver = archiver
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        """Start archiving."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="notifier-archiver", daemon=True)
        self._thread.start()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        """Stop, and archive what the last messages settled."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        self._once()

    def _run(self) -> None:
        while not self._stop.wait(EVERY_S):
            self._once()

    def _once(self) -> None:
        try:
            archiver = self.archiver()
            if archiver is not None:
                archiver.drain()
        except Exception as exc:  # the database or Redis away: the outcomes wait in Redis for the next round
            log.warning("could not archive settled deliveries (they wait in Redis): %s", exc)


# ---------------------------------------------------------------------------
# Firing, suppressions
# ---------------------------------------------------------------------------


def restore(ledger: Ledger, store: Store, consultation: str, events: Iterable[str] | None = None) -> list[str]:
    """Put back into Redis the latest occurrence of each event (of ``events``, or all) of the
    consultation that the database records and Redis does not know, with its recorded
    deliveries (:func:`restore_deliveries`); the ids put back."""
    wanted = None if events is None else set(events)
    latest: dict[str, OccurrenceRecord] = {}
    for found in store.occurrences(consultation):
        if found.rehearsal or (wanted is not None and found.event not in wanted):
            continue
        if found.event not in latest or found.number > latest[found.event].number:
            latest[found.event] = found
    restored = []
    for found in latest.values():
        if ledger.fired(found.consultation, found.event) is None:
            _put_back_closes(ledger, found)  # before it is known as fired: nothing reads it without them
        if ledger.restore(found):
            log.warning("%s is recorded in the database but not in Redis: known as fired again", found.id)
            restore_deliveries(ledger, store, found.id)
            restored.append(found.id)
    return restored


def restore_deliveries(ledger: Ledger, store: Store, occurrence_id: str) -> int:
    """Put back into Redis the occurrence's deliveries that the database records and Redis has
    lost, as they settled: ``report`` reads them there again and ``notifier retry`` finds the
    failed ones. Deliveries Redis still knows are left as they are (the ledger adds only what
    it lacks), so this is harmless when nothing was lost and when run twice. Returns how many
    were put back (they are archived once more, which changes nothing)."""
    records = [
        Record(
            s.channel,
            s.recipient,
            cast(Status, s.status),
            name=s.name,
            lists=s.lists,
            attempts=s.attempts,
            error=s.last_error,
            provider_id=s.provider_id,
            url=s.url,
            created=_iso(s.created) or now_iso(),
            updated=_iso(s.updated),
            sent_at=_iso(s.sent_at),
        )
        for s in store.settled(occurrence_id)
    ]
    restored = ledger.add(occurrence_id, records)
    if restored:
        log.warning("%d deliveries of %s put back into Redis from the database", restored, occurrence_id)
    return restored


def _iso(value: datetime | None) -> str | None:
    """A time as the ledger writes it (UTC, to the millisecond)."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds") if value else None


def _put_back_closes(ledger: Ledger, found: OccurrenceRecord) -> None:
    """The ``closes`` (and ``previous_closes``) an occurrence told, back into its ledger hash."""
    for name, value in ((CLOSES_FIELD, found.closes), (PREVIOUS_FIELD, found.previous_closes)):
        if value is not None:
            ledger.keep_occurrence_field(found.id, name, value.astimezone(UTC).isoformat())


def _with_closes(ledger: Ledger, occurrence: Occurrence) -> OccurrenceRecord:
    """The record of an occurrence with the ``closes`` and ``previous_closes`` it keeps in the
    ledger (:mod:`notifier.extension`)."""
    return replace(
        occurrence,
        closes=_time(ledger.occurrence_field(occurrence.id, CLOSES_FIELD)),
        previous_closes=_time(ledger.occurrence_field(occurrence.id, PREVIOUS_FIELD)),
    )


def fired(store: Store, config: Config, ledger: Ledger, occurrence_id: str, *, actor: str) -> None:
    """Record a new occurrence: the consultation and lists as configured, the ``subscribed:
    false`` members, the occurrence, and who fired it."""
    record_config(store, config)
    store.sync_config_suppressions(m.email for lst in config.lists.values() for m in lst.members if not m.subscribed)
    occurrence = ledger.occurrence(occurrence_id)
    store.record_occurrence(_with_closes(ledger, occurrence))
    store.audit(
        actor,
        f"send {occurrence.event}",
        consultation=occurrence.consultation,
        detail=occurrence_id + (" (late)" if occurrence.late else ""),
    )


def seed_suppressions(ledger: Ledger, store: Store) -> int:
    """Copy the database's suppressions (but ``config``'s, which the lists say) into a Redis
    that has lost them, once (a marker key says it was done); how many were copied."""
    marker = f"{ledger.ns}:suppressed:seeded"
    if ledger.client.exists(marker):
        return 0
    found = [s for s in store.suppressions() if s.source != "config"]
    pipe = ledger.client.pipeline(transaction=True)
    for s in found:
        reason = s.detail or REASONS.get(s.source, s.source)
        pipe.hsetnx(f"{ledger.ns}:suppressed", s.email, json.dumps({"reason": reason, "at": s.at.isoformat()}))
    pipe.set(marker, now_iso())
    pipe.execute()
    if found:
        log.warning("Redis had lost its suppressions: %d put back from the database", len(found))
    return len(found)
