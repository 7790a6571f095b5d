"""The ledger on a real Redis: each side effect claimed once, every delivery's fate recorded.

Workers are made alive with :func:`notifier.broker.beat` and dead by giving them a heartbeat
older than ``DEAD_AFTER_MS`` in the sorted set the ledger reads, rather than by waiting.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from notifier.broker import DEAD_AFTER_MS, NAMESPACE, beat
from notifier.ledger import CLAIM_LEASE_MS, Ledger, Outcome, Record

AT = datetime(2019, 7, 9, 8, 0, tzinfo=UTC)
JANE = "jane.smith@telford-wrekin-csp.example"
ZOE = "zoe.olafsdottir@shropshire-csp.example"
SAM = "sam.patel@wmyjs.example"


@pytest.fixture
def ledger(redis_client: redis.Redis) -> Ledger:
    return Ledger(redis_client)


def emails(*recipients: str) -> list[Record]:
    return [Record(channel="email", recipient=r, name=r.split("@")[0], lists=("csp",)) for r in recipients]


def fields(*recipients: str) -> list[str]:
    return [f"email|{r}" for r in recipients]


def states(ledger: Ledger, occurrence: str, owner: str, *recipients: str) -> list[str]:
    return [c.state for c in ledger.claim(occurrence, fields(*recipients), owner=owner)]


def kill(client: redis.Redis, worker_id: str) -> None:
    """Make ``worker_id`` look dead: its last heartbeat is older than DEAD_AFTER_MS."""
    client.zadd(f"{NAMESPACE}:workers", {worker_id: time.time() * 1000 - DEAD_AFTER_MS - 5_000})


def age_claim(client: redis.Redis, occurrence: str, recipient: str, ms: int) -> None:
    """Make the claim on ``recipient``'s e-mail look taken ``ms`` ago (its lease has run that long)."""
    client.pexpire(f"{NAMESPACE}:claim:{occurrence}:email|{recipient}", CLAIM_LEASE_MS - ms)


def fired(ledger: Ledger, consultation: str = "soc", event: str = "opened") -> str:
    occurrence = ledger.claim_occurrence(consultation, event, at=AT)
    assert occurrence is not None
    return occurrence


# ---------------------------------------------------------------------------
# Occurrences
# ---------------------------------------------------------------------------


def test_an_event_fires_once_unless_sent_again(ledger: Ledger) -> None:
    first = ledger.claim_occurrence("soc", "opened", at=AT, late=True)

    assert first == "soc:opened:1"
    assert ledger.claim_occurrence("soc", "opened", at=AT) is None
    assert ledger.fired("soc", "opened") == first
    again = ledger.claim_occurrence("soc", "opened", at=AT, again=True)
    assert again == "soc:opened:2"
    assert ledger.fired("soc", "opened") == again
    assert ledger.claim_occurrence("soc", "closed", at=AT) == "soc:closed:1", "another event is not fired yet"
    occurrence = ledger.occurrence(first)
    assert (occurrence.consultation, occurrence.event, occurrence.number) == ("soc", "opened", 1)
    assert (occurrence.at, occurrence.late, occurrence.state) == (AT, True, "claimed")
    assert ledger.occurrence(again).number == 2
    with pytest.raises(KeyError):
        ledger.occurrence("soc:opened:3")


def test_two_schedulers_firing_at_once_fire_one_occurrence(ledger: Ledger) -> None:
    barrier = threading.Barrier(8)
    results: list[str | None] = []
    lock = threading.Lock()

    def fire() -> None:
        barrier.wait()
        result = ledger.claim_occurrence("soc", "opened", at=AT)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=fire) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [r for r in results if r is not None] == ["soc:opened:1"]
    assert results.count(None) == 7


def test_latest_gives_each_events_newest_occurrence_or_none(ledger: Ledger) -> None:
    ledger.claim_occurrence("soc", "opened", at=AT)
    ledger.claim_occurrence("soc", "opened", at=AT, again=True)
    ledger.claim_occurrence("vr", "opened", at=AT)

    latest = ledger.latest([("soc", "opened"), ("soc", "closed"), ("vr", "opened")])

    assert [o.id if o else None for o in latest] == ["soc:opened:2", None, "vr:opened:1"]
    assert ledger.latest([]) == []


