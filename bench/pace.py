"""Benchmark: what a channel's pace (:mod:`notifier.pace`) costs on the delivery hot path.

Three measurements, each per message, on a real Redis (``--redis-url``, default
``redis://127.0.0.1:6379/15``, flushed first):

* **no limits**: what :class:`notifier.delivery._Sending` pays once a batch to learn the
  channel has none (``Config.limits``), spread over a batch of 100; no Redis at all;
* **rate only**: :meth:`notifier.pace.Pacer.send` with a rate too high to ever wait
  (1,000,000/second), so only the bookkeeping and the reservation's round trips count;
* **rate and daily cap**: the same plus the day's count, taken once per send group.

    .venv/bin/python bench/pace.py [--messages 20000] [--batch 100] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import redis

from notifier.config import load_config
from notifier.errors import RateLimitedError
from notifier.pace import Limits, Pacer, Rate

ROOT = Path(__file__).resolve().parent.parent
SEND_CHUNK = 10  # as notifier.delivery sends


def per_message_without_limits(messages: int, batch: int) -> float:
    """Seconds per message of asking, once a batch, whether e-mail has limits."""
    config = load_config(ROOT / "config")
    began = time.perf_counter()
    for _ in range(messages // batch):
        assert config.limits("email") is None
    return (time.perf_counter() - began) / messages


def per_message_paced(client: redis.Redis, limits: Limits, messages: int, batch: int) -> float:
    """Seconds per message of :meth:`Pacer.send`, batch by batch, chunk by chunk."""
    client.flushdb()
    sent = 0

    def send(group: list[int]) -> None:
        nonlocal sent
        sent += len(group)

    def postpone(_: int, error: RateLimitedError) -> None:
        raise AssertionError(f"postponed at a rate that never waits: {error}")

    began = time.perf_counter()
    for number in range(messages // batch):
        pacer = Pacer(client, "email", limits, f"bench|{number}")
        items = list(range(batch))
        for start in range(0, batch, SEND_CHUNK):
            chunk = items[start : start + SEND_CHUNK]
            pacer.send(chunk, send, postpone, wanted=batch - start, most=SEND_CHUNK)
    elapsed = time.perf_counter() - began
    assert sent == messages // batch * batch
    return elapsed / sent


def main() -> None:
    """Run the three measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--redis-url", default=os.environ.get("NOTIFIER_REDIS_URL", "redis://127.0.0.1:6379/15"))
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis_url)
    tz = ZoneInfo("Europe/London")
    fast = Rate.parse("1000000/second")
    rows = [
        ("no limits", per_message_without_limits(args.messages, args.batch)),
        ("rate only", per_message_paced(client, Limits(fast, None, tz), args.messages, args.batch)),
        (
            "rate and daily cap",
            per_message_paced(client, Limits(fast, args.messages * 10, tz), args.messages, args.batch),
        ),
    ]
    client.flushdb()
    for name, seconds in rows:
        print(f"{name:>20}: {seconds * 1e9:10.1f} ns a message")


if __name__ == "__main__":
    main()
