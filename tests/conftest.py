"""Shared fixtures: real Redis, a real SMTP server, and a copy of the example project.

Redis: the machine's server on 127.0.0.1:6379 (a dedicated db, flushed per test) when it
answers, otherwise notifier's own embedded server, so the suite passes on a machine with
only Python.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import redis
from aiosmtpd.controller import Controller

from notifier.broker import EmbeddedRedis
from tests.record_fixtures import blank_database, database, postgres, postgres_record, store  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent
TEST_DB = 11


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A base Redis URL (no db): the local server if it answers, else an embedded one.

    ``NOTIFIER_TEST_REDIS=embedded`` always uses an embedded server (so two test runs on one
    machine cannot flush each other's database); a ``redis://host:port`` value uses that server.
    """
    chosen = os.environ.get("NOTIFIER_TEST_REDIS", "")
    if chosen.startswith("redis://"):
        yield chosen.rstrip("/")
        return
    try:
        if chosen == "embedded":
            raise OSError("embedded Redis asked for")
        client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=0.5)
        client.ping()
        client.close()
        yield "redis://127.0.0.1:6379"
        return
    except (redis.RedisError, OSError):
        pass
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    url = embedded.acquire()
    yield url
    embedded.shutdown()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """A Redis URL on an empty database, flushed again afterwards."""
    url = f"{redis_server}/{TEST_DB}" if redis_server.startswith("redis://") else f"{redis_server}?db={TEST_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the test database."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@dataclass
class Project:
    """A copy of the bundled example in a temporary folder, and the env to run notifier on it."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def templates(self) -> Path:
        return self.root / "templates"

    @property
    def data(self) -> Path:
        return self.root / "var"

    def run(
        self, *args: str, timeout: float = 120, check: bool = False, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``notifier ARGS`` in a subprocess on this project (``stdin``: what it reads)."""
        result = subprocess.run(
            [sys.executable, "-m", "notifier", *args],
            cwd=self.root,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"notifier {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def settings_env(self) -> dict[str, str]:
        """Only the NOTIFIER_* part of the env."""
        return {k: v for k, v in self.env.items() if k.startswith("NOTIFIER_")}

    def write(self, relative: str, text: str) -> Path:
        """Replace a file of the project."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """The example config and templates, copied, with NOTIFIER_* pointing at the copy."""
    root = tmp_path / "project"
    shutil.copytree(ROOT / "config", root / "config")
    shutil.copytree(ROOT / "templates", root / "templates")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env.update(
        {
            "NOTIFIER_CONFIG": str(root / "config"),
            "NOTIFIER_DATA_DIR": str(root / "var"),
            "NOTIFIER_SECRET_KEY": "test-secret-key",
            "NOTIFIER_PUBLIC_URL": "https://notify.pcc.example",
            "NOTIFIER_RETRY_BASE_SECONDS": "0.2",
            "PYTHONPATH": str(ROOT),
        }
    )
    return Project(root, env)


# ---------------------------------------------------------------------------
# SMTP
# ---------------------------------------------------------------------------


class ScriptedHandler:
    """An aiosmtpd handler that keeps what it accepts and answers scripted errors.

    ``script[address]`` is a list of replies (``"451 4.7.1 try later"``) used one per
    attempt for that recipient before it is accepted; a reply repeated forever can be had
    with ``always[address]``. ``data_script[address]`` does the same at the end of DATA,
    after the whole message was received (those messages are kept in ``refused``).
    ``delay`` slows every DATA down, to give a test time to act mid-delivery.
    """

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.refused: list[EmailMessage] = []
        self.script: dict[str, list[str]] = {}
        self.always: dict[str, str] = {}
        self.data_script: dict[str, list[str]] = {}
        self.rcpt_attempts: dict[str, int] = {}
        self.delay = 0.0
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        key = address.lower()
        with self.lock:
            self.rcpt_attempts[key] = self.rcpt_attempts.get(key, 0) + 1
            if key in self.always:
                return self.always[key]
            if self.script.get(key):
                return self.script[key].pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        message = message_from_bytes(envelope.content, policy=policy.default)
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                if self.data_script.get(rcpt.lower()):
                    self.refused.append(message)
                    return self.data_script[rcpt.lower()].pop(0)
            self.messages.append(message)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted"

    def count(self) -> int:
        """How many messages were accepted."""
        with self.lock:
            return len(self.messages)

    def recipients(self) -> list[str]:
        """Every accepted envelope recipient, lower-cased, once per message."""
        with self.lock:
            return [r.lower() for _, rcpts in self.envelopes for r in rcpts]

    def to(self, address: str) -> list[EmailMessage]:
        """Messages accepted for ``address``."""
        with self.lock:
            return [
                m
                for m, (_, rcpts) in zip(self.messages, self.envelopes, strict=True)
                if address.lower() in (r.lower() for r in rcpts)
            ]


@dataclass
class SmtpServer:
    """A running aiosmtpd server on loopback."""

    handler: ScriptedHandler
    port: int
    controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on a free loopback port."""
    server = SmtpServer(ScriptedHandler(), free_port())
    server.start()
    yield server
    server.stop()
