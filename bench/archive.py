"""Benchmark: archive 100,000 settled outcomes into the record, then write the evidence pack.

For each database (a SQLite file in a temporary folder; a throwaway PostgreSQL database
``g_bench_<random>`` on ``--postgres``, dropped at the end), and each run:

* ``archive``: :meth:`notifier.store.Store.archive` of N new outcomes (rows/s);
* ``re-archive``: the same N again, the idempotent path a retried batch takes (rows/s);
* ``evidence``: :func:`notifier.evidence.build` and :func:`notifier.evidence.write` of the
  consultation's N deliveries (seconds; target under 5 s).

    .venv/bin/python bench/archive.py [--outcomes 100000] [--repeat 3] [--postgres URL] [--no-postgres]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from notifier import evidence
from notifier.store import ConsultationRecord, OccurrenceRecord, Settled, Store, make_engine, upgrade

TARGET_EVIDENCE_S = 5.0
OPENS = datetime(2019, 7, 9, 8, tzinfo=UTC)
LISTS = ("police", "csp", "nhs", "local-authorities", "media")


def outcomes(n: int) -> list[Settled]:
    """N settled e-mails over three occurrences (mostly sent, some failed or suppressed)."""
    statuses = ("sent",) * 18 + ("failed", "suppressed")
    rows = []
    for i in range(n):
        occ = f"bench:{('opened', 'reminder', 'closed')[i % 3]}:1"
        at = OPENS + timedelta(seconds=i // 50)
        status = statuses[i % len(statuses)]
        rows.append(
            Settled(
                occ,
                "email",
                f"person{i // 3}@stakeholder{i % 97}.example",
                status,
                at,
                name=f"Person {i // 3}",
                lists=(LISTS[i % 5], LISTS[(i + 2) % 5]),
                attempts=1,
                last_error="550 5.1.1 no such user" if status == "failed" else None,
                message_id=f"<{i}.bench@pcc.example>",
                updated=at,
                sent_at=at if status == "sent" else None,
            )
        )
    return rows


def prepare(store: Store) -> None:
    """The consultation, its lists and its three occurrences."""
    store.record_consultation(
        ConsultationRecord("bench", "Benchmark consultation", None, "Europe/London", OPENS, OPENS + timedelta(days=37))
    )
    store.record_lists({name: name.title() for name in LISTS})
    for number, event in enumerate(("opened", "reminder", "closed")):
        at = OPENS + timedelta(days=number * 15)
        store.record_occurrence(OccurrenceRecord(f"bench:{event}:1", "bench", event, 1, at, at, state="done"))


Timing = tuple[float, float]  # (wall s, CPU s of this process)


def timed(action: Callable[[], object]) -> Timing:
    """Wall-clock and CPU seconds ``action`` took. The machine is shared: the CPU time of this
    process (which, for SQLite, includes the database's work) is the steadier figure."""
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def run(url: str, rows: list[Settled], out: Path) -> tuple[Timing, Timing, Timing]:
    """(archive, re-archive, evidence) timings on a new database at ``url``."""
    engine = make_engine(url)
    upgrade(engine)
    store = Store(engine)
    try:
        prepare(store)
        first = timed(lambda: store.archive(rows))
        again = timed(lambda: store.archive(rows))
        pack = timed(lambda: evidence.write(evidence.build(store, "bench"), out, generated=datetime.now(UTC)))
    finally:
        store.close()
    return first, again, pack


@contextmanager
def sqlite_databases() -> Iterator[Callable[[], str]]:
    """A factory of new SQLite files in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="g_bench_") as folder:
        count = iter(range(1_000))
        yield lambda: f"sqlite:///{folder}/record{next(count)}.db"


@contextmanager
def postgres_databases(server: str) -> Iterator[Callable[[], str]]:
    """A factory of new PostgreSQL databases on ``server``, all dropped at the end."""
    made: list[str] = []
    base = server.rpartition("/")[0]

    def create() -> str:
        name = f"g_bench_{secrets.token_hex(4)}"
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"{base}/{name}"

    try:
        yield create
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            for name in made:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def report(name: str, n: int, results: list[tuple[Timing, Timing, Timing]]) -> None:
    """Print each run and the medians (wall clock, and this process's CPU in brackets)."""
    for i, (first, again, pack) in enumerate(results, 1):
        print(
            f"  {name} run {i}: archive {n / first[0]:,.0f} rows/s ({first[0]:.2f} s, cpu {first[1]:.2f} s), "
            f"re-archive {n / again[0]:,.0f} rows/s ({again[0]:.2f} s, cpu {again[1]:.2f} s), "
            f"evidence {pack[0]:.2f} s (cpu {pack[1]:.2f} s)"
        )
    first, again, pack = (
        (statistics.median(r[k][0] for r in results), statistics.median(r[k][1] for r in results)) for k in range(3)
    )
    verdict = "met" if pack[0] < TARGET_EVIDENCE_S else "NOT met"
    print(
        f"{name} median: archive {n / first[0]:,.0f} rows/s (cpu {first[1]:.2f} s), re-archive "
        f"{n / again[0]:,.0f} rows/s (cpu {again[1]:.2f} s), evidence {pack[0]:.2f} s (cpu {pack[1]:.2f} s; "
        f"target < {TARGET_EVIDENCE_S:g} s wall: {verdict})"
    )


def main() -> None:
    """Run the benchmark on SQLite, then PostgreSQL."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outcomes", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    rows = outcomes(args.outcomes)
    kinds: list[tuple[str, Callable[[], Any]]] = [("sqlite", sqlite_databases)]
    if not args.no_postgres:
        kinds.append(("postgresql", lambda: postgres_databases(args.postgres)))
    with tempfile.TemporaryDirectory(prefix="g_bench_out_") as out:
        for name, databases in kinds:
            with databases() as new_database:
                results = [run(new_database(), rows, Path(out) / f"{name}{i}") for i in range(args.repeat)]
            report(name, args.outcomes, results)


if __name__ == "__main__":
    main()
