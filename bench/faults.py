"""Faults mid fan-out: a worker killed with SIGKILL, and Redis stopped and restarted.

Each round fans one event out as e-mail to ``--recipients`` people (a generated CSV list
of ``.example`` addresses in a temporary copy of the example project) with real parts: a
``redis-server`` this script starts on a free port with AOF on and ``appendfsync always``
in a temporary directory, an aiosmtpd server in this process that counts the messages it
accepts per recipient (``--smtp-delay`` seconds per message, so that the fault lands mid
fan-out), ``notifier worker`` subprocesses and ``notifier send`` on the command line.

* ``kill`` round: one ``notifier worker --threads 4``; once ``--fault-at`` e-mails have
  arrived it is killed with SIGKILL (its whole process group) and a second worker is
  started to finish. The promise: nobody unsent, and at most 2 x threads recipients (what
  the killed worker had in flight, two SMTP connections a thread) e-mailed twice.
* ``restart`` round: one ``notifier worker`` (8 threads, the default) and no scheduler;
  once ``--fault-at`` e-mails have arrived Redis is stopped cleanly (``SHUTDOWN``, the AOF
  flushed) and started again 3 s later on the same files. The promise: every delivery
  reaches a final state and everybody gets the e-mail, with only that worker running.

For each round it prints unsent (recipients with no message within ``--deadline``
seconds), duplicates (recipients with more than one message) and extra messages, pending
deliveries left in the ledger, and how long the round took after the fault.

    .venv/bin/python bench/faults.py [--rounds 5] [--fault kill|restart|both]
                                     [--recipients 3000] [--fault-at 1000] [--deadline 120]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from aiosmtpd.controller import Controller

from notifier.broker import text, workers_alive

ROOT = Path(__file__).resolve().parent.parent
CONSULTATION, EVENT = "bulk-2019", "opened"
KILL_THREADS = 4
LANES = 2  # SMTP connections a worker thread keeps (notifier.channels.email.LANES)
RESTART_AFTER_S = 3.0


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Any, timeout: float, poll: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


# ---------------------------------------------------------------------------
# The servers
# ---------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A ``redis-server`` of this script's own: AOF with ``appendfsync always`` under ``dir``."""

    dir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it on its files and wait until it answers."""
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        if not wait_for(lambda: self._answers(client), 30):
            raise SystemExit(f"redis-server did not start on port {self.port}")
        client.close()

    @staticmethod
    def _answers(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    def stop(self) -> None:
        """``SHUTDOWN`` (a clean stop: the AOF is flushed) and wait for the process to end."""
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        with contextlib.suppress(redis.RedisError, OSError):
            client.shutdown()
        client.close()
        if self.process is not None:
            self.process.wait(timeout=30)


class CountingHandler:
    """An aiosmtpd handler that accepts everything and counts messages per recipient."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.delay = 0.0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.received[rcpt.lower()] += 1
        return "250 Message accepted"

    def total(self) -> int:
        """Messages accepted so far."""
        with self.lock:
            return sum(self.received.values())

    def snapshot(self) -> Counter[str]:
        """Messages accepted so far, per recipient."""
        with self.lock:
            return Counter(self.received)

    def reset(self) -> None:
        """Forget every message."""
        with self.lock:
            self.received.clear()


# ---------------------------------------------------------------------------
# The project and the workers
# ---------------------------------------------------------------------------


def make_project(root: Path, recipients: int) -> list[str]:
    """A copy of the example project with one more consultation, ``bulk-2019``, whose
    audience is one CSV list of ``recipients`` people; their addresses."""
    shutil.copytree(ROOT / "config", root / "config")
    shutil.copytree(ROOT / "templates", root / "templates")
    emails = [f"person{i}@bulk.example" for i in range(recipients)]
    rows = "".join(f"Person {i},Org {i % 17},{email}\n" for i, email in enumerate(emails))
    (root / "config" / "stakeholders" / "bulk.csv").write_text("name,organisation,email\n" + rows)
    (root / "config" / "consultations" / "bulk-2019.yaml").write_text(
        "title: Bulk consultation\n"
        "url: https://www.pcc.example/consultations/bulk\n"
        "summary: A consultation with a large audience.\n"
        "opens: 2019-07-09 09:00\n"
        "closes: 2019-08-15 23:59\n"
        "audience: [bulk]\n"
        "channels: [email]\n"
    )
    return emails