def test_occurrences_are_the_consultations_own_in_firing_order(ledger: Ledger) -> None:
    # fired in an order that differs from the ids' alphabetical one
    ledger.claim_occurrence("soc", "reminder", at=AT)
    ledger.claim_occurrence("vr", "opened", at=AT)
    ledger.claim_occurrence("soc", "closed", at=AT)
    ledger.claim_occurrence("soc", "reminder", at=AT, again=True)

    assert [o.id for o in ledger.occurrences("soc")] == ["soc:reminder:1", "soc:closed:1", "soc:reminder:2"]
    assert ledger.occurrences("never-fired") == []


def test_a_missed_event_is_recorded_once_and_cleared_when_it_fires(ledger: Ledger) -> None:
    assert ledger.missed("soc", "opened") is None

    ledger.mark_missed("soc", "opened", AT)
    ledger.mark_missed("soc", "opened", AT + timedelta(hours=1))

    assert ledger.missed("soc", "opened") == AT, "the first time it was found missed is kept"
    assert ledger.missed("soc", "closed") is None
    ledger.claim_occurrence("soc", "opened", at=AT, again=True)  # `send` after all
    assert ledger.missed("soc", "opened") is None


def test_unstarted_lists_claimed_occurrences_with_nothing_recorded(ledger: Ledger) -> None:
    stuck = fired(ledger, "soc", "opened")
    started = fired(ledger, "soc", "reminder")
    ledger.add(started, emails(JANE))
    fanned_out = fired(ledger, "soc", "closed")
    ledger.set_state(fanned_out, "fanned-out")
    fired(ledger, "vr", "opened")

    assert [o.id for o in ledger.unstarted(["soc"], older_than=0, within=600)] == [stuck]
    assert ledger.unstarted(["soc"], older_than=600, within=3600) == [], "too recent to be called stuck"
    assert ledger.unstarted([], older_than=0, within=600) == []


def test_one_fire_message_at_a_time_fans_an_occurrence_out(ledger: Ledger, redis_client: redis.Redis) -> None:
    occurrence = fired(ledger)
    beat(redis_client, "w1")
    beat(redis_client, "w2")

    assert ledger.take_fan_out(occurrence, owner="w1|m1")
    assert not ledger.take_fan_out(occurrence, owner="w2|m2"), "a second fire while a live worker fans out"
    assert not ledger.take_fan_out(occurrence, owner="w1|m9"), "another message of the same worker"
    assert ledger.take_fan_out(occurrence, owner="w2|m1"), "the same message, redelivered (a retry)"

    ledger.set_state(occurrence, "fanned-out")
    assert not ledger.take_fan_out(occurrence, owner="w2|m1"), "fanned out: nothing left to do"
    assert not ledger.take_fan_out(occurrence, owner="w1|m3")
    with pytest.raises(KeyError):
        ledger.take_fan_out("soc:nothing:1", owner="w1|m1")


def test_a_fan_out_left_by_a_dead_or_failed_fire_is_taken_by_the_next(
    ledger: Ledger, redis_client: redis.Redis
) -> None:
    occurrence = fired(ledger)
    beat(redis_client, "w1")
    beat(redis_client, "w2")
    assert ledger.take_fan_out(occurrence, owner="w1|m1")
    kill(redis_client, "w1")
    assert ledger.take_fan_out(occurrence, owner="w2|m2"), "its worker died mid fan-out"

    ledger.release_fan_out(occurrence, owner="w1|m1")  # not its owner any more: no effect
    assert not ledger.take_fan_out(occurrence, owner="w3|m3")
    ledger.release_fan_out(occurrence, owner="w2|m2")  # its fire raised: the next fire fans out
    assert ledger.take_fan_out(occurrence, owner="w3|m3")

    other = fired(ledger, event="closed")
    assert ledger.take_fan_out(other, owner="unbeaten|m1")
    assert not ledger.take_fan_out(other, owner="w2|m2"), "a holder that has not beaten yet is not dead"
    redis_client.hset(f"{NAMESPACE}:occ:{other}", "fanner_at", int(time.time() * 1000) - DEAD_AFTER_MS - 1_000)
    assert ledger.take_fan_out(other, owner="w2|m2"), "no heartbeat for DEAD_AFTER_MS since it took it: dead"


