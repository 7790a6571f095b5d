"""The one retry policy (notifier/retry.py): when a transient failure is tried again, when
it is given up, and that the queue's own retries follow the same policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dramatiq
import dramatiq.broker
import pytest
from dramatiq.middleware import Retries

from notifier.actors import declare
from notifier.broker import make_broker
from notifier.config import Settings
from notifier.retry import CAP_S, MESSAGE_MIN_BACKOFF_MS, MESSAGE_RETRIES, RetryPolicy
from notifier.runtime import Runtime

POLICY = RetryPolicy(base_s=10.0, max_attempts=8)


def test_each_wait_doubles_from_the_base_within_the_jitter_up_to_an_hour() -> None:
    for attempt, nominal in [(1, 10.0), (2, 20.0), (3, 40.0), (9, 2560.0), (10, CAP_S), (30, CAP_S)]:
        waits = [POLICY.backoff(attempt) for _ in range(200)]
        assert all(0.8 * nominal <= w <= 1.2 * nominal for w in waits), (attempt, min(waits), max(waits))
        assert max(waits) - min(waits) > 0.1 * nominal, "jittered, so failures together do not return together"


def test_the_far_sides_retry_after_wins_when_it_is_longer() -> None:
    assert POLICY.retry_in(1, 600.0) == 600.0
    assert 8.0 <= POLICY.retry_in(1, 2.0) <= 12.0
    assert 8.0 <= POLICY.retry_in(1, None) <= 12.0


def test_a_transient_failure_on_the_last_attempt_gives_up() -> None:
    assert not POLICY.gives_up(7)
    assert POLICY.gives_up(8) and POLICY.gives_up(9)


def test_the_settings_set_the_base_the_attempts_and_the_breakers_first_pause() -> None:
    policy = RetryPolicy.from_settings(
        Settings.from_env({"NOTIFIER_RETRY_BASE_SECONDS": "2", "NOTIFIER_MAX_ATTEMPTS": "3"})
    )
    assert (policy.base_s, policy.max_attempts, policy.breaker_base_s) == (2.0, 3, 6.0)


@pytest.fixture
def broker(redis_url: str, tmp_path: Path) -> Iterator[dramatiq.Broker]:
    settings = Settings.from_env({"NOTIFIER_REDIS_URL": redis_url, "NOTIFIER_DATA_DIR": str(tmp_path / "var")})
    previous = dramatiq.broker.global_broker
    made = make_broker(settings, worker_id="retry-policy")
    try:
        yield made
    finally:
        made.close()
        dramatiq.broker.global_broker = previous


def test_every_actor_retries_its_messages_by_the_one_policy(broker: dramatiq.Broker) -> None:
    def no_runtime() -> Runtime:
        raise AssertionError("not run")

    actors = declare(broker, no_runtime)
    [retries] = [m for m in broker.middleware if isinstance(m, Retries)]
    for actor in (actors.fire, actors.deliver):
        effective = {
            name: actor.options.get(name, getattr(retries, name))
            for name in ("max_retries", "min_backoff", "max_backoff")
        }
        assert effective == {
            "max_retries": MESSAGE_RETRIES,
            "min_backoff": MESSAGE_MIN_BACKOFF_MS,
            "max_backoff": int(CAP_S * 1000),
        }, actor.actor_name