@dataclass
class Round:
    """What one round measured."""

    fault: str
    unsent: int
    duplicates: int
    extra: int
    pending: int
    recovered_s: float | None
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        recovered = f"{self.recovered_s:.1f} s" if self.recovered_s is not None else "never"
        return (
            f"{self.fault}: unsent {self.unsent}, duplicates {self.duplicates} (extra messages {self.extra}), "
            f"pending in the ledger {self.pending}, all final and received {recovered} after the fault"
            + (f" [{'; '.join(self.notes)}]" if self.notes else "")
        )


class Bench:
    """The servers, the project and the rounds."""

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.args = args
        self.redis = RedisServer(root / "redis", free_port())
        self.redis.dir.mkdir()
        self.handler = CountingHandler()
        self.handler.delay = args.smtp_delay
        self.smtp_port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.smtp_port)
        self.emails = make_project(root, args.recipients)
        self.root = root
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")},
            "NOTIFIER_CONFIG": str(root / "config"),
            "NOTIFIER_DATA_DIR": str(root / "var-0"),  # a new one each round (_fresh)
            "NOTIFIER_REDIS_URL": self.redis.url,
            "NOTIFIER_SMTP_URL": f"smtp://127.0.0.1:{self.smtp_port}",
            "NOTIFIER_SECRET_KEY": "bench-secret-key-not-for-production",
            "NOTIFIER_PUBLIC_URL": "https://notify.pcc.example",
            "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
        }
        self.workers: list[subprocess.Popen[bytes]] = []
        self.rounds = 0

    def start(self) -> None:
        """Start Redis and the SMTP server."""
        self.redis.start()
        self.controller.start()

    def close(self) -> None:
        """Stop every worker, the SMTP server and Redis."""
        for worker in self.workers:
            self._stop_worker(worker)
        self.controller.stop()
        self.redis.stop()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, socket_timeout=5)

    def worker(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        """Start ``notifier worker ARGS`` in its own process group, its stderr into ``log``."""
        with open(self.root / log, "ab") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "notifier", "worker", *args],
                env=self.env,
                cwd=self.root,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        self.workers.append(process)
        return process

    @staticmethod
    def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()

    def _fresh(self) -> redis.Redis:
        """An empty Redis (the script's own server), a new data directory and an SMTP count
        of zero. The data directory holds the consultation record, from which notifier
        restores a fired occurrence that Redis lost: with the previous round's record the
        event would count as sent already and nothing would go."""
        client = self.client()
        client.flushall()
        self.rounds += 1
        self.env["NOTIFIER_DATA_DIR"] = str(self.root / f"var-{self.rounds}")
        self.handler.reset()
        return client

    def _send(self) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "notifier", "send", CONSULTATION, EVENT],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"notifier send failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def _pending(self, client: redis.Redis) -> int | None:
        """Deliveries of the occurrence not final yet (None until it has fanned out)."""
        try:
            occurrence = client.get(f"notifier:fired:{CONSULTATION}:{EVENT}")
            if not occurrence or client.hget(f"notifier:occ:{text(occurrence)}", "state") != b"fanned-out":
                return None
            counts = client.hgetall(f"notifier:cnt:{text(occurrence)}")
        except (redis.RedisError, OSError):
            return None
        return sum(int(v) for k, v in counts.items() if text(k).endswith("|pending"))

    def _settle(self, client: redis.Redis, since: float) -> float | None:
        """Wait (up to ``--deadline`` s after the fault) until everyone got the e-mail and
        every delivery is final; seconds from the fault, or None if that never happened."""
        everyone = len(self.emails)

        def done() -> bool:
            return len(self.handler.snapshot()) >= everyone and self._pending(client) == 0

        if not wait_for(done, self.args.deadline - (time.monotonic() - since), poll=0.2):
            return None
        took = time.monotonic() - since
        time.sleep(1.0)  # anything sent twice would arrive now
        return took

    def _measure(self, fault: str, client: redis.Redis, recovered: float | None) -> Round:
        received = self.handler.snapshot()
        pending = self._pending(client)
        return Round(
            fault=fault,
            unsent=sum(1 for e in self.emails if received[e] == 0),
            duplicates=sum(1 for n in received.values() if n > 1),
            extra=sum(n - 1 for n in received.values() if n > 1),
            pending=-1 if pending is None else pending,
            recovered_s=recovered,
        )

    def kill_round(self) -> Round:
        """SIGKILL a ``--threads 4`` worker mid fan-out, finish with a second one."""
        client = self._fresh()
        first = self.worker("--threads", str(KILL_THREADS), log="kill-first.log")
        wait_for(lambda: len(workers_alive(client)) >= 1, 60)
        self._send()
        if not wait_for(lambda: self.handler.total() >= self.args.fault_at, 120, poll=0.005):
            raise SystemExit("the first worker did not get going")
        os.killpg(first.pid, signal.SIGKILL)
        killed = time.monotonic()
        first.wait()
        at = self.handler.total()
        second = self.worker("--threads", str(KILL_THREADS), log="kill-second.log")
        try:
            result = self._measure("kill", client, self._settle(client, killed))
        finally:
            self._stop_worker(second)
        result.notes.append(f"killed at {at} e-mails received")
        client.close()
        return result

    def restart_round(self) -> Round:
        """Stop Redis cleanly mid fan-out and start it again 3 s later; one worker throughout."""
        client = self._fresh()
        worker = self.worker(log="restart.log")
        wait_for(lambda: len(workers_alive(client)) >= 1, 60)
        self._send()
        if not wait_for(lambda: self.handler.total() >= self.args.fault_at, 120, poll=0.005):
            raise SystemExit("the worker did not get going")
        self.redis.stop()
        stopped = time.monotonic()
        at = self.handler.total()
        time.sleep(RESTART_AFTER_S)
        self.redis.start()
        try:
            result = self._measure("restart", client, self._settle(client, stopped))
        finally:
            alive = worker.poll() is None
            self._stop_worker(worker)
        result.notes.append(f"stopped at {at} e-mails received")
        if not alive:
            result.notes.append("the worker had exited")
        client.close()
        return result


