"""Benchmark: resolve a 100,000-member audience (``notifier.audience.resolve``).

Builds, in memory, several stakeholder lists of fictional ``.example`` addresses that
overlap (the same person in two or three lists, with the address in another case), lists
that include other lists, some members with ``subscribed: false`` and extra columns, and a
set of unsubscribed addresses; then times ``resolve`` over the umbrella list. Target: under
one second.

    .venv/bin/python bench/audience.py [--members 100000] [--repeat 5] [--profile]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from pathlib import Path

from notifier.audience import resolve
from notifier.config import Member, StakeholderList

TARGET_S = 1.0
FIRST = ("Jane", "Tom", "Niamh", "Priya", "Owen", "Grace", "Ali", "Megan", "Sam", "Ruth")
LAST = ("Smith", "Baxter", "O'Connor", "Patel", "Jones", "Evans", "Khan", "Lloyd", "Hughes", "Price")
LISTS = ("police", "csp", "nhs", "local-authorities", "media", "business", "voluntary", "education")


def machine() -> str:
    """CPU model and core count (from /proc/cpuinfo), and the Python version."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()} ({platform.python_implementation()})"


def build(members: int, seed: int = 7) -> tuple[dict[str, StakeholderList], dict[str, str]]:
    """``members`` distinct people spread over overlapping lists, and some unsubscribed addresses.

    Each person is in one list, a third of them in a second and a tenth in a third (their
    address written in upper case there); one in fifty has ``subscribed: false`` in one list;
    one in a hundred is unsubscribed. ``everyone`` includes ``partners`` (which includes four
    lists) and the other four lists.
    """
    rng = random.Random(seed)
    entries: dict[str, list[Member]] = {name: [] for name in LISTS}
    suppressed: dict[str, str] = {}
    for i in range(members):
        name = f"{FIRST[i % 10]} {LAST[(i // 10) % 10]}"
        email = f"{name.split()[0].lower()}.{i}@org{i % 997}.example"
        homes = rng.sample(LISTS, 1 + (i % 3 == 0) + (i % 10 == 0))
        for n, home in enumerate(homes):
            fields: dict[str, object] = {
                "email": email.upper() if n else email,
                "name": name,
                "organisation": f"Organisation {i % 997}",
            }
            if i % 4 == 0:
                fields["role"] = "Chief Executive"
            if i % 50 == 0 and n == len(homes) - 1:
                fields["subscribed"] = False
            entries[home].append(Member(**fields))
        if i % 100 == 1:
            suppressed[email.lower()] = "unsubscribed"
    lists = {name: StakeholderList(id=name, members=tuple(found)) for name, found in entries.items()}
    lists["partners"] = StakeholderList(id="partners", include=("police", "csp", "nhs", "local-authorities"))
    lists["everyone"] = StakeholderList(
        id="everyone", include=("partners", "media", "business", "voluntary", "education", "csp")
    )
    return lists, suppressed


def main() -> None:
    """Build the audience, time ``resolve`` ``--repeat`` times, print the result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="profile one resolve with pyinstrument")
    args = parser.parse_args()

    started = time.perf_counter()
    lists, suppressed = build(args.members)
    entries = sum(len(x.members) for x in lists.values())
    print(
        f"built {len(lists)} lists, {entries:,} list entries for {args.members:,} people "
        f"in {time.perf_counter() - started:.1f} s (not timed)"
    )

    times = []
    audience = None
    for _ in range(args.repeat):
        started = time.perf_counter()
        audience = resolve(lists, ["everyone"], suppressed=suppressed)
        times.append(time.perf_counter() - started)
    assert audience is not None
    if len(audience.recipients) + len(audience.suppressed) != args.members:
        raise SystemExit(f"wrong audience: {len(audience.recipients)} + {len(audience.suppressed)} suppressed")

    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        with profiler:
            resolve(lists, ["everyone"], suppressed=suppressed)
        print(profiler.output_text(unicode=True, color=False))

    best, median = min(times), statistics.median(times)
    print(
        f"resolve: {len(audience.recipients):,} recipients, {len(audience.suppressed):,} suppressed, "
        f"{len(audience.warnings)} warnings"
    )
    print(
        f"time: best {best:.3f} s, median {median:.3f} s of {args.repeat} runs "
        f"(target < {TARGET_S:.1f} s: {'met' if median < TARGET_S else 'NOT met'})"
    )
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
