"""Benchmark: the console's deliveries page at 100,000 deliveries (target p95 < 150 ms).

One occurrence of the example consultation with N deliveries in the record (a SQLite file in a
temporary folder, as the embedded default; or ``--database`` for a PostgreSQL URL whose
schema is current), and no trace of it in Redis (the page then counts from the record, its
slower path). A signed-in viewer asks, through the whole app in process (Starlette's
TestClient: routing, session, guard, the handler, the template; no network), for:

* ``first page``: the first 50 deliveries, counts and total;
* ``deep page``: 50 deliveries after a recipient near the end (keyset);
* ``status``: ``?status=failed``; ``status+list``: ``?status=failed&list=csp``;
* ``search``: ``?q=`` a part of one address (a scan of the occurrence's rows);
* ``search, none``: a search that matches nothing (the whole scan, nothing to show).

    .venv/bin/python bench/console.py [--deliveries 100000] [--requests 40] [--redis URL] [--database URL]

Each case is asked ``--requests`` times after two warm-up requests; the p50 and p95 of the
wall time of each request are printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from starlette.testclient import TestClient

from notifier.config import Settings
from notifier.store import OccurrenceRecord, Settled, Store, make_engine, upgrade
from notifier.users import add_user
from notifier.web import create_app

ROOT = Path(__file__).resolve().parent.parent
SOC = "soc-strategy-2019"
OCCURRENCE = f"{SOC}:opened:1"
TARGET_P95_MS = 150.0
LISTS = ("csp", "police", "nhs", "local-authorities", "media")
PASSWORD = "bench password, long enough"


def fill(store: Store, n: int) -> None:
    """N e-mail deliveries of one occurrence: mostly sent, one in 20 failed, one in 20 suppressed."""
    opens = datetime(2019, 7, 9, 8, tzinfo=UTC)
    store.record_occurrence(OccurrenceRecord(OCCURRENCE, SOC, "opened", 1, opens, opens, state="done"))
    statuses = ("sent",) * 18 + ("failed", "suppressed")

    def rows() -> object:
        for i in range(n):
            at = opens + timedelta(seconds=i // 50)
            status = statuses[i % len(statuses)]
            yield Settled(
                OCCURRENCE,
                "email",
                f"person{i:06d}@stakeholder{i % 97}.example",
                status,
                at,
                name=f"Person {i}",
                lists=(LISTS[i % 5], LISTS[(i + 2) % 5]),
                attempts=1,
                last_error="550 5.1.1 no such user" if status == "failed" else None,
                updated=at,
                sent_at=at if status == "sent" else None,
            )

    store.archive(rows())  # type: ignore[arg-type]


def signed_in(client: TestClient, store: Store) -> None:
    """Sign a viewer in through the sign-in form."""
    add_user(store, "bench@pcc.example", "viewer", PASSWORD)
    form = client.get("/admin/sign-in").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token
    data = {"email": "bench@pcc.example", "password": PASSWORD, "csrf_token": token.group(1)}
    assert client.post("/admin/sign-in", data=data, follow_redirects=False).status_code == 303


def measure(client: TestClient, path: str, requests: int) -> list[float]:
    """Milliseconds of each of ``requests`` GETs of ``path`` (after two unmeasured)."""
    times = []
    for i in range(requests + 2):
        start = time.perf_counter()
        response = client.get(path)
        elapsed = (time.perf_counter() - start) * 1000
        assert response.status_code == 200, response.text[:500]
        if i >= 2:
            times.append(elapsed)
    return times


def main() -> None:
    """Fill, sign in, measure each case, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--redis", default=os.environ.get("NOTIFIER_TEST_REDIS", "redis://127.0.0.1:6379/") + "14")
    parser.add_argument(
        "--database", default=None, help="an empty PostgreSQL database's URL (default: SQLite in a temporary folder)"
    )
    args = parser.parse_args()
    client_redis = redis.Redis.from_url(args.redis)
    client_redis.flushdb()
    if args.database:  # a fresh database: brought to the current schema, as `notifier db upgrade` does
        engine = make_engine(args.database)
        upgrade(engine)
        engine.dispose()
    with tempfile.TemporaryDirectory(prefix="notifier-bench-console-") as folder:
        settings = Settings(
            config_dir=ROOT / "config",
            data_dir=Path(folder),
            redis_url=args.redis,
            database_url=args.database,
            public_url="https://notify.pcc.example",
            secret_key_env="bench-console",
        )
        app = create_app(settings)
        store: Store = app.state.web.store
        started = time.perf_counter()
        fill(store, args.deliveries)
        if store.dialect == "postgresql":  # what autovacuum does soon after a bulk load: the planner's statistics
            with store.engine.begin() as connection:
                connection.exec_driver_sql("ANALYZE deliveries")
        print(f"{args.deliveries:,} deliveries archived in {time.perf_counter() - started:.1f} s ({store.dialect})")
        base = f"/admin/consultations/{SOC}/occurrences/opened/1"
        near_end = f"person{args.deliveries - 200:06d}"
        cases = {
            "first page": base,
            "deep page": f"{base}?after=email%7C{near_end}%40stakeholder0.example",
            "status": f"{base}?status=failed",
            "status+list": f"{base}?status=failed&list=csp",
            "search": f"{base}?q=person01234",
            "search, none": f"{base}?q=nobody-at-all",
        }
        with TestClient(app, base_url="https://testserver") as client:
            signed_in(client, store)
            print(f"{'case':<14} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  target p95 < {TARGET_P95_MS:.0f} ms")
            for name, path in cases.items():
                times = sorted(measure(client, path, args.requests))
                p95 = times[max(0, round(0.95 * len(times)) - 1)]
                met = "met" if p95 < TARGET_P95_MS else "NOT met"
                print(f"{name:<14} {statistics.median(times):8.1f} {p95:8.1f} {times[-1]:8.1f}  {met}")
    client_redis.flushdb()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
