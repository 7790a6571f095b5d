"""SMTP pipelining across messages (``SmtpChannel.send_many``), against a real SMTP server
(aiosmtpd) that offers PIPELINING, so the pipelined code path is the one under test.

Each message's outcome must be what ``SmtpChannel.send`` gives for it alone: accepted
messages get their Message-ID, a refused recipient or a refused end of data fails only that
message (4xx transient, 5xx permanent), and nothing is sent twice or lost.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from notifier.channels.base import Delivery, EmailPayload, Receipt
from notifier.channels.email import LANES, Sender, SmtpChannel, SmtpTarget
from notifier.config import Settings
from notifier.errors import PermanentDeliveryError, TransientDeliveryError
from notifier.rendering import EmailContent
from notifier.service import Service
from tests.conftest import Project, ScriptedHandler, SmtpServer, free_port

SENDER = Sender.parse("Office of the PCC <noreply@pcc.example>", None)


class PipeliningHandler(ScriptedHandler):
    """The scripted handler, with PIPELINING added to the EHLO reply."""

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


@pytest.fixture
def pipelining_server() -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) offering PIPELINING on a free loopback port."""
    server = SmtpServer(PipeliningHandler(), free_port())
    server.start()
    yield server
    server.stop()


def address(n: int) -> str:
    return f"person{n}@example.org"


def items(count: int) -> list[tuple[Delivery, EmailPayload]]:
    content = EmailContent(subject="Consultation open", text="Have your say.\n.leading dot\n", html=None)
    return [
        (
            Delivery("soc:opened:1", "email", address(n)),
            EmailPayload(
                to_email=address(n),
                to_name=f"Person {n}",
                content=content,
                unsubscribe_url="https://notify.pcc.example/u/x",
            ),
        )
        for n in range(count)
    ]


def channel(server: SmtpServer) -> contextlib.closing[SmtpChannel]:
    """The e-mail channel on ``server``, closed at the end of a ``with``."""
    return contextlib.closing(SmtpChannel(SmtpTarget.parse(server.url), SENDER))


def test_the_server_offers_pipelining_so_the_pipelined_path_runs(pipelining_server: SmtpServer) -> None:
    with channel(pipelining_server) as smtp:
        smtp.send_many(items(1))
        [conn] = smtp.engine.connections
        assert conn.has_extn("pipelining")


def test_every_message_is_accepted_once_with_its_message_id(pipelining_server: SmtpServer) -> None:
    with channel(pipelining_server) as smtp:
        results = smtp.send_many(items(7))
        assert len(smtp.engine.connections) == LANES, "the messages were dealt to the thread's connections"

    assert all(isinstance(r, Receipt) for r in results)
    # two connections: the server may take them in either order, but each exactly once
    assert Counter(pipelining_server.handler.recipients()) == Counter(address(n) for n in range(7))
    for n, result in enumerate(results):
        assert isinstance(result, Receipt)
        [message] = pipelining_server.handler.to(address(n))
        assert message["Message-ID"] == result.provider_id
        assert message.get_content().replace("\r\n", "\n") == "Have your say.\n.leading dot\n"  # un-stuffed


def test_refused_recipients_fail_only_their_own_message(pipelining_server: SmtpServer) -> None:
    handler = pipelining_server.handler
    handler.always[address(1)] = "550 5.1.1 no such user here"
    handler.script[address(3)] = ["451 4.7.1 greylisted, try later"]
    handler.always[address(6)] = "452 4.2.2 mailbox full"  # the last one
    with channel(pipelining_server) as smtp:
        results = smtp.send_many(items(7))
        again = smtp.send_many(items(4)[3:])  # greylisting over: the same connection goes on

    assert isinstance(results[1], PermanentDeliveryError) and results[1].bounce
    assert "550" in str(results[1])
    assert isinstance(results[3], TransientDeliveryError) and "451" in str(results[3])
    assert isinstance(results[6], TransientDeliveryError) and "452" in str(results[6])
    assert [n for n, r in enumerate(results) if isinstance(r, Receipt)] == [0, 2, 4, 5]
    assert isinstance(again[0], Receipt)
    assert Counter(handler.recipients()) == Counter(address(n) for n in (0, 2, 4, 5, 3))


def test_a_refused_end_of_data_fails_that_message_and_the_next_is_sent_once(
    pipelining_server: SmtpServer,
) -> None:
    handler = pipelining_server.handler
    handler.data_script[address(2)] = ["554 5.6.0 content rejected"]
    handler.data_script[address(4)] = ["451 4.3.0 mailbox busy, try later"]
    handler.data_script[address(5)] = ["552 5.3.4 too big"]  # the last one
    with channel(pipelining_server) as smtp:
        results = smtp.send_many(items(6))

    assert isinstance(results[2], PermanentDeliveryError) and "554" in str(results[2])
    assert not results[2].bounce
    assert isinstance(results[4], TransientDeliveryError) and "451" in str(results[4])
    assert isinstance(results[5], PermanentDeliveryError) and "552" in str(results[5])
    assert [n for n, r in enumerate(results) if isinstance(r, Receipt)] == [0, 1, 3]
    # every message was received once: accepted, or refused at its end of data
    assert Counter(handler.recipients()) == Counter(address(n) for n in (0, 1, 3))
    assert len(handler.refused) == 3


def test_a_closed_kept_open_connection_is_reopened_and_nothing_is_sent_twice(
    pipelining_server: SmtpServer,
) -> None:
    with channel(pipelining_server) as smtp:
        first = smtp.send_many(items(3))
        pipelining_server.stop()  # closes the kept-open connection
        pipelining_server.start()
        second = smtp.send_many(items(6)[3:])

    assert all(isinstance(r, Receipt) for r in first + second)
    assert Counter(pipelining_server.handler.recipients()) == Counter(address(n) for n in range(6))


