"""Benchmark: the worker's hot path in one thread, CPU per e-mail and where it goes.

``bench/fanout.py`` measures what users see, end to end, but on this two-core machine its
rate moves by 10-20% from run to run (the workers, Redis, the sink and ``notifier send``
share the cores, and the guest's speed drifts). This one measures what the workers spend:
it fans one event out to ``--recipients`` generated people (the same project as
``fanout.py``), then calls :func:`notifier.delivery.deliver` on every batch in this one
thread against a real Redis and ``smtp-sink``, and prints the CPU time of that thread
(user + system; the sink's output is read by another) per e-mail, in all and per stage:

* ``render``: :meth:`Renderer.email` (subject, text and HTML, sandboxed);
* ``mime``: :func:`build_message` (the RFC 5322 bytes);
* ``smtp``: :meth:`SmtpChannel.send_many` less ``mime``, ``settle`` and ``mark`` (the pipelined transactions:
  commands, replies, and the kernel's share of the socket writes);
* ``claim``, ``suppressions``: the ledger's round trips; ``mark``: writing each result (pipelined,
  inside ``send_many``); ``flush``: reading those writes' replies at the end of a batch;
* ``token``: the signed unsubscribe link; ``settle``: the next ledger record;
* ``compose``: building each payload (``delivery._payload``, which calls
  :func:`notifier.compose.compose`) less ``render`` and ``token``;
* ``rest``: everything else in ``deliver``.

The stages are timed by wrapping those functions (about 1 µs each per call), so the parts
add up to a little more than the total.

    .venv/bin/python bench/hotpath.py [--recipients 20000] [--redis-url redis://127.0.0.1:6379/13]
"""

from __future__ import annotations

import argparse
import collections
import functools
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from fanout import CONSULTATION, EVENT, Sink, free_port, make_project

from notifier import delivery, ledger, rendering
from notifier.channels.email import channel as email_channel
from notifier.config import EMAIL_CHANNEL, Settings
from notifier.runtime import Runtime

spent: dict[str, float] = collections.defaultdict(float)


def cpu() -> float:
    """User plus system CPU seconds of this thread so far: the sink's output is read by
    another thread of this process, which a worker does not have."""
    return time.thread_time()


def timed(owner: Any, name: str, stage: str) -> None:
    """Replace ``owner.name`` by a wrapper that adds its CPU time to ``spent[stage]``."""
    function: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent[stage] += time.thread_time() - start

    setattr(owner, name, wrapper)


def main() -> None:
    """Fan out, deliver every batch in this thread, print CPU per e-mail by stage."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13", help="flushed first")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="notifier-hotpath-"))
    sink = Sink(free_port())
    sink.start()
    try:
        settings = Settings.from_env(
            {
                "NOTIFIER_CONFIG": str(make_project(root, args.recipients)),
                "NOTIFIER_DATA_DIR": str(root / "var"),
                "NOTIFIER_REDIS_URL": args.redis_url,
                "NOTIFIER_SMTP_URL": f"smtp://127.0.0.1:{sink.port}",
                "NOTIFIER_SECRET_KEY": "bench-secret-key-not-for-production",
                "NOTIFIER_PUBLIC_URL": "https://notify.pcc.example",
            }
        )
        redis.Redis.from_url(args.redis_url).flushdb()
        rt = Runtime(settings)
        occurrence = rt.ledger.claim_occurrence(CONSULTATION, EVENT, at=datetime.now(UTC))
        assert occurrence is not None
        batches = [b for b in delivery.fan_out(rt, occurrence) if b.channel == EMAIL_CHANNEL]
        sent = sum(len(b.recipients) for b in batches)

        timed(rendering.Renderer, "email", "render")
        timed(email_channel, "build_message", "mime")  # where SmtpChannel looks it up
        timed(email_channel.SmtpChannel, "send_many", "smtp")
        timed(ledger.Ledger, "claim", "claim")
        timed(ledger.Recorder, "record", "mark")
        timed(ledger.Recorder, "flush", "flush")
        timed(ledger.Ledger, "suppressions", "suppressions")
        timed(delivery, "unsubscribe_url", "token")
        timed(delivery, "_settle", "settle")
        timed(delivery, "_payload", "compose")
        rt.channel(EMAIL_CHANNEL)  # connect before timing
        start_cpu, start = cpu(), time.perf_counter()
        for batch in batches:
            delivery.deliver(rt, batch, message_id="hotpath")
        total, wall = cpu() - start_cpu, time.perf_counter() - start
        accepted, _ = sink.wait_for(sent, idle_timeout=10)
        rt.close()
    finally:
        sink.stop()
        shutil.rmtree(root, ignore_errors=True)

    # build_message runs inside send_many, and so do settling and recording each result
    # (send_many's on_result); the batch's flush, reading the replies, is after it
    spent["smtp"] -= spent["mime"] + spent["settle"] + spent["mark"]
    spent["compose"] -= spent["render"] + spent["token"]  # _payload calls both
    spent["rest"] = total - sum(spent.values())
    print(
        f"{sent:,} e-mails in one thread ({accepted:,} accepted by smtp-sink): "
        f"{total / sent * 1e6:.0f} µs CPU and {wall / sent * 1e6:.0f} µs wall per e-mail"
    )
    for stage, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"  {stage:<13} {seconds / sent * 1e6:6.1f} µs  {100 * seconds / total:4.1f}%")


if __name__ == "__main__":
    main()
