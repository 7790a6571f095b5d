"""A worker in the process (``send --wait``, ``notifier worker``, ``responses import``) that is
told to stop while it is still starting stops at once, and leaves no thread behind."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest

from notifier.config import Settings
from notifier.service import Service
from tests.conftest import Project, SmtpServer


class CtrlCAtBoot(dramatiq.Middleware):
    """Presses Ctrl-C in this process as soon as the worker has started its threads (before
    they may have begun their loops), and keeps the worker to look at afterwards."""

    def __init__(self) -> None:
        self.worker: Any = None
        self.not_running_when_stopped: list[str] = []

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self.worker = worker
        signal.raise_signal(signal.SIGINT)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        threads = [*worker.consumers.values(), *worker.workers]
        self.not_running_when_stopped = [t.name for t in threads if not t.running]


@pytest.fixture
def env(project: Project, redis_url: str, smtp_server: SmtpServer) -> dict[str, str]:
    project.env.update({"NOTIFIER_REDIS_URL": redis_url, "NOTIFIER_SMTP_URL": smtp_server.url})
    return project.env


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt here, even where the tests were started with it ignored;
    threads are switched as often as CPython allows, so that every thread start races."""
    previous, interval = signal.signal(signal.SIGINT, signal.default_int_handler), sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c")
def test_ctrl_c_while_a_worker_starts_stops_every_thread_it_started(env: dict[str, str]) -> None:
    for _ in range(10):
        service = Service(Settings.from_env(env))
        boot = CtrlCAtBoot()
        service.broker.add_middleware(boot)
        try:
            with pytest.raises(KeyboardInterrupt), service.worker(threads=8):
                pytest.fail("the block of a worker stopped while starting is not run")
        finally:
            service.close()
        assert boot.not_running_when_stopped == [], "stopped before every thread had begun its loop"
        threads = [*boot.worker.consumers.values(), *boot.worker.workers]
        assert threads, "the worker had started its threads"
        assert not [t for t in threads if t.is_alive()], "every thread the worker started has ended"


def test_a_signal_the_process_ignores_is_still_ignored_while_a_worker_starts(env: dict[str, str]) -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under `nohup … &`
    service = Service(Settings.from_env(env))
    boot = CtrlCAtBoot()
    service.broker.add_middleware(boot)
    try:
        with service.worker(threads=2) as worker:
            assert all(t.running for t in worker.consumers.values())
            assert all(t.running for t in worker.workers)
    finally:
        service.close()
        signal.signal(signal.SIGINT, previous)
    assert boot.worker is worker
