"""``/healthz`` (JSON, for load balancers and container healthchecks) and ``/metrics`` (Prometheus).

Both read Redis through a client whose calls fail fast and are not retried, off the event
loop, under a hard deadline (:data:`HEALTH_DEADLINE_S`): whatever the network does, they
answer within seconds, and say Redis is down rather than hang.

Metrics (all gauges): ``notifier_redis_up``, and while Redis answers
``notifier_redis_latency_seconds``, ``notifier_workers_alive``, ``notifier_scheduler_leader``
and ``notifier_suppressed_addresses{reason=...}``. They are read from Redis at scrape time by
:class:`RedisCollector` and written by ``prometheus_client``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import anyio
import anyio.to_thread
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from notifier import __version__
from notifier.broker import NAMESPACE, workers_alive
from notifier.ledger import Ledger
from notifier.web.state import describe, state

#: The Redis key a scheduler holds while it is the leader (its id as the value).
LEADER_KEY = f"{NAMESPACE}:scheduler:leader"
#: Hard limit on one /healthz or /metrics, whatever the network does (DNS included).
HEALTH_DEADLINE_S = 3.0
#: What ``?require=`` may name.
REQUIRABLE = ("redis", "workers", "scheduler")
NO_STORE = {"Cache-Control": "no-store"}

#: A health report and the number of suppressed addresses by reason.
Reading = tuple[dict[str, Any], dict[str, int]]


def _decode(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def health(client: redis.Redis) -> dict[str, Any]:
    """Ping Redis and read who is alive. Blocking; at most ~2 timeouts long with a bounded client."""
    report = _unknown(None)
    try:
        started = time.perf_counter()
        client.ping()
        report["redis"] = {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
        alive = sorted(workers_alive(client))
        report["workers"] = {"alive": alive, "count": len(alive)}
        report["scheduler"] = {"leader": _decode(client.get(LEADER_KEY))}
    except (redis.RedisError, OSError) as exc:
        report["redis"]["error"] = describe(exc)
    return report


def _unknown(error: str | None) -> dict[str, Any]:
    """A health report for when Redis did not answer: nobody known to be alive."""
    redis_part: dict[str, Any] = {"ok": False, "latency_ms": None}
    if error:
        redis_part["error"] = error
    return {"redis": redis_part, "workers": {"alive": [], "count": 0}, "scheduler": {"leader": None}}


def _required(request: Request) -> set[str]:
    """What ``?require=a,b&require=c`` names."""
    return {
        name.strip() for value in request.query_params.getlist("require") for name in value.split(",") if name.strip()
    }


async def healthz(request: Request) -> Response:
    """GET ``/healthz``: 200 with JSON about Redis, workers and the scheduler; 503 when Redis
    does not answer or something named in ``?require=workers,scheduler`` is missing."""
    required = _required(request)
    unknown = sorted(required - set(REQUIRABLE))
    if unknown:
        return JSONResponse(
            {"error": f"unknown in require: {', '.join(unknown)} (known: {', '.join(REQUIRABLE)})"},
            status_code=400,
        )
    try:
        with anyio.fail_after(HEALTH_DEADLINE_S):
            report = await anyio.to_thread.run_sync(health, state(request).checker, abandon_on_cancel=True)
    except TimeoutError:
        report = _unknown(f"no answer within {HEALTH_DEADLINE_S:g} s")
    failing = []
    if not report["redis"]["ok"]:
        failing.append("redis")
    if "workers" in required and not report["workers"]["count"]:
        failing.append("workers")
    if "scheduler" in required and not report["scheduler"]["leader"]:
        failing.append("scheduler")
    body = {"status": "fail" if failing else "ok", "failing": failing, "version": __version__, **report}
    return JSONResponse(body, status_code=503 if failing else 200, headers=NO_STORE)


def families(report: dict[str, Any], suppressed: dict[str, int]) -> list[Metric]:
    """The metrics for a :func:`health` report and suppression counts by reason."""
    up = report["redis"]["ok"]
    found: list[Metric] = [
        GaugeMetricFamily("notifier_redis_up", "Whether Redis answered the last ping (1) or not (0).", 1 if up else 0)
    ]
    if not up:
        return found
    by_reason = GaugeMetricFamily(
        "notifier_suppressed_addresses", "Addresses no e-mail goes to, by reason.", labels=["reason"]
    )
    for reason in sorted(suppressed):
        by_reason.add_metric([reason], suppressed[reason])
    return [
        *found,
        GaugeMetricFamily(
            "notifier_redis_latency_seconds", "Round trip of a Redis PING.", report["redis"]["latency_ms"] / 1000
        ),
        GaugeMetricFamily(
            "notifier_workers_alive", "Workers that sent a heartbeat recently.", report["workers"]["count"]
        ),
        GaugeMetricFamily(
            "notifier_scheduler_leader",
            "Whether a scheduler holds the leader lock.",
            1 if report["scheduler"]["leader"] else 0,
        ),
        by_reason,
    ]


def read(checker: redis.Redis, counting: Ledger) -> Reading:
    """A health report and suppression counts from Redis (blocking; bounded by ``checker``'s
    timeouts). Redis failing half-way counts as Redis not answering."""
    report = health(checker)
    by_reason: dict[str, int] = {}
    if not report["redis"]["ok"]:
        return report, by_reason
    try:
        for reason in counting.suppressed().values():
            by_reason[reason] = by_reason.get(reason, 0) + 1
    except (redis.RedisError, OSError):
        return _unknown("no answer"), {}
    return report, by_reason


class RedisCollector(Collector):
    """A Prometheus collector that reads Redis through ``checker`` at every scrape (nothing
    is cached between scrapes, so the numbers are always Redis's own)."""

    def __init__(self, checker: redis.Redis) -> None:
        self.checker = checker
        self.counting = Ledger(checker)

    def collect(self) -> Iterable[Metric]:
        """The metrics as of now."""
        return families(*read(self.checker, self.counting))


class _Snapshot(Collector):
    """A collector of one given reading (for :func:`exposition` and when Redis timed out)."""

    def __init__(self, report: dict[str, Any], suppressed: dict[str, int]) -> None:
        self.reading = report, suppressed

    def collect(self) -> Iterable[Metric]:
        """The metrics of the reading."""
        return families(*self.reading)


def metrics_registry(checker: redis.Redis) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one, which also holds process
    metrics and would be shared by every app in a process) reading Redis through ``checker``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(checker))
    return registry


def exposition(report: dict[str, Any], suppressed: dict[str, int]) -> str:
    """Prometheus text format (0.0.4) for a :func:`health` report and suppression counts."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(report, suppressed))
    return generate_latest(registry).decode()


async def metrics(request: Request) -> Response:
    """GET ``/metrics``: the Prometheus text exposition, read from Redis now."""
    try:
        with anyio.fail_after(HEALTH_DEADLINE_S):
            body = await anyio.to_thread.run_sync(generate_latest, state(request).registry, abandon_on_cancel=True)
    except (TimeoutError, redis.RedisError, OSError):
        body = exposition(_unknown("no answer"), {}).encode()
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4, headers=NO_STORE)