def main() -> None:
    """Run the rounds and print what each measured."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fault", choices=("kill", "restart", "both"), default="both")
    parser.add_argument("--recipients", type=int, default=3_000)
    parser.add_argument("--fault-at", type=int, default=1_000, help="e-mails received before the fault")
    parser.add_argument("--smtp-delay", type=float, default=0.005, help="seconds the SMTP server takes a message")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds after the fault to finish in")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (worker logs)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="notifier-faults-"))
    bench = Bench(root, args)
    rounds: list[Round] = []
    try:
        bench.start()
        print(
            f"{args.recipients:,} recipients; Redis on port {bench.redis.port} (AOF, appendfsync always) "
            f"in {bench.redis.dir}; aiosmtpd on port {bench.smtp_port}, {args.smtp_delay * 1000:.0f} ms a message"
        )
        faults = ["kill", "restart"] if args.fault == "both" else [args.fault]
        for n in range(args.rounds):
            for fault in faults:
                found = bench.kill_round() if fault == "kill" else bench.restart_round()
                rounds.append(found)
                print(f"round {n + 1} {found.line()}", flush=True)
    finally:
        bench.close()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    bound = LANES * KILL_THREADS
    for fault in ("kill", "restart"):
        mine = [r for r in rounds if r.fault == fault]
        if not mine:
            continue
        worst_dup = max(r.duplicates for r in mine)
        ok = all(r.unsent == 0 and r.pending == 0 for r in mine) and (fault == "restart" or worst_dup <= bound)
        print(
            f"{fault}: {len(mine)} rounds, unsent {[r.unsent for r in mine]}, duplicates "
            f"{[r.duplicates for r in mine]}"
            + (f" (promise <= {bound})" if fault == "kill" else "")
            + f": {'kept' if ok else 'NOT kept'}"
        )


if __name__ == "__main__":
    main()
