"""Benchmark: fan one event out as e-mail to 100,000 recipients, end to end, on real servers.

What it runs is what users run: a temporary copy of the example project (``config/`` and
``templates/``) whose stakeholders are replaced by generated CSV lists of fictional
``.example`` addresses, a real Redis (``NOTIFIER_REDIS_URL``, default
``redis://127.0.0.1:6379/15``, flushed first), Postfix's ``smtp-sink`` as the SMTP server,
``notifier worker --processes P --threads T`` as subprocesses, and ``notifier send
soc-strategy-2019 opened --again`` on the command line. The e-mail is the example's
``opened`` template, text and HTML (about 6 KB a message on the wire).

It prints:

* e-mails per second, from starting ``notifier send`` to the sink accepting the last
  message (counted by ``smtp-sink -c``), and the ledger's count of sent deliveries;
* how the consultation record kept up: when the workers' archivers had every sent e-mail in
  the embedded SQLite record, after the last was accepted;
* each worker process' peak RSS (``VmHWM`` in ``/proc/<pid>/status``);
* in the same run, before the workers start, the naive baseline: one process rendering
  the same template with Jinja2, building an ``email.message.EmailMessage`` and sending it
  with ``smtplib`` to the same sink, in a loop over the first ``--baseline-recipients``
  recipients (its rate is extrapolated to the full list), and the ratio of the two.

Targets: at least 5,000 e-mails/s, at least 7x the naive loop, worker RSS under 200 MB.

    .venv/bin/python bench/fanout.py [--recipients 100000] [--processes 3] [--threads 1]
                                     [--baseline-recipients 10000] [--keep] [--py-spy DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import json
import os
import platform
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import jinja2
import psutil
import redis

from notifier.broker import text

ROOT = Path(__file__).resolve().parent.parent
CONSULTATION, EVENT = "soc-strategy-2019", "opened"
#: The lists the example's ``opened`` event goes to: the generated people are spread over them.
LISTS = ("key-partners", "media", "police-crime-panel")
TARGET_RATE, TARGET_RATIO, TARGET_RSS_MB = 5_000.0, 7.0, 200.0
FIRST = ("Jane", "Tom", "Niamh", "Priya", "Owen", "Grace", "Ali", "Megan", "Siân", "Ruth")
LAST = ("Smith", "Baxter", "O'Connor", "Patel", "Jones", "Evans", "Khan", "Lloyd", "Hughes", "Price")


def machine() -> str:
    """CPU model, cores, memory, Python and Redis versions."""
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = psutil.virtual_memory().total / 2**30
    return f"{model}, {os.cpu_count()} cores, {ram:.0f} GiB RAM, Python {platform.python_version()}"


# ---------------------------------------------------------------------------
# The project
# ---------------------------------------------------------------------------


def people(count: int) -> Iterator[dict[str, str]]:
    """``count`` fictional stakeholders with distinct ``.example`` addresses."""
    for i in range(count):
        first, last = FIRST[i % 10], LAST[(i // 10) % 10]
        yield {
            "email": f"{first.lower().replace('â', 'a')}.{last.lower().replace(chr(39), '')}.{i}@org{i % 997}.example",
            "name": "" if i % 17 == 0 else f"{first} {last}",
            "organisation": "" if i % 5 == 0 else f"Organisation {i % 997}",
            "role": "Chief Executive" if i % 4 == 0 else "Policy officer",
        }


def make_project(root: Path, recipients: int) -> Path:
    """A copy of the example project under ``root`` whose stakeholders are ``recipients``
    generated people in three CSV lists (each list file one list; one in fifty people is
    also in a second list with the address in capitals, so de-duplication has work to do)."""
    shutil.copytree(ROOT / "config", root / "config")
    shutil.copytree(ROOT / "templates", root / "templates")
    stakeholders = root / "config" / "stakeholders"
    shutil.rmtree(stakeholders)
    stakeholders.mkdir()
    files = [(stakeholders / f"{name}.csv").open("w", newline="", encoding="utf-8") for name in LISTS]
    try:
        writers = [csv.DictWriter(f, fieldnames=["email", "name", "organisation", "role"]) for f in files]
        for w in writers:
            w.writeheader()
        for i, person in enumerate(people(recipients)):
            home = 0 if i % 10 < 8 else 1 + i % 2  # 80% key partners, 10% each of the others
            writers[home].writerow(person)
            if i % 50 == 0:
                writers[(home + 1) % 3].writerow({**person, "email": person["email"].upper()})
    finally:
        for f in files:
            f.close()
    return root / "config"


# ---------------------------------------------------------------------------
# smtp-sink
# ---------------------------------------------------------------------------


@dataclass
class Sink:
    """``smtp-sink -c`` on a port, its message counter read as it changes."""

    port: int
    process: subprocess.Popen[bytes] | None = None
    count: int = 0
    last_change: float = 0.0
    changed: threading.Condition = field(default_factory=threading.Condition)
    history: list[tuple[float, int]] = field(default_factory=list)  # (when, count) at each change

    def start(self) -> None:
        """Start the sink and wait until it accepts connections."""
        binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        if not Path(binary).exists():
            raise SystemExit("smtp-sink not found: DEBIAN_FRONTEND=noninteractive apt-get install -y postfix")
        command = [binary, "-c", "-m", "512"]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]
        self.process = subprocess.Popen([*command, f"127.0.0.1:{self.port}", "1000"], stdout=subprocess.PIPE)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.05)
        raise SystemExit(f"smtp-sink did not listen on port {self.port}")

    def _read(self) -> None:
        assert self.process and self.process.stdout
        pattern = re.compile(rb"mesg=(\d+)")
        while True:
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                return
            found = pattern.findall(chunk)
            if found:
                with self.changed:
                    self.count, self.last_change = int(found[-1]), time.perf_counter()
                    self.history.append((self.last_change, self.count))
                    self.changed.notify_all()

    def wait_for(self, count: int, *, idle_timeout: float, progress: bool = False) -> tuple[int, float]:
        """Block until the counter reaches ``count`` (or stops moving for ``idle_timeout`` s);
        the counter and when it last changed."""
        shown = 0.0
        with self.changed:
            while self.count < count:
                before = self.count
                self.changed.wait(timeout=1.0)
                if progress and time.monotonic() - shown > 5:
                    shown = time.monotonic()
                    print(f"  ... sink has {self.count:,} messages", file=sys.stderr, flush=True)
                if self.count == before and time.perf_counter() - self.last_change > idle_timeout:
                    break
            return self.count, self.last_change

    def reached(self, count: int) -> float | None:
        """When the counter first reached ``count``, if it did."""
        with self.changed:
            return next((when for when, seen in self.history if seen >= count), None)

    def stop(self) -> None:
        """Stop the sink."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------