# ---------------------------------------------------------------------------
# Deliveries
# ---------------------------------------------------------------------------


def test_adding_the_same_deliveries_twice_records_them_once(ledger: Ledger) -> None:
    occurrence = fired(ledger)

    assert ledger.add(occurrence, emails(JANE, ZOE)) == 2
    assert (
        ledger.add(occurrence, [*emails(JANE, ZOE, SAM), Record(channel="email", recipient=JANE, status="suppressed")])
        == 1
    )

    assert ledger.counts(occurrence) == {"email": {"pending": 3}}
    assert sorted(r.recipient for r in ledger.records(occurrence)) == sorted([JANE, ZOE, SAM])
    record = ledger.record(occurrence, "email", JANE)
    assert record is not None and record.status == "pending", "a second add does not overwrite"


def test_adding_more_than_a_round_trips_worth_counts_each_once(ledger: Ledger) -> None:
    occurrence = fired(ledger)
    many = [f"person{i}@bulk.example" for i in range(2_500)]

    assert ledger.add(occurrence, emails(*many)) == 2_500
    assert ledger.add(occurrence, emails(*many)) == 0
    assert ledger.counts(occurrence) == {"email": {"pending": 2_500}}


def test_a_delivery_is_claimed_by_one_owner_while_its_worker_lives(ledger: Ledger, redis_client: redis.Redis) -> None:
    occurrence = fired(ledger)
    ledger.add(occurrence, emails(JANE))
    beat(redis_client, "w1")
    beat(redis_client, "w2")

    [claim] = ledger.claim(occurrence, fields(JANE), owner="w1|m1")

    assert claim.state == "claimed"
    assert claim.outcome == Outcome(), "not attempted yet"
    assert states(ledger, occurrence, "w2|m2", JANE) == ["busy"]
    assert states(ledger, occurrence, "w1|m9", JANE) == ["busy"], "another message of the same worker"
    assert states(ledger, occurrence, "w1|m1", JANE) == ["claimed"], "a retry of the same message"


def test_a_dead_workers_claim_is_taken_over(ledger: Ledger, redis_client: redis.Redis) -> None:
    occurrence = fired(ledger)
    ledger.add(occurrence, emails(JANE, ZOE))
    beat(redis_client, "w1")
    beat(redis_client, "w2")
    assert states(ledger, occurrence, "w1|m1", JANE, ZOE) == ["claimed", "claimed"]
    assert states(ledger, occurrence, "w2|m2", JANE, ZOE) == ["busy", "busy"]

    kill(redis_client, "w1")

    assert states(ledger, occurrence, "w2|m2", JANE, ZOE) == ["claimed", "claimed"]
    beat(redis_client, "w1")  # back from the dead: the claims are w2's now
    assert states(ledger, occurrence, "w1|m1", JANE, ZOE) == ["busy", "busy"]


def test_a_claim_by_a_holder_that_never_beat_is_kept_until_it_is_dead_after_old(
    ledger: Ledger, redis_client: redis.Redis
) -> None:
    """A worker whose first heartbeat is not in yet (or a process that is no worker) is not
    dead: taking its claim at once is how duplicate messages just after a boot both sent."""
    occurrence = fired(ledger)
    ledger.add(occurrence, emails(JANE))
    beat(redis_client, "w2")
    ledger.claim(occurrence, fields(JANE), owner="unbeaten|m1")

    assert states(ledger, occurrence, "w2|m2", JANE) == ["busy"]

    age_claim(redis_client, occurrence, JANE, DEAD_AFTER_MS + 1_000)
    assert states(ledger, occurrence, "w2|m2", JANE) == ["claimed"], "silent for DEAD_AFTER_MS: dead"


