"""Fan-out and delivery: the core the actors, ``send --wait`` and ``rehearse`` all call.

``fan_out`` turns an occurrence into ledger records (pending or suppressed) and yields the
batches to deliver as they are recorded. ``deliver`` sends one batch of one channel: it
claims the batch in one round trip, sends what it claimed, and writes each result back as
soon as it is known (a pipelined write, its reply read at the end of the batch), before
that SMTP connection carries another message. So a killed worker can have sent at most one
e-mail per SMTP connection (two per thread) that the ledger does not know of yet: those,
and only those, can be sent twice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from notifier.audience import Recipient, Suppressed, opted_out
from notifier.breaker import Breaker, Gate
from notifier.channels import registry
from notifier.channels.base import BatchChannel, Channel, Delivery, Payload, Receipt
from notifier.compose import compose
from notifier.config import Config
from notifier.errors import (
    ChannelPausedError,
    ConfigError,
    PermanentDeliveryError,
    RateLimitedError,
    ThrottledError,
    TransientDeliveryError,
)
from notifier.ledger import Claim, Outcome, Record, Recorder, Status, now_iso
from notifier.pace import Pacer
from notifier.rendering import Renderer
from notifier.responders import skipped_by_event
from notifier.retry import BUSY_RECHECK_S
from notifier.runtime import Prepared, Runtime
from notifier.tokens import unsubscribe_url

log = logging.getLogger(__name__)

BATCH = 100
RECORD_CHUNK = 10 * BATCH  # deliveries recorded per round trip while fanning out
SEND_CHUNK = 10  # deliveries rendered, then sent pipelined, at a time: a round the circuit breaker sees
ACCOUNT = "*"  # the recipient of an account's one post


@dataclass(frozen=True, slots=True)
class Batch:
    """Deliveries of one channel to hand to one actor message."""

    occurrence_id: str
    channel: str
    recipients: tuple[str, ...]


def fan_out(rt: Runtime, occurrence_id: str) -> Iterator[Batch]:
    """Record every delivery of an occurrence (idempotent) and yield the batches to send.

    Each batch is yielded as soon as its deliveries are recorded, ``RECORD_CHUNK`` at a time,
    so the first e-mails go out while the rest of a large audience is still being recorded.
    """
    # The audience the deliveries will render for (resolved once per process and kept), less
    # the suppressed: the same as resolve(..., suppressed=...) without a second copy in memory.
    prepared = rt.prepare(occurrence_id)
    event = prepared.event
    created = now_iso()
    for channel in event.channels:
        if not registry.per_recipient(channel):
            rt.ledger.add(occurrence_id, [Record(channel=channel, recipient=ACCOUNT, created=created)])
            yield Batch(occurrence_id, channel, (ACCOUNT,))
            continue
        suppressed = rt.suppressed()
        left_out = list(opted_out(rt.config.lists, event.audience))
        skip = skipped_by_event(
            lambda: rt.record, event.consultation_id, event.skip, prepared.recipients.values(), rt.config.tz
        )
        recipients: list[Recipient] = []
        skipped: list[Suppressed] = []  # left out by the event's skip (a response recorded), and why
        for key, recipient in prepared.recipients.items():
            if key in suppressed:
                left_out.append(Suppressed(recipient, suppressed[key]))
            elif key in skip:
                skipped.append(Suppressed(recipient, skip[key]))
            else:
                recipients.append(recipient)
        final: tuple[tuple[Status, list[Suppressed]], ...] = (("suppressed", left_out), ("skipped", skipped))
        rt.ledger.add(
            occurrence_id,
            [
                Record(
                    channel=channel,
                    recipient=item.recipient.key,
                    status=status,
                    name=item.recipient.name,
                    lists=item.recipient.lists,
                    error=item.reason,
                    created=created,
                )
                for status, items in final
                for item in items
            ],
        )
        for start in range(0, len(recipients), RECORD_CHUNK):
            chunk = recipients[start : start + RECORD_CHUNK]
            rt.ledger.add(
                occurrence_id,
                [Record(channel=channel, recipient=r.key, name=r.name, lists=r.lists, created=created) for r in chunk],
            )
            for part in _chunks([r.key for r in chunk], BATCH):
                yield Batch(occurrence_id, channel, tuple(part))


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def attempts(n: int) -> str:
    """``1 attempt``, ``3 attempts``: how output counts them."""
    return f"{n} attempt" if n == 1 else f"{n} attempts"


def deliver(rt: Runtime, batch: Batch, *, message_id: str | None = None) -> float | None:
    """Send what is still pending in ``batch``; seconds until a retry is due, or None when
    every delivery is final.

    ``message_id`` names the queue message carrying the batch: its retries may take back
    their own claims, while a duplicate message (a second ``fire``) finds them busy.
    """
    ledger = rt.ledger
    owner = f"{rt.worker_id}|{message_id or uuid.uuid4().hex}"
    prefix = f"{batch.channel}|"
    claims = ledger.claim(batch.occurrence_id, [prefix + r for r in batch.recipients], owner=owner)
    retry: float | None = None
    mine = [c for c in claims if c.state == "claimed"]
    if any(c.state == "busy" for c in claims):
        retry = BUSY_RECHECK_S  # a live worker is on them: look again later in case it fails
    if not mine:
        return retry
    suppressed = {}
    if registry.per_recipient(batch.channel):
        suppressed = ledger.suppressions([c.field[len(prefix) :] for c in mine])
    sending = _Sending(rt, batch.occurrence_id, batch.channel, owner=owner, wanted=len(mine))
    recorder = ledger.recorder(batch.occurrence_id, owner=owner)
    try:
        for start in range(0, len(mine), SEND_CHUNK):
            wait = _deliver_chunk(sending, recorder, mine[start : start + SEND_CHUNK], suppressed, len(prefix))
            if wait is not None:
                retry = max(retry or 0.0, wait)
        recorder.flush()
    except BaseException:
        recorder.abort()  # replies unread: the connection is dropped, not reused
        raise
    finally:
        sending.release()
    return retry


def _deliver_chunk(
    sending: _Sending, recorder: Recorder, claims: list[Claim], suppressed: dict[str, str], cut: int
) -> float | None:
    """Render, send and record claimed deliveries (each recorded as soon as its outcome is
    known, see :class:`~notifier.ledger.Recorder`); the longest wait until a retry among them."""
    rt = sending.rt
    retry: float | None = None
    sends: list[tuple[str, Delivery, Payload]] = []

    def settle(field: str, delivery: Delivery, result: Result) -> None:
        nonlocal retry
        settled = _settle(rt, delivery, result)
        recorder.record(field, settled)
        wait = _retry_in(rt, settled, result)
        if wait is not None:
            retry = max(retry or 0.0, wait)

    for claim in claims:
        recipient = claim.field[cut:]
        if recipient in suppressed:
            recorder.record(claim.field, _changed(claim.outcome, status="suppressed", error=suppressed[recipient]))
            continue
        delivery = Delivery(sending.occurrence_id, sending.channel_name, recipient, claim.outcome.attempts + 1)
        try:
            payload = _payload(sending, delivery)
        except (TransientDeliveryError, PermanentDeliveryError, ConfigError) as exc:
            settle(claim.field, delivery, exc)
        else:
            sends.append((claim.field, delivery, payload))
    _send(sending, [(d, p) for _, d, p in sends], lambda i, result: settle(sends[i][0], sends[i][1], result))
    return retry


@dataclass(slots=True)
class _Sending:
    """What every delivery of one batch needs from the runtime. Looked up by the first
    delivery, inside its ``try`` (so a config that cannot be loaded fails each delivery as
    before), and kept for the rest of the batch: per delivery, the three lookups took three
    locks and three config freshness checks."""

    rt: Runtime
    occurrence_id: str
    channel_name: str
    per_recipient: bool = False  # how the channel is addressed (an e-mail per recipient), once a batch
    prepared: Prepared | None = None
    config: Config | None = None
    #: Sends the payloads :func:`compose` makes for this channel (its kind, by the same name).
    channel: Channel[Any] | None = None
    renderer: Renderer | None = None
    #: The channel again where it is a :class:`BatchChannel`: an ``isinstance`` check against
    #: a runtime-checkable protocol inspects every member, so it is made once a batch.
    batch: BatchChannel[Any] | None = None
    #: The channel's circuit breaker as this batch sees it (see :mod:`notifier.breaker`).
    gate: Gate | None = None
    #: Who holds the batch's claims (its queue message), and how many it has still to send:
    #: its pace's reservation is kept under the one and sized by the other.
    owner: str = ""
    wanted: int = 0
    #: The channel's rate and daily cap as this batch keeps to them (:mod:`notifier.pace`);
    #: None, and no cost, when the channel has neither.
    pacer: Pacer | None = None

    def lookup(self) -> tuple[Prepared, Channel[Any], Renderer]:
        """The occurrence as prepared, the channel and the renderer (the runtime's, once)."""
        if self.prepared is None or self.channel is None or self.renderer is None:
            self.per_recipient = registry.per_recipient(self.channel_name)
            self.config = self.rt.config
            self.prepared = self.rt.prepare(self.occurrence_id)
            if self.channel is None:
                self.channel = self.rt.hold(self.channel_name)  # let go by release()
            self.renderer = self.rt.renderer
            self.batch = self.channel if isinstance(self.channel, BatchChannel) else None
            pause = self.rt.retry.breaker_base_s
            self.gate = Gate(Breaker(self.rt.client, self.channel_name, pause, self.rt.ledger.ns))
            limits = self.config.limits(self.channel_name)
            if limits is not None and registry.is_live(self.channel):
                message = self.owner.rpartition("|")[2]  # its slots wait for its retry, on whichever worker
                self.pacer = Pacer(
                    self.rt.client, self.channel_name, limits, message, self.rt.ledger.ns, clock=self.rt.clock
                )
        return self.prepared, self.channel, self.renderer

    def release(self) -> None:
        """Let go of the channel :meth:`lookup` held (see :meth:`Runtime.hold`): when the
        config changed meanwhile, the old channel is closed now, not under this batch."""
        if self.channel is not None:
            self.rt.release(self.channel)
            self.channel = None


Result = Receipt | TransientDeliveryError | PermanentDeliveryError | ConfigError


def _changed(outcome: Outcome, *, status: Status, error: str) -> Outcome:
    """``outcome`` with a new status and error, updated now (attempts as they were)."""
    return Outcome(status, outcome.attempts, error, outcome.provider_id, outcome.url, now_iso(), outcome.sent_at)


def _settle(rt: Runtime, delivery: Delivery, result: Result) -> Outcome:
    """The outcome of one attempt at a delivery (its ``attempt`` numbers this one)."""
    attempt, now = delivery.attempt, now_iso()
    if isinstance(result, ChannelPausedError):  # not attempted: the attempt does not count
        return Outcome("pending", attempt - 1, str(result), updated=now)
    if isinstance(result, Receipt):
        status: Status = "outbox" if result.outbox else "sent"
        return Outcome(status, attempt, None, result.provider_id, result.url, updated=now, sent_at=now)
    if isinstance(result, TransientDeliveryError):
        if rt.retry.gives_up(attempt):
            return Outcome("failed", attempt, f"gave up after {attempts(attempt)}: {result}", updated=now)
        log.info("delivery %s to %s deferred: %s", delivery.channel, delivery.recipient, result)
        return Outcome("pending", attempt, str(result), updated=now)
    if isinstance(result, PermanentDeliveryError):
        if result.bounce and registry.per_recipient(delivery.channel):
            rt.suppress(delivery.recipient, "bounce", f"bounced: {result.provider_reply or result}")
        return Outcome("failed", attempt, str(result), updated=now)
    return Outcome("failed", attempt, f"cannot render: {result}", updated=now)


def _retry_in(rt: Runtime, settled: Outcome, result: Result) -> float | None:
    """Seconds until a delivery left pending is due again (:mod:`notifier.retry`); None when it is final."""
    if settled.status != "pending" or not isinstance(result, TransientDeliveryError):
        return None
    if isinstance(result, RateLimitedError):  # its slot (or tomorrow) is due then: no backoff on top
        return result.retry_after or 0.0
    return rt.retry.retry_in(settled.attempts, result.retry_after)


def _payload(sending: _Sending, delivery: Delivery) -> Payload:
    """What to send for one delivery (:func:`~notifier.compose.compose`): the e-mail for its
    recipient, who must still be in the audience, or the account's post."""
    rt = sending.rt
    prepared, _, renderer = sending.lookup()
    recipient, url = None, None
    if sending.per_recipient:
        recipient = prepared.recipients.get(delivery.recipient)
        if recipient is None:
            raise PermanentDeliveryError("no longer in the audience's lists")
        url = unsubscribe_url(rt.settings.public_url, rt.secret_key, delivery.recipient)
    assert sending.config is not None  # lookup() set it
    return compose(
        renderer,
        sending.config,
        prepared.consultation,
        prepared.event,
        delivery.channel,
        recipient,
        context=prepared.context,
        unsubscribe_url=url,
    )


def _send(
    sending: _Sending,
    items: list[tuple[Delivery, Payload]],
    on_result: Callable[[int, Result], None],
) -> None:
    """Send each item and pass its receipt, or the error that says how it failed, to
    ``on_result`` with its index as soon as it is known. A :class:`BatchChannel` (SMTP:
    pipelined on the thread's connections) sends them together; any other channel one by one."""
    if not items:
        return
    _, channel, _ = sending.lookup()  # a payload was made, so this lookup has succeeded
    assert sending.gate is not None
    paused = sending.gate.paused()
    if paused is not None:
        for i in range(len(items)):
            on_result(i, paused)
        return
    results: list[Result] = []

    def record(i: int, result: Result) -> None:
        results.append(result)
        on_result(i, result)

    pacer = sending.pacer
    if pacer is None:
        _send_now(sending, channel, items, record)
    else:  # each group at its slot, the rest postponed (see notifier.pace)
        pacer.send(
            items,
            lambda group: _send_now(sending, channel, [items[i] for i in group], lambda j, r: record(group[j], r)),
            record,
            wanted=sending.wanted,
            most=SEND_CHUNK,
        )
        sending.wanted -= len(items)
        if any(isinstance(r, ThrottledError) for r in results):
            pacer.throttled()
    sending.gate.report(results)


def _send_now(
    sending: _Sending,
    channel: Channel[Any],
    items: list[tuple[Delivery, Payload]],
    record: Callable[[int, Result], None],
) -> None:
    """Send ``items`` now, each result to ``record`` with its index as soon as it is known."""
    if sending.batch is not None:
        sending.batch.send_many(items, record)
        return
    for i, (delivery, payload) in enumerate(items):
        result: Result
        try:
            result = channel.send(delivery, payload)
        except (TransientDeliveryError, PermanentDeliveryError, ConfigError) as exc:
            result = exc
        record(i, result)
