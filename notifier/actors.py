"""Thin Dramatiq actors: load by id, call the core in :mod:`notifier.delivery`, let errors raise.

Messages carry ids only (an occurrence id, a channel name, recipient addresses), never
objects: a message that waits in Redis while the config changes still means the same thing.

* ``fire(occurrence_id)`` fans an occurrence out into ledger records and enqueues
  ``deliver`` messages in batches of :data:`notifier.delivery.BATCH`.
* ``deliver(occurrence_id, channel, recipients)`` sends a batch; when some deliveries are
  to be retried it raises ``dramatiq.Retry`` with the delay :mod:`notifier.retry` gives
  (its backoff, or the far side's ``Retry-After``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
from dramatiq.middleware import CurrentMessage

from notifier import acknowledgement, delivery, timeline
from notifier.audience import Recipient
from notifier.broker import NAMESPACE, NotifierBroker
from notifier.channels import registry
from notifier.compose import compose
from notifier.errors import ConfigError, UsageError
from notifier.ledger import FANNED_OUT, Occurrence
from notifier.runtime import Runtime

log = logging.getLogger(__name__)

QUEUE = "notifier"
#: Longest one message may run; docker compose's stop_grace_period is set above this.
TIME_LIMIT_MS = 240_000
MAX_AGE_MS = 7 * 24 * 3600 * 1000
#: How often each worker looks for deliveries a lost message left behind (:class:`Sweeper`).
SWEEP_EVERY_S = 15.0
SWEEP_LOCK = f"{NAMESPACE}:sweep"
SWEEP_LOCK_MS = 120_000
#: A delayed message still held this long after its time has been lost by its worker.
LOST_AFTER_S = 60.0
REFIRE_AFTER_S = 600.0


@dataclass(frozen=True)
class Actors:
    """The actors declared on one broker."""

    fire: Any
    deliver: Any


class Warmup(dramatiq.Middleware):
    """Loads the config and templates in the background as soon as a worker boots, so the
    first message does not wait for them (at 100,000 stakeholders that takes seconds)."""

    def __init__(self, runtime: Callable[[], Runtime]) -> None:
        self.runtime = runtime

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        """Start loading."""
        threading.Thread(target=self._load, name="notifier-warmup", daemon=True).start()

    def _load(self) -> None:
        try:
            rt = self.runtime()
            config, renderer = rt.config, rt.renderer
            # Render one e-mail of each e-mailing event so its templates are compiled now,
            # once, rather than by every worker thread at once on the first batch.
            probe = Recipient(email="warm-up@example.invalid", name="Warm Up", organisation="Warm-up")
            for consultation in config.consultations.values():
                for event in timeline.events(consultation, config.tz):
                    for channel in [c for c in event.channels if registry.per_recipient(c)]:
                        context = renderer.context(consultation, event)
                        with contextlib.suppress(ConfigError):  # the probe lacks a key the template uses
                            compose(
                                renderer,
                                config,
                                consultation,
                                event,
                                channel,
                                probe,
                                context=context,
                                unsubscribe_url="https://example.invalid/u",
                            )
        except Exception as exc:  # a message that needs the config reports the problem itself
            log.warning("could not load the config and templates at start: %s", exc)


class Sweeper(dramatiq.Middleware):
    """Sends again what a lost message would have sent, from the workers themselves.

    A message can be lost while its deliveries wait: Dramatiq acknowledges a failed message
    whose retry could not be enqueued, and drops the delayed messages a worker holds when
    its connection to Redis breaks. Every ``SWEEP_EVERY_S`` each worker looks at the
    occurrences of the last week that are unfinished; one that has not moved since its
    previous look is checked (by one worker at a time) against the messages Redis holds:
    a pending delivery that no message names and no live message claims gets a new
    ``deliver`` message (its stale claim freed), and an occurrence left unfanned with no
    ``fire`` message gets a new one. So no scheduler is needed for every delivery of a
    fired event to reach a final state once Redis is back.
    """

    def __init__(self, runtime: Callable[[], Runtime]) -> None:
        self.runtime = runtime
        self.actors: Actors | None = None  # set by declare() once the actors exist
        self._stop = threading.Event()
        self._seen: dict[str, dict[str, int]] = {}  # occurrence id -> its counts at the previous look
        self._refired: dict[str, float] = {}  # occurrence id -> when this worker last re-sent its fire

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        """Start looking."""
        self._stop.clear()
        threading.Thread(target=self._run, args=(broker,), name="notifier-sweeper", daemon=True).start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        """Stop looking."""
        self._stop.set()

    def _run(self, broker: NotifierBroker) -> None:
        while not self._stop.wait(SWEEP_EVERY_S):
            try:
                self.sweep(broker)
            except (redis.RedisError, OSError, ConfigError) as exc:  # Redis away, a config being edited
                log.warning("could not look for lost deliveries: %s", exc)
            except Exception:  # a message it cannot read, say: log it and look again next time
                log.exception("looking for lost deliveries failed")

    def sweep(self, broker: NotifierBroker) -> int:
        """One look; how many messages it sent."""
        rt = self.runtime()
        found = rt.ledger.unfinished(rt.config.consultations, within=MAX_AGE_MS / 1000)
        seen, self._seen = self._seen, {occurrence.id: counts for occurrence, counts in found}
        quiet = [occurrence for occurrence, counts in found if seen.get(occurrence.id) == counts]
        if not quiet or not rt.client.set(SWEEP_LOCK, rt.worker_id, nx=True, px=SWEEP_LOCK_MS):
            return 0
        try:
            return self._recover(rt, broker, quiet)
        finally:
            if rt.client.get(SWEEP_LOCK) == rt.worker_id.encode():
                rt.client.delete(SWEEP_LOCK)

    def _recover(self, rt: Runtime, broker: NotifierBroker, quiet: list[Occurrence]) -> int:
        """Send again what no message held in Redis would send for the ``quiet`` occurrences;
        how many messages that took."""
        assert self.actors is not None
        now = time.time()
        since_ms = (now - LOST_AFTER_S) * 1000  # a delayed message due before this is lost
        live = [m for m in broker.held_messages(QUEUE) if m.options.get("eta", now * 1000) > since_ms]
        named: dict[str, set[str]] = {}
        firing: set[str] = set()
        for message in live:
            if message.actor_name == "deliver":
                occurrence_id, channel, recipients = message.args
                named.setdefault(occurrence_id, set()).update(f"{channel}|{r}" for r in recipients)
            elif message.actor_name == "fire":
                firing.add(message.args[0])
        ids = {message.message_id for message in live}
        sent = 0
        for occurrence in quiet:
            if occurrence.state != FANNED_OUT:
                lost = occurrence.id not in firing and now - occurrence.fired_at.timestamp() > LOST_AFTER_S
                if lost and now - self._refired.get(occurrence.id, 0.0) > REFIRE_AFTER_S:
                    self._refired[occurrence.id] = now
                    self.actors.fire.send(occurrence.id)
                    log.warning("re-sent fire for %s: not fanned out and no fire message left", occurrence.id)
                    sent += 1
                continue
            by_channel: dict[str, list[str]] = {}
            for field in rt.ledger.orphaned(occurrence.id, named=named.get(occurrence.id, set()), live=ids):
                channel, _, recipient = field.partition("|")
                by_channel.setdefault(channel, []).append(recipient)
            for channel, recipients in by_channel.items():
                log.warning(
                    "re-sent %d %s deliveries of %s left with no message", len(recipients), channel, occurrence.id
                )
                for start in range(0, len(recipients), delivery.BATCH):
                    self.actors.deliver.send(occurrence.id, channel, recipients[start : start + delivery.BATCH])
                    sent += 1
        return sent


def declare(broker: dramatiq.Broker, runtime: Callable[[], Runtime]) -> Actors:
    """Declare notifier's actors on ``broker``; ``runtime()`` gives this process' Runtime."""
    broker.add_middleware(Warmup(runtime))
    sweeper = Sweeper(runtime)
    broker.add_middleware(sweeper)
    # Retries: the broker's middleware, as notifier.retry sets it.
    options = {"time_limit": TIME_LIMIT_MS, "max_age": MAX_AGE_MS, "throws": (ConfigError, UsageError)}

    def fire(occurrence_id: str) -> None:
        rt = runtime()
        message = CurrentMessage.get_current_message()
        owner = f"{rt.worker_id}|{message.message_id if message else uuid.uuid4().hex}"
        if not rt.ledger.take_fan_out(occurrence_id, owner=owner):
            return  # a second fire message (the scheduler's sweep, a second send): done or under way
        try:
            for batch in delivery.fan_out(rt, occurrence_id):  # each batch sent as soon as it is recorded
                deliver_actor.send(batch.occurrence_id, batch.channel, list(batch.recipients))
        except BaseException:
            rt.ledger.release_fan_out(occurrence_id, owner=owner)  # the retry, or the next fire, takes it
            raise
        rt.ledger.set_state(occurrence_id, FANNED_OUT)

    def deliver(occurrence_id: str, channel: str, recipients: list[str]) -> None:
        message = CurrentMessage.get_current_message()
        batch = delivery.Batch(occurrence_id, channel, tuple(recipients))
        rt = runtime()
        retry_in = delivery.deliver(rt, batch, message_id=message.message_id if message else None)
        acknowledgement.settle(rt.ledger, rt.store, occurrence_id)  # a thank-you sent: its response marked
        if retry_in is not None:
            raise dramatiq.Retry(f"{channel} deliveries to retry", delay=int(retry_in * 1000))

    fire_actor = dramatiq.Actor(
        fire, broker=broker, actor_name="fire", queue_name=QUEUE, priority=0, options=dict(options)
    )
    deliver_actor = dramatiq.Actor(
        deliver, broker=broker, actor_name="deliver", queue_name=QUEUE, priority=10, options=dict(options)
    )
    sweeper.actors = Actors(fire=fire_actor, deliver=deliver_actor)
    return sweeper.actors