def test_mark_stores_each_outcome_and_keeps_counts(ledger: Ledger, redis_client: redis.Redis) -> None:
    occurrence = fired(ledger)
    ledger.add(occurrence, emails(JANE, ZOE, SAM))
    beat(redis_client, "w1")
    ledger.claim(occurrence, fields(JANE, ZOE, SAM), owner="w1|m1")
    jane, zoe, sam = fields(JANE, ZOE, SAM)

    ledger.mark(
        occurrence,
        [
            (jane, Outcome("sent", 1, provider_id="<soc:opened:1.jane@pcc.example>", sent_at="now")),
            (zoe, Outcome("failed", 1, error="550 5.1.1 no such user")),
            (sam, Outcome("pending", 1, error="451 4.3.0 try later")),
        ],
        owner="w1|m1",
    )

    assert ledger.counts(occurrence) == {"email": {"sent": 1, "failed": 1, "pending": 1}}
    stored = {r.recipient: r for r in ledger.records(occurrence)}
    assert (stored[JANE].status, stored[JANE].attempts, stored[JANE].provider_id) == (
        "sent",
        1,
        "<soc:opened:1.jane@pcc.example>",
    )
    assert (stored[ZOE].status, stored[ZOE].error) == ("failed", "550 5.1.1 no such user")
    assert (stored[SAM].status, stored[SAM].attempts, stored[SAM].error) == ("pending", 1, "451 4.3.0 try later")
    assert (stored[JANE].lists, stored[JANE].name) == (("csp",), "jane.smith"), "what fan-out recorded is kept"
    # marking released the claim: another live worker may retry the pending one now, not in 5
    # minutes, and it knows how the last attempt went
    beat(redis_client, "w2")
    again = ledger.claim(occurrence, fields(JANE, ZOE, SAM), owner="w2|m2")
    assert [c.state for c in again] == ["final", "final", "claimed"]
    assert again[2].outcome == Outcome("pending", 1, error="451 4.3.0 try later")


def test_a_sent_delivery_stays_sent_and_is_counted_once(ledger: Ledger, redis_client: redis.Redis) -> None:
    occurrence = fired(ledger)
    ledger.add(occurrence, emails(JANE))
    beat(redis_client, "w1")
    [claim] = ledger.claim(occurrence, fields(JANE), owner="w1|m1")
    sent = (claim.field, Outcome("sent", 1, provider_id="<a@pcc.example>"))

    ledger.mark(occurrence, [sent], owner="w1|m1")
    ledger.mark(occurrence, [sent], owner="w1|m1")
    ledger.mark(occurrence, [(claim.field, Outcome("failed", 2, error="late duplicate"))], owner="w2|m2")

    assert ledger.counts(occurrence) == {"email": {"sent": 1}}
    record = ledger.record(occurrence, "email", JANE)
    assert record is not None and (record.status, record.provider_id) == ("sent", "<a@pcc.example>")


def test_a_rerun_after_a_crash_sends_only_what_was_not_sent(ledger: Ledger, redis_client: redis.Redis) -> None:
    occurrence = fired(ledger)
    ledger.add(occurrence, emails(JANE, ZOE, SAM))
    beat(redis_client, "w1")
    claims = ledger.claim(occurrence, fields(JANE, ZOE, SAM), owner="w1|m1")
    ledger.mark(occurrence, [(c.field, Outcome("sent", 1)) for c in claims[:2]], owner="w1|m1")
    kill(redis_client, "w1")  # killed before it sent Sam's
    beat(redis_client, "w2")

    rerun = ledger.claim(occurrence, fields(JANE, ZOE, SAM), owner="w2|m1")

    assert [c.state for c in rerun] == ["final", "final", "claimed"]
    assert ledger.counts(occurrence) == {"email": {"sent": 2, "pending": 1}}


# ---------------------------------------------------------------------------
# Suppression
# ---------------------------------------------------------------------------