def test_a_server_that_is_down_makes_every_message_transient(pipelining_server: SmtpServer) -> None:
    pipelining_server.stop()
    with channel(pipelining_server) as smtp:
        results = smtp.send_many(items(3))

    assert all(isinstance(r, TransientDeliveryError) for r in results)


def test_delivery_end_to_end_over_a_pipelining_server(
    project: Project, redis_url: str, pipelining_server: SmtpServer
) -> None:
    """The whole path (claim, render, send pipelined, record), with a bounce and a retry."""
    jane, zoe = "jane.smith@telford-wrekin-csp.example", "zoe.olafsdottir@shropshire-csp.example"
    pipelining_server.handler.always[zoe] = "550 5.1.1 no such user here"
    pipelining_server.handler.data_script[jane] = ["451 4.3.0 mailbox busy, try later"]
    project.env.update({"NOTIFIER_REDIS_URL": redis_url, "NOTIFIER_SMTP_URL": pipelining_server.url})
    service = Service(Settings.from_env(project.env))
    try:
        occurrence = service.fire("soc-strategy-2019", "opened")
        assert occurrence is not None
        with service.worker(threads=2):
            progress = service.wait(occurrence, timeout=60)
        assert progress.finished
        records = {r.recipient: r for r in service.ledger.records(occurrence) if r.channel == "email"}
    finally:
        service.close()

    assert (records[zoe].status, records[zoe].attempts) == ("failed", 1)
    assert (records[jane].status, records[jane].attempts) == ("sent", 2)
    sent = {k for k, r in records.items() if r.status == "sent"}
    received = Counter(pipelining_server.handler.recipients())
    assert set(received) == sent and max(received.values()) == 1
    [accepted] = pipelining_server.handler.to(jane)
    assert accepted["Message-ID"] == records[jane].provider_id == pipelining_server.handler.refused[0]["Message-ID"]


class StoppedError(Exception):
    """What a worker's time limit raises in the middle of a send."""


def test_a_lane_stopped_mid_transaction_drops_its_connection(pipelining_server: SmtpServer) -> None:
    """A worker's time limit can stop a send between a write and its replies: the
    connection, with replies unread, must not be reused, or the next message would read
    the previous one's replies as its own."""

    def time_limit(index: int, result: object) -> None:
        raise StoppedError  # at the first reply read: the other lane has written its message, unread

    with channel(pipelining_server) as smtp:
        envelopes = [(address(n), b"Subject: x\r\n\r\nhello\r\n") for n in range(10, 13)]
        ids = [f"<{n}@pcc.example>" for n in range(10, 13)]
        with pytest.raises(StoppedError):
            smtp.engine.send_many(SENDER.from_address, envelopes, ids, on_result=time_limit)
        assert smtp.engine.connections == (), "the half-used connections were dropped"
        results = smtp.send_many(items(2))  # and new ones work, each with its own reply

    assert all(isinstance(r, Receipt) for r in results)
    received = Counter(pipelining_server.handler.recipients())
    assert [received[address(n)] for n in range(2)] == [1, 1]
    for n, result in enumerate(results):
        assert isinstance(result, Receipt)
        assert pipelining_server.handler.to(address(n))[0]["Message-ID"] == result.provider_id


def test_when_one_lane_fails_the_others_are_stopped_too() -> None:
    from notifier.channels.email.smtp import Step, _in_step

    stopped: list[str] = []

    def lane(name: str, fail: bool) -> Generator[Step, None, list[str]]:
        try:
            yield Step.WRITTEN
            if fail:
                raise RuntimeError("time limit")
            yield Step.WRITTEN
            return [name]
        finally:
            stopped.append(name)

    with pytest.raises(RuntimeError, match="time limit"):
        _in_step([lane("a", fail=True), lane("b", fail=False)])
    assert sorted(stopped) == ["a", "b"], "b was closed, not left suspended mid-transaction"


def test_a_channel_closed_by_another_thread_mid_batch_still_delivers_every_message_once(
    pipelining_server: SmtpServer,
) -> None:
    """A reloaded config closes the old channels from whichever thread sees it first (the
    archiver, another worker thread) while a worker thread is still sending a batch on
    them: that batch must still go out whole, each message once and intact, and its
    connections be quit when it is done, not under it."""
    smtp = SmtpChannel(SmtpTarget.parse(pipelining_server.url), SENDER)
    paused, resume = threading.Event(), threading.Event()
    results: list[object] = []

    def on_result(index: int, result: object) -> None:
        if index == 0:  # the first reply read: the lanes' next commands are written, unanswered
            paused.set()
            resume.wait(30)

    def batch() -> None:
        try:
            results.extend(smtp.send_many(items(6), on_result=on_result))
        except Exception as exc:  # what the sending thread would have hit, for the assertion
            results.append(exc)

    sender = threading.Thread(target=batch)
    sender.start()
    assert paused.wait(30), "the batch started"
    smtp.close()  # as Runtime does when the config changed, from this (another) thread
    resume.set()
    sender.join(30)

    assert len(results) == 6 and all(isinstance(r, Receipt) for r in results), results
    assert Counter(pipelining_server.handler.recipients()) == Counter(address(n) for n in range(6))
    assert all(str(m["Subject"]) == "Consultation open" for m in pipelining_server.handler.messages)
    assert smtp.engine.connections == (), "the sending thread quit its connections when it was done"