# The naive baseline
# ---------------------------------------------------------------------------


def naive_loop(env: dict[str, str], port: int, limit: int) -> tuple[int, float]:
    """One process, no queue, no ledger: for each recipient render the template with plain
    Jinja2, build an ``EmailMessage`` and send it with ``smtplib`` over one connection.
    How many it sent and how long that took. Loading the config is not timed, and only the
    ``limit`` recipients it sends to are kept in memory (a smaller heap makes the loop's
    garbage collections cheaper, so this favours the baseline)."""
    from notifier import timeline
    from notifier.audience import resolve
    from notifier.config import Settings, load_config
    from notifier.rendering import Renderer, format_date, format_time
    from notifier.tokens import unsubscribe_url

    settings = Settings.from_env(env)
    config = load_config(settings.config_dir)
    consultation = config.consultation(CONSULTATION)
    event = timeline.event(consultation, EVENT, config.tz)
    recipients = resolve(config.lists, event.audience).recipients[:limit]
    context = Renderer(config).context(consultation, event)  # the same values the real path renders
    sender, reply_to, templates = config.email.from_, config.email.reply_to, config.templates
    del config, consultation, event
    gc.collect()

    def environment(autoescape: bool) -> jinja2.Environment:
        jenv = jinja2.Environment(
            loader=jinja2.FileSystemLoader(templates),
            autoescape=autoescape,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        jenv.filters.update(date=format_date, time=format_time)
        return jenv

    plain = environment(False).get_template(f"{EVENT}/email.j2")
    rich = environment(True).get_template(f"{EVENT}/email.j2")

    def block(template: jinja2.Template, name: str, variables: dict[str, object]) -> str:
        return "".join(template.blocks[name](template.new_context(variables))).strip()

    started = time.perf_counter()
    smtp = smtplib.SMTP("127.0.0.1", port)
    for recipient in recipients:
        url = unsubscribe_url(settings.public_url, settings.secret_key(), recipient.key)
        variables = {**context, "recipient": recipient.context(), "unsubscribe_url": url}
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = Address(display_name=recipient.name or "", addr_spec=recipient.email)
        msg["Subject"] = block(plain, "subject", variables)
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = make_msgid(domain="pcc.example")
        if reply_to:
            msg["Reply-To"] = reply_to
        msg["List-Unsubscribe"] = f"<{url}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg.set_content(block(plain, "text", variables) + "\n")
        msg.add_alternative(block(rich, "html", variables) + "\n", subtype="html")
        smtp.send_message(msg)
    smtp.quit()
    return len(recipients), time.perf_counter() - started


def run_naive_loop(env: dict[str, str], port: int, limit: int) -> tuple[int, float]:
    """:func:`naive_loop` in a process of its own (as a naive script would run)."""
    code = (
        f"import json, os, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import fanout; "
        f"print(json.dumps(fanout.naive_loop(dict(os.environ), {port}, {limit})))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"naive loop failed:\n{done.stderr}")
    sent, took = json.loads(done.stdout.strip().splitlines()[-1])
    return int(sent), float(took)


# ---------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------


def worker_processes(supervisor: psutil.Process, expected: int) -> list[psutil.Process]:
    """The ``notifier worker`` processes doing the work (the supervisor's children when it
    has several, else the supervisor itself)."""
    if expected == 1:
        return [supervisor]
    return [p for p in supervisor.children(recursive=True) if "worker" in " ".join(p.cmdline())]


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (not idle or waiting on I/O) since boot."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def children_cpu() -> float:
    """CPU seconds used so far by this process' children that have been waited for."""
    times = os.times()
    return times.children_user + times.children_system


def peak_rss_mb(pid: int) -> float:
    """``VmHWM`` (peak resident set) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    """User + system CPU seconds each process has used so far."""
    out = {}
    for name, proc in processes.items():
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            out[name] = times.user + times.system
    return out


def system_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    """System (kernel) CPU seconds each process has used so far: for processes talking over
    loopback TCP, much of it is the kernel moving their bytes (both ends' work, often)."""
    out = {}
    for name, proc in processes.items():
        with contextlib.suppress(psutil.Error):
            out[name] = proc.cpu_times().system
    return out


def final_counts(client: redis.Redis, timeout: float) -> dict[str, int]:
    """The ledger's counts by ``channel|status`` once nothing is pending (or ``timeout`` passed)."""
    occurrence = client.get(f"notifier:fired:{CONSULTATION}:{EVENT}")
    deadline = time.monotonic() + timeout
    while True:
        counts = client.hgetall(f"notifier:cnt:{text(occurrence)}") if occurrence else {}
        ledger = {text(k): int(v) for k, v in counts.items() if int(v)}
        if not any(k.endswith("|pending") for k in ledger) or time.monotonic() > deadline:
            return ledger
        time.sleep(0.2)


def archived(data_dir: Path, expected: int, since: float, timeout: float) -> str:
    """How the consultation record kept up: the rows the workers' archivers wrote to the embedded
    SQLite record (``notifier.db`` under the data dir), and when they reached ``expected``,
    counted from ``since`` (the last e-mail accepted). Code without the record has no file."""
    path = data_dir / "notifier.db"
    if not path.exists():
        return "no consultation record (notifier.db) was written"
    import sqlite3

    deadline, rows = time.monotonic() + timeout, 0
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        while time.monotonic() < deadline:
            query = "SELECT count(*) FROM deliveries WHERE channel = 'email' AND status = 'sent'"
            rows = int(db.execute(query).fetchone()[0])
            if rows >= expected:
                return f"all {rows:,} sent e-mails in the record {time.perf_counter() - since:.1f} s after the last one"
            time.sleep(0.2)
    return f"only {rows:,} of {expected:,} sent e-mails in the record after {timeout:.0f} s"


def wait_alive(client: redis.Redis, count: int, timeout: float = 60) -> None:
    """Block until ``count`` workers have a heartbeat in Redis."""
    from notifier.broker import workers_alive

    deadline = time.monotonic() + timeout
    while len(workers_alive(client)) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"workers did not start within {timeout:.0f} s")
        time.sleep(0.1)


def wait_idle(processes: list[psutil.Process], timeout: float = 120) -> float:
    """Block until the workers have finished starting (loading the config and templates):
    their CPU time stops growing for a second. How long that took."""
    started = time.monotonic()
    before = sum(cpu_seconds({str(p.pid): p for p in processes}).values())
    while time.monotonic() - started < timeout:
        time.sleep(1.0)
        now = sum(cpu_seconds({str(p.pid): p for p in processes}).values())
        if now - before < 0.05 * len(processes):
            break
        before = now
    return time.monotonic() - started


def py_spy(pids: list[int], out: Path, seconds: int) -> list[subprocess.Popen[bytes]]:
    """Start ``py-spy record`` on each worker, sampling the thread that holds the GIL (so
    time is CPU time in Python, not waiting on sockets): collapsed stacks (``worker-<pid>.txt``, one
    line per stack and its sample count) under ``out``, for ``flamegraph.pl`` or grep."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(seconds),
                "--rate",
                "250",
                "--nonblocking",
                "--gil",
                "--format",
                "raw",
                "--output",
                str(out / f"worker-{pid}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main() -> None:
    """Build the project, run the baseline, run the fan-out, print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=3, help="3 x 1 measured best here (RESULTS round 5)")
    parser.add_argument("--threads", type=int, default=1, help="per process (8 is the CLI's)")
    parser.add_argument("--baseline-recipients", type=int, default=10_000, help="0 to skip the baseline")
    parser.add_argument("--redis-url", default=os.environ.get("NOTIFIER_REDIS_URL", "redis://127.0.0.1:6379/15"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary project directory")
    parser.add_argument("--py-spy", type=Path, metavar="DIR", help="record py-spy stacks of each worker under DIR")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="notifier-bench-"))
    sink = Sink(free_port())
    supervisor: subprocess.Popen[bytes] | None = None
    try:
        started = time.perf_counter()
        config_dir = make_project(root, args.recipients)
        print(f"project: {root} ({args.recipients:,} recipients, built in {time.perf_counter() - started:.1f} s)")
        env = {
            **os.environ,
            "NOTIFIER_CONFIG": str(config_dir),
            "NOTIFIER_DATA_DIR": str(root / "var"),
            "NOTIFIER_REDIS_URL": args.redis_url,
            "NOTIFIER_SMTP_URL": f"smtp://127.0.0.1:{sink.port}",
            "NOTIFIER_SECRET_KEY": "bench-secret-key-not-for-production",
            "NOTIFIER_PUBLIC_URL": "https://notify.pcc.example",
        }
        client = redis.Redis.from_url(args.redis_url)
        client.flushdb()
        redis_version = client.info("server")["redis_version"]
        sink.start()

        baseline_rate = None
        if args.baseline_recipients:
            sent, took = run_naive_loop(env, sink.port, args.baseline_recipients)
            sink.wait_for(sent, idle_timeout=5)
            baseline_rate = sent / took
            print(
                f"naive loop: {sent:,} e-mails in {took:.2f} s = {baseline_rate:,.0f}/s "
                f"(extrapolated to {args.recipients:,}: {args.recipients / baseline_rate:.0f} s)"
            )
        offset = sink.count

        command = [
            sys.executable,
            "-m",
            "notifier",
            "worker",
            "--processes",
            str(args.processes),
            "--threads",
            str(args.threads),
        ]
        supervisor = subprocess.Popen(
            command,
            env=env,
            cwd=root,
            start_new_session=True,
            stderr=open(root / "worker.log", "wb"),  # noqa: SIM115 - the child holds it until the run ends
        )
        wait_alive(client, args.processes)
        workers = worker_processes(psutil.Process(supervisor.pid), args.processes)
        warm = wait_idle(workers)
        print(
            f"workers: {len(workers)} processes x {args.threads} threads, pids {[w.pid for w in workers]}, "
            f"ready in {warm:.1f} s (not timed)"
        )
        spies = py_spy([w.pid for w in workers], args.py_spy, 60) if args.py_spy else []

        watched = {f"worker {w.pid}": w for w in workers}
        watched["redis-server"] = psutil.Process(int(client.info("server")["process_id"]))
        assert sink.process is not None
        watched["smtp-sink"] = psutil.Process(sink.process.pid)
        cpu_before, send_cpu, machine_before = cpu_seconds(watched), children_cpu(), busy_seconds()
        system_before = system_seconds(watched)
        started = time.perf_counter()
        sent_cmd = subprocess.run(
            [sys.executable, "-m", "notifier", "send", CONSULTATION, EVENT, "--again"],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        send_took, send_cpu = time.perf_counter() - started, children_cpu() - send_cpu
        if sent_cmd.returncode != 0:
            raise SystemExit(f"notifier send failed ({sent_cmd.returncode}):\n{sent_cmd.stdout}{sent_cmd.stderr}")
        print(f"notifier send: {sent_cmd.stdout.strip()} ({send_took:.2f} s)")
        count, last = sink.wait_for(offset + args.recipients, idle_timeout=60, progress=True)
        accepted = count - offset
        took = last - started
        rate = accepted / took
        rss = {w.pid: peak_rss_mb(w.pid) for w in workers}
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_seconds(watched).items()}
        system = {k: v - system_before.get(k, 0.0) for k, v in system_seconds(watched).items()}
        cpu["notifier send"] = send_cpu
        others = busy_seconds() - machine_before - sum(cpu.values())
        for spy in spies:
            spy.wait()

        ledger = final_counts(client, timeout=30)
        record = archived(root / "var", accepted, last, timeout=120)
        time.sleep(1.0)  # anything sent twice would reach the sink now
        extra = sink.count - offset - accepted

        print()
        print(f"machine: {machine()}, Redis {redis_version}")
        print(
            f"fan-out: {accepted:,} e-mails accepted by smtp-sink in {took:.2f} s = {rate:,.0f} e-mails/s "
            f"(from `notifier send` to the last message accepted)"
        )
        after = took - send_took
        print(
            f"  of which `notifier send` (load and validate the config, fire) {send_took:.2f} s, then the workers "
            f"{after:.2f} s = {accepted / after:,.0f} e-mails/s"
        )
        first, most = sink.reached(offset + 1), sink.reached(offset + int(accepted * 0.99))
        if first is not None and most is not None:
            print(
                f"  first e-mail accepted {first - started:.2f} s after `notifier send` started; "
                f"the last 1% took {last - most:.2f} s"
            )
        print(f"ledger: {ledger}; messages after the last expected: {extra}")
        print(f"record: {record}")
        print(
            "CPU seconds in that time: "
            + ", ".join(f"{k} {v:.1f}" + (f" (system {system[k]:.1f})" if k in system else "") for k, v in cpu.items())
            + f", anything else on the machine {max(others, 0.0):.1f} "
            f"(of {took * (os.cpu_count() or 1):.0f} core-seconds)"
        )
        print("worker peak RSS (VmHWM): " + ", ".join(f"pid {p}: {mb:.0f} MB" for p, mb in rss.items()))
        ok_rate = rate >= TARGET_RATE and accepted == args.recipients
        print(f"target >= {TARGET_RATE:,.0f}/s: {'met' if ok_rate else 'NOT met'}")
        if baseline_rate:
            ratio = rate / baseline_rate
            verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
            print(
                f"naive loop: {baseline_rate:,.0f}/s (measured on {args.baseline_recipients:,}, extrapolated); "
                f"ratio {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x: {verdict})"
            )
        worst = max(rss.values())
        print(
            f"worker RSS target < {TARGET_RSS_MB:.0f} MB: {'met' if worst < TARGET_RSS_MB else 'NOT met'} "
            f"(worst {worst:.0f} MB)"
        )
    finally:
        if supervisor is not None and supervisor.poll() is None:
            supervisor.send_signal(signal.SIGTERM)
            try:
                supervisor.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(supervisor.pid, signal.SIGKILL)
        sink.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