def test_suppression_ignores_capitals(ledger: Ledger) -> None:
    ledger.suppress("Jane.Smith@Telford-Wrekin-CSP.example", "unsubscribed")
    ledger.suppress(ZOE, "bounced: 550 5.1.1")

    assert ledger.suppressed() == {JANE: "unsubscribed", ZOE: "bounced: 550 5.1.1"}
    assert ledger.suppression(JANE) == "unsubscribed"
    assert ledger.suppression(JANE.upper()) == "unsubscribed"
    assert ledger.suppression(SAM) is None
    mixed = "Zoe.Olafsdottir@Shropshire-CSP.example"
    assert ledger.suppressions([JANE, mixed, SAM]) == {JANE: "unsubscribed", mixed: "bounced: 550 5.1.1"}
    assert ledger.suppressions([]) == {}

    assert ledger.unsuppress(JANE.upper()) is True
    assert ledger.unsuppress(JANE) is False, "already taken back in"
    assert ledger.suppressed() == {ZOE: "bounced: 550 5.1.1"}


# ---------------------------------------------------------------------------
# Namespaces
# ---------------------------------------------------------------------------


def test_ledgers_in_different_namespaces_do_not_see_each_other(redis_client: redis.Redis) -> None:
    real = Ledger(redis_client)
    rehearsal = Ledger(redis_client, namespace=f"{NAMESPACE}-rehearsal:soc:20190709T080000")
    beat(redis_client, "w1")

    occurrence = rehearsal.claim_occurrence("soc", "opened", at=AT, rehearsal=True)
    assert occurrence is not None
    rehearsal.add(occurrence, emails(JANE))
    rehearsal.suppress(ZOE, "unsubscribed")
    rehearsal.mark_missed("soc", "closed", AT)

    assert real.fired("soc", "opened") is None, "a rehearsal never marks a real event fired"
    assert real.occurrences("soc") == [] and real.latest([("soc", "opened")]) == [None]
    assert real.claim_occurrence("soc", "opened", at=AT) == occurrence, "the real one still fires"
    assert real.records(occurrence) == [] and real.counts(occurrence) == {}
    assert real.suppressed() == {} and real.missed("soc", "closed") is None
    assert rehearsal.occurrence(occurrence).rehearsal and not real.occurrence(occurrence).rehearsal
    real.add(occurrence, emails(JANE, SAM))
    assert rehearsal.counts(occurrence) == {"email": {"pending": 1}}
    # the same delivery is claimed separately in each
    assert states(real, occurrence, "w1|m1", JANE) == ["claimed"]
    assert states(rehearsal, occurrence, "w1|m2", JANE) == ["claimed"]


def test_a_rehearsal_ledger_sees_the_same_live_workers(redis_client: redis.Redis) -> None:
    # Workers beat once per process, not per namespace: a rehearsal's claims must respect them.
    rehearsal = Ledger(redis_client, namespace=f"{NAMESPACE}-rehearsal:soc:20190709T080000")
    occurrence = rehearsal.claim_occurrence("soc", "opened", at=AT, rehearsal=True)
    assert occurrence is not None
    rehearsal.add(occurrence, emails(JANE))
    beat(redis_client, "w1")

    assert states(rehearsal, occurrence, "w1|m1", JANE) == ["claimed"]
    assert states(rehearsal, occurrence, "w2|m2", JANE) == ["busy"], "w1 is alive, so its claim holds"


def test_outcomes_recorded_past_a_connection_health_check_are_all_kept(redis_url: str) -> None:
    """The production client checks a connection's health (a PING) when it has been idle past
    ``health_check_interval``; a recorder's writes leave replies unread, so such a PING would
    read a mark's reply, fail, and drop the batch's outcomes (then sent again)."""
    client = redis.Redis.from_url(redis_url, health_check_interval=1)
    ledger = Ledger(client)
    occurrence = fired(ledger)
    people = [f"person{n}@example.org" for n in range(3)]
    ledger.add(occurrence, emails(*people))
    beat(client, "w1")
    claims = ledger.claim(occurrence, fields(*people), owner="w1|m1")
    recorder = ledger.recorder(occurrence, owner="w1|m1")
    for claim in claims:
        recorder.record(claim.field, Outcome("sent", 1))
        due = time.monotonic() + 1.1  # the health check falls due between two writes, as on a slow relay
        while time.monotonic() < due:
            time.sleep(0.05)
    recorder.flush()

    assert ledger.counts(occurrence) == {"email": {"sent": 3}}
    client.close()
