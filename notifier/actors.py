"""Thin Dramatiq actors: load by id, call the core in :mod:`notifier.delivery`, let errors raise.

Messages carry ids only (an occurrence id, a channel name, recipient addresses), never
objects: a message that waits in Redis while the config changes still means the same thing.

* ``fire(occurrence_id)`` fans an occurrence out into ledger records and enqueues
  ``deliver`` messages in batches of :data:`notifier.delivery.BATCH`.
* ``deliver(occurrence_id, channel, recipients)`` sends a batch; when some deliveries are
  to be retried it raises ``dramatiq.Retry`` with the delay the channel asked for (its
  backoff, or the far side's ``Retry-After``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from notifier import delivery, timeline
from notifier.audience import Recipient
from notifier.config import EMAIL_CHANNEL
from notifier.errors import ConfigError, UsageError
from notifier.runtime import Runtime

log = logging.getLogger(__name__)

QUEUE = "notifier"
#: Longest one message may run; docker compose's stop_grace_period is set above this.
TIME_LIMIT_MS = 240_000
MAX_AGE_MS = 7 * 24 * 3600 * 1000
MAX_RETRIES = 100  # the ledger gives up per delivery (NOTIFIER_MAX_ATTEMPTS) long before this


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
                    if EMAIL_CHANNEL in event.channels:
                        context = renderer.context(consultation, event)
                        with contextlib.suppress(ConfigError):  # the probe lacks a key the template uses
                            renderer.email(event, probe, context=context, unsubscribe_url="https://example.invalid/u")
        except Exception as exc:  # a message that needs the config reports the problem itself
            log.warning("could not load the config and templates at start: %s", exc)


def declare(broker: dramatiq.Broker, runtime: Callable[[], Runtime]) -> Actors:
    """Declare notifier's actors on ``broker``; ``runtime()`` gives this process' Runtime."""
    broker.add_middleware(Warmup(runtime))
    options = {"time_limit": TIME_LIMIT_MS, "max_age": MAX_AGE_MS, "max_retries": MAX_RETRIES,
               "min_backoff": 1_000, "max_backoff": 3_600_000, "throws": (ConfigError, UsageError)}

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
        rt.ledger.set_state(occurrence_id, "fanned-out")

    def deliver(occurrence_id: str, channel: str, recipients: list[str]) -> None:
        message = CurrentMessage.get_current_message()
        batch = delivery.Batch(occurrence_id, channel, tuple(recipients))
        retry_in = delivery.deliver(runtime(), batch, message_id=message.message_id if message else None)
        if retry_in is not None:
            raise dramatiq.Retry(f"{channel} deliveries to retry", delay=int(retry_in * 1000))

    fire_actor = dramatiq.Actor(fire, broker=broker, actor_name="fire", queue_name=QUEUE, priority=0,
                                options=dict(options))
    deliver_actor = dramatiq.Actor(deliver, broker=broker, actor_name="deliver", queue_name=QUEUE,
                                   priority=10, options=dict(options))
    return Actors(fire=fire_actor, deliver=deliver_actor)
