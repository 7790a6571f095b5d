"""Benchmark: the workers' archiver alone, CPU per outcome of :meth:`Archiver.flush`.

Records N settled e-mails of one occurrence in a real Redis (``--redis-url``, flushed
first) as the mark script leaves them (the ledger's record, queued in ``arc:<id>``), then
times, in this thread, one :meth:`notifier.archive.Archiver.flush` of them into a new SQLite
record: reading them back from Redis, decoding, ``Store.archive``, SQLite's own work.
``bench/hotpath.py`` does not see this cost (a thread of its own in each worker).

    .venv/bin/python bench/archiver.py [--outcomes 20000] [--redis-url redis://127.0.0.1:6379/14]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta

import redis

from notifier.archive import Archiver
from notifier.ledger import Ledger, Occurrence, Record, now_iso
from notifier.store import ConsultationRecord, Store, make_engine, upgrade


def main() -> None:
    """Record the outcomes, archive them, print the CPU per outcome."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outcomes", type=int, default=20_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14", help="flushed first")
    args = parser.parse_args()
    n = args.outcomes
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    ledger = Ledger(client)
    at = datetime(2026, 11, 30, tzinfo=UTC)
    occ = Occurrence("bench:opened:1", "bench", "opened", 1, at, at, state="fanned-out")
    ledger.restore(occ)
    now = now_iso()
    # each outcome settled a millisecond after the one before: a worker's pace is a few a
    # millisecond, so this leaves the store fewer repeated times than it meets in a worker
    start = datetime.fromisoformat(now)
    settled = [(start + timedelta(milliseconds=i)).isoformat(timespec="milliseconds") for i in range(n)]
    records = (
        Record(
            "email",
            f"p{i}@x.example",
            "sent",
            name=f"Person {i}",
            lists=("media", "police"),
            attempts=1,
            provider_id=f"<{i}@x>",
            created=now,
            updated=settled[i],
            sent_at=settled[i],
        )
        for i in range(n)
    )
    ledger.add(occ.id, records)
    engine = make_engine(f"sqlite:///{tempfile.mkdtemp()}/notifier.db")
    upgrade(engine)
    store = Store(engine)
    store.record_consultation(ConsultationRecord("bench", "Bench", None, "Europe/London", at, at))
    store.record_occurrence(occ)
    archiver = Archiver(ledger, store, lambda: "pcc.example", owner="bench")
    started = time.thread_time()
    count = archiver.flush(occ.id)
    took = time.thread_time() - started
    store.close()
    print(f"{count:,} outcomes archived, {took / count * 1e6:.1f} µs CPU each (this thread, SQLite's work included)")


if __name__ == "__main__":
    main()
