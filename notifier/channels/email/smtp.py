"""SMTP: the pipelined engine that sends ready-made messages, and SMTP errors translated.

:func:`transaction` sends one message on a kept-open connection as ``SMTP.sendmail``
would, but pipelines MAIL, RCPT and DATA where the server offers PIPELINING (and
dot-stuffs with :func:`~notifier.channels.email._fast.stuffed`): about half the client CPU
of ``sendmail`` per message. :func:`transactions` sends several messages so, and with
PIPELINING writes each message's data together with the next one's MAIL, RCPT and DATA:
one round trip a message, with each message's outcome still its own.
:class:`SmtpEngine` keeps each thread's connections (opened with the STARTTLS and AUTH the
target asks for, or refused), deals a batch to :data:`LANES` of them and writes to one
while the other's replies travel, and passes each message's result to ``on_result`` as
soon as its reply is read.

SMTP errors are translated at this boundary (:func:`translate`): 4xx replies, connection
errors and timeouts are transient; 5xx replies are permanent (550/551/553 and 5.1.x also
mark the address bounced, so later events suppress it).
"""

from __future__ import annotations

import contextlib
import enum
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from notifier.channels.base import Receipt
from notifier.channels.email._fast import envelope_path as _path
from notifier.channels.email._fast import one_line as _one_line
from notifier.channels.email._fast import stuffed as _stuffed
from notifier.errors import (
    ConfigError,
    PermanentDeliveryError,
    Problem,
    ThrottledError,
    TransientDeliveryError,
    UnreachableError,
)
from notifier.pace import THROTTLED_WAIT_S


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    """Where and how to connect, parsed from ``NOTIFIER_SMTP_URL``."""

    host: str
    port: int
    tls: bool = False
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0

    @classmethod
    def parse(cls, url: str) -> SmtpTarget:
        """``smtp://[user:pass@]host:port[?starttls=1]`` or ``smtps://…``; ConfigError if malformed."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ConfigError(
                [
                    Problem.at(
                        "NOTIFIER_SMTP_URL",
                        None,
                        "must look like smtp://[user:pass@]host:port[?starttls=1] or smtps://…",
                    )
                ]
            )
        query = parse_qs(parts.query)
        tls = parts.scheme == "smtps"
        try:
            port = parts.port or (465 if tls else 25)
            timeout = float(query.get("timeout", ["30"])[0])
        except ValueError:
            raise ConfigError([Problem.at("NOTIFIER_SMTP_URL", None, "port and timeout must be numbers")]) from None
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            starttls=query.get("starttls", ["0"])[0].lower() in ("1", "true", "yes"),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            timeout=timeout,
        )


#: What a relay says in a 421 or 451 that means "you are sending too fast" (Microsoft 365:
#: "4.7.0 Too many messages", "4.7.500 Server busy", "... throttled"; others: "rate limit",
#: "slow down", "too many connections"): slows the channel down instead of counting a failed
#: attempt. Not a plain "try later" (greylisting, one mailbox busy): that is one message's.
_SLOW_DOWN = re.compile(r"too many|throttl|rate.?limit|slow down|server busy|4\.7\.500", re.IGNORECASE)


def _reply(code: int, message: bytes | str) -> str:
    text = message.decode(errors="replace") if isinstance(message, bytes) else message
    return f"{code} {_one_line(text)}"


def translate(exc: Exception) -> TransientDeliveryError | PermanentDeliveryError:
    """An smtplib or socket error as our transient / permanent error."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, message = next(iter(exc.recipients.values()))
        return _by_code(code, message)
    if isinstance(exc, smtplib.SMTPResponseException):
        return _by_code(exc.smtp_code, exc.smtp_error)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return PermanentDeliveryError(str(exc))  # only raised by our connect path: see SmtpChannel._open
    if isinstance(exc, smtplib.SMTPServerDisconnected | OSError | TimeoutError | socket.timeout):
        return UnreachableError(f"SMTP connection failed: {exc}")
    return TransientDeliveryError(f"SMTP error: {exc}")


def _by_code(code: int, message: bytes | str) -> TransientDeliveryError | PermanentDeliveryError:
    reply = _reply(code, message)
    if code in (421, 451) and _SLOW_DOWN.search(reply):
        return ThrottledError(
            f"SMTP server asked us to slow down: {reply}", retry_after=THROTTLED_WAIT_S, provider_reply=reply
        )
    if 400 <= code < 500 or code < 200:
        return TransientDeliveryError(f"SMTP server deferred: {reply}", provider_reply=reply)
    bounce = code in (550, 551, 553) or " 5.1." in f" {reply[4:]}"
    return PermanentDeliveryError(f"SMTP server refused: {reply}", bounce=bounce, provider_reply=reply)


def _commands(conn: smtplib.SMTP, from_address: str, to_address: str, data: bytes) -> tuple[str, str, str]:
    """The MAIL, RCPT and DATA commands of one message (with its SIZE where offered)."""
    size = f" SIZE={len(data)}" if conn.has_extn("size") else ""
    return f"MAIL FROM:{_path(from_address)}{size}\r\n", f"RCPT TO:{_path(to_address)}\r\n", "DATA\r\n"


def transaction(conn: smtplib.SMTP, from_address: str, to_address: str, data: bytes) -> None:
    """Send one message to one recipient on an open connection, as ``conn.sendmail`` would
    and raising what it raises, but with MAIL, RCPT and DATA in one write where the server
    offers PIPELINING (RFC 2920): two round trips a message instead of four."""
    conn.ehlo_or_helo_if_needed()
    commands = _commands(conn, from_address, to_address, data)
    replies: list[tuple[int, bytes]] = []
    if conn.has_extn("pipelining"):
        conn.send("".join(commands))
        replies = [conn.getreply() for _ in commands]
    else:
        for command, ok in zip(commands, ((250,), (250, 251), (354,)), strict=True):
            conn.send(command)
            replies.append(conn.getreply())
            if replies[-1][0] not in ok:
                break
    if _accepted(replies):
        conn.send(_stuffed(data))
        code, reply = conn.getreply()
        if code == 250:
            return
        _abandon(conn, code)
        raise smtplib.SMTPDataError(code, reply)
    raise _refused(conn, from_address, to_address, replies)


def _accepted(replies: list[tuple[int, bytes]]) -> bool:
    """Whether MAIL, RCPT and DATA were all accepted (the data may follow)."""
    return len(replies) == 3 and replies[0][0] == 250 and replies[1][0] in (250, 251) and replies[2][0] == 354


def _refused(
    conn: smtplib.SMTP, from_address: str, to_address: str, replies: list[tuple[int, bytes]]
) -> smtplib.SMTPException:
    """After MAIL, RCPT or DATA was refused: end the transaction as ``sendmail`` would and
    return the exception it raises (the first refusal: sender, then recipient, then DATA)."""
    (mail_code, mail_reply), *rest = replies
    rcpt_code, rcpt_reply = rest[0] if rest else (0, b"")
    data_code, data_reply = rest[1] if len(rest) > 1 else (0, b"")
    if data_code == 354:  # DATA accepted though MAIL or RCPT was not: end the empty message
        conn.send(".\r\n")
        conn.getreply()
    if mail_code != 250:
        _abandon(conn, mail_code)
        return smtplib.SMTPSenderRefused(mail_code, mail_reply, from_address)
    if rcpt_code not in (250, 251):
        _abandon(conn, rcpt_code)
        return smtplib.SMTPRecipientsRefused({to_address: (rcpt_code, rcpt_reply)})
    _abandon(conn, data_code)
    return smtplib.SMTPDataError(data_code, data_reply)


#: What :func:`transactions` yields for one message: None when the server accepted it, or
#: the refusal of its sender or recipient (the connection goes on).
Outcome = smtplib.SMTPSenderRefused | smtplib.SMTPRecipientsRefused | None


class Step(enum.Enum):
    """What :func:`transactions` also yields, between outcomes: that it has just written to
    the server and will next wait for replies, so a caller may write to another
    connection meanwhile (:meth:`SmtpChannel.send_many` keeps two busy this way)."""

    WRITTEN = "written"


def transactions(
    conn: smtplib.SMTP,
    from_address: str,
    envelopes: Sequence[tuple[str, bytes]],
    senders: Sequence[str] | None = None,
) -> Iterator[Outcome | Step]:
    """Send several messages, each to one recipient, on an open connection, yielding each
    one's outcome in order as soon as it is known.

    A refused sender or recipient is yielded (after RSET, as :func:`transaction` does) and
    the next message goes on. Anything else :func:`transaction` would raise (a refused DATA
    or end of data, a 421, a lost connection) is raised, and it concerns the message after
    the last one yielded; the messages after that were not sent (at most their MAIL, RCPT
    and DATA were, never their data), and the connection must be dropped.

    Where the server offers PIPELINING, a message's data, its final dot and the next
    message's MAIL, RCPT and DATA go in one write (RFC 2920 allows commands after the end
    of data), so the replies to both come back in one read: one round trip a message
    instead of two. Otherwise it is :func:`transaction` once per message. After each write
    that replies will answer, :attr:`Step.WRITTEN` is yielded. ``senders`` (VERP) gives
    each message its own envelope sender in place of ``from_address``.
    """
    conn.ehlo_or_helo_if_needed()
    if not conn.has_extn("pipelining"):
        for i, (to_address, data) in enumerate(envelopes):
            try:
                transaction(conn, senders[i] if senders else from_address, to_address, data)
            except (smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused) as exc:
                yield exc
            else:
                yield None
        return
    ending = b""  # the previous message's data and dot, written with the next commands
    for i, (to_address, data) in enumerate(envelopes):
        sender = senders[i] if senders else from_address
        conn.send(ending + "".join(_commands(conn, sender, to_address, data)).encode("ascii"))
        yield Step.WRITTEN
        if ending:
            code, reply = conn.getreply()
            if code != 250:
                raise smtplib.SMTPDataError(code, reply)  # the previous message's end of data
            yield None
            ending = b""
        replies = [conn.getreply() for _ in range(3)]
        if _accepted(replies):
            ending = _stuffed(data)
            continue
        refusal = _refused(conn, sender, to_address, replies)
        if not isinstance(refusal, smtplib.SMTPSenderRefused | smtplib.SMTPRecipientsRefused):
            raise refusal
        yield refusal
    if ending:
        conn.send(ending)
        yield Step.WRITTEN
        code, reply = conn.getreply()
        if code != 250:
            _abandon(conn, code)
            raise smtplib.SMTPDataError(code, reply)
        yield None


def _abandon(conn: smtplib.SMTP, code: int) -> None:
    """After a refusal: close on 421 (the server is going away), else RSET, as smtplib does."""
    if code == 421:
        conn.close()
    else:
        with contextlib.suppress(smtplib.SMTPServerDisconnected):
            conn.rset()


_R = TypeVar("_R")


def _in_step(lanes: list[Generator[Step, None, list[_R]]]) -> list[list[_R]]:
    """Run ``lanes`` round robin, each up to its next write, until all have finished; what
    each returned. While one lane's replies travel, the next lane writes."""
    results: list[list[_R]] = [[] for _ in lanes]
    running = dict(enumerate(lanes))
    try:
        while running:
            for lane, steps in list(running.items()):
                try:
                    next(steps)
                except StopIteration as done:
                    results[lane] = done.value
                    del running[lane]
    except BaseException:
        for steps in running.values():  # the others stop too, and drop their half-used connections
            steps.close()
        raise
    return results


#: SMTP connections a worker thread keeps open. :meth:`SmtpChannel.send_many` writes the
#: next message to one while the other's replies are on their way: a thread that has to
#: sleep until a reply comes spends more CPU on the sleeping and waking than on the message
#: (bench/RESULTS.md, round 5), and each connection still has one round trip a message.
LANES = 2

_Result = Receipt | TransientDeliveryError | PermanentDeliveryError


class _Results(list[_Result]):
    """One lane's results, in order, each passed on as it is appended to the caller's
    ``on_result`` under its index among all the lanes' items (message i went on lane
    ``i % LANES`` as its ``i // LANES``th)."""

    def __init__(self, lane: int, on_result: Callable[[int, _Result], None] | None) -> None:
        super().__init__()
        self.lane = lane
        self.on_result = on_result

    def append(self, result: _Result) -> None:
        """Keep ``result`` and pass it on."""
        super().append(result)
        if self.on_result is not None:
            self.on_result(self.lane + LANES * (len(self) - 1), result)


class _Lanes:
    """One thread's kept-open connections, by lane, and whether that thread is sending on
    them now (only then may it change them; only when it is not may another thread quit them)."""

    __slots__ = ("busy", "conns")

    def __init__(self) -> None:
        self.conns: dict[int, smtplib.SMTP] = {}
        self.busy = False

    def take(self) -> list[smtplib.SMTP]:
        """The connections, forgotten here (to be quit by the caller)."""
        conns = list(self.conns.values())
        self.conns.clear()
        return conns


def _quit(conns: Iterable[smtplib.SMTP]) -> None:
    for conn in conns:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            conn.quit()


class SmtpEngine:
    """Sends ready-made messages over SMTP, with up to :data:`LANES` connections per thread
    kept open and reused.

    A connection is only ever used by the thread that opened it: :meth:`close` (called by
    whichever thread first sees a new config) quits at once only the connections of threads
    not sending now; a thread in the middle of :meth:`send` or :meth:`send_many` finishes on
    its own connections and quits them itself when it returns. (Quitting them under it
    interleaved a QUIT with its pipelined commands: a message's data corrupted or its reply
    read by the wrong thread, and the closing thread reading a reply from a buffer the
    sending thread had just freed.)
    """

    def __init__(self, target: SmtpTarget) -> None:
        self.target = target
        self._local = threading.local()
        self._threads: list[_Lanes] = []  # every thread's, guarded by _lock
        self._lock = threading.Lock()
        self._closed = False
        #: Until when (time.monotonic()) a new connection is not tried, and why: set when
        #: connecting timed out, so the other messages of a batch (and other threads) fail
        #: at once rather than each waiting the timeout again.
        self._silent: tuple[float, str] | None = None

    @property
    def connections(self) -> tuple[smtplib.SMTP, ...]:
        """The connections open now, of every thread (what :meth:`close` quits)."""
        with self._lock:
            return tuple(conn for lanes in self._threads for conn in tuple(lanes.conns.values()))

    def _connection(self, lane: int = 0) -> smtplib.SMTP:
        """This thread's open connection for ``lane``, opened if need be.

        A connection that cannot be opened raises ``OSError`` (``TimeoutError`` when the
        server accepted but did not answer in time), never ``SMTPServerDisconnected``, which
        the senders take for a kept-open connection the server closed and retry at once.
        """
        conns = self._lanes().conns
        conn = conns.get(lane)
        if conn is not None:
            return conn
        silent = self._silent
        if silent is not None and time.monotonic() < silent[0]:
            raise TimeoutError(f"{silent[1]} (not tried again for {self.target.timeout:g} s)")
        conn = self._open()
        self._silent = None
        conns[lane] = conn
        return conn

    def _open(self) -> smtplib.SMTP:
        """A new connection, greeted, secured and logged in as the target says."""
        t = self.target
        where = f"SMTP server {t.host}:{t.port}"
        try:
            conn = (
                smtplib.SMTP_SSL(t.host, t.port, timeout=t.timeout, context=ssl.create_default_context())
                if t.tls
                else smtplib.SMTP(t.host, t.port, timeout=t.timeout)
            )
        except (TimeoutError, smtplib.SMTPServerDisconnected) as exc:
            if not isinstance(exc, TimeoutError) and "timed out" not in str(exc):
                raise ConnectionError(f"{where} closed the connection before greeting: {exc}") from None
            reason = f"{where} accepted the connection but did not answer within {t.timeout:g} s"
            self._silent = (time.monotonic() + t.timeout, reason)
            raise TimeoutError(reason) from None
        try:
            conn.ehlo_or_helo_if_needed()
            if t.starttls and not t.tls:
                if not conn.has_extn("starttls"):
                    raise smtplib.SMTPNotSupportedError(
                        f"{where} does not offer STARTTLS, but NOTIFIER_SMTP_URL asks for it (starttls=1)"
                    )
                conn.starttls(context=ssl.create_default_context())
            if t.username:
                conn.ehlo_or_helo_if_needed()  # again after STARTTLS, which forgets the first
                if not conn.has_extn("auth"):
                    raise smtplib.SMTPNotSupportedError(
                        f"{where} does not offer AUTH, but NOTIFIER_SMTP_URL has a user name and password: "
                        "the relay would send unauthenticated or refuse; fix the URL or the relay"
                    )
                conn.login(t.username, t.password or "")
        except BaseException:
            with contextlib.suppress(OSError):
                conn.close()
            raise
        return conn

    def _lanes(self) -> _Lanes:
        """This thread's connections."""
        lanes: _Lanes | None = getattr(self._local, "lanes", None)
        if lanes is None:
            lanes = self._local.lanes = _Lanes()
        return lanes

    @contextlib.contextmanager
    def _sending(self) -> Iterator[None]:
        """This thread's connections in use for the block: :meth:`close` leaves them alone
        meanwhile, and if it was called, they are quit here at the end."""
        lanes = self._lanes()
        with self._lock:
            lanes.busy = True
            if lanes not in self._threads:
                self._threads.append(lanes)
        try:
            yield
        finally:
            with self._lock:
                lanes.busy = False
                left = lanes.take() if self._closed else []
            _quit(left)

    def _drop(self, lane: int = 0) -> None:
        conn = self._lanes().conns.pop(lane, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()

    def send(self, from_address: str, to_address: str, data: bytes, provider_id: str) -> Receipt:
        """Send one message; its receipt carries ``provider_id``, or the translated error is raised."""
        with self._sending():
            for _ in (1, 2):
                try:
                    conn = self._connection()
                    transaction(conn, from_address, to_address, data)
                    return Receipt(provider_id=provider_id)
                except smtplib.SMTPServerDisconnected as exc:
                    self._drop()  # a kept-open connection the server closed: reconnect once
                    disconnected = exc
                except smtplib.SMTPAuthenticationError as exc:
                    self._drop()
                    refused = _reply(exc.smtp_code, exc.smtp_error)
                    raise PermanentDeliveryError(f"SMTP login refused: {refused}") from None
                except (smtplib.SMTPException, OSError) as exc:
                    if not isinstance(exc, smtplib.SMTPRecipientsRefused | smtplib.SMTPSenderRefused):
                        self._drop()
                    raise translate(exc) from None
            raise translate(disconnected) from None  # closed on both tries

    def send_many(
        self,
        from_address: str,
        envelopes: Sequence[tuple[str, bytes]],
        provider_ids: Sequence[str],
        on_result: Callable[[int, _Result], None] | None = None,
        senders: Sequence[str] | None = None,
    ) -> list[_Result]:
        """Send several messages on this thread's connections, pipelined across messages
        (:func:`transactions`); for each, in order, its receipt or the error :meth:`send`
        would raise for it. ``senders`` gives each message its own envelope sender (VERP).

        The messages are dealt to :data:`LANES` connections in turn, and the lanes go in
        step: each writes its next message, then each reads its replies. Within a lane every
        message is handled as :meth:`send` handles it: a connection the server closed is
        reopened once per message, and a message that fails otherwise drops that lane's
        connection, so the lane's next message starts on a new one.

        ``on_result(index, result)`` is called with each message's outcome as soon as it is
        read, before that lane writes its next message: a caller that records it there has
        at most one accepted message a lane not recorded (what a killed worker may resend).
        """
        # Message i goes on lane i % LANES, as that lane's (i // LANES)th.
        lanes = [
            self._lane(
                lane,
                from_address,
                envelopes[lane::LANES],
                provider_ids[lane::LANES],
                on_result,
                senders[lane::LANES] if senders else None,
            )
            for lane in range(min(LANES, len(envelopes)))
        ]
        with self._sending():
            results = _in_step(lanes)
        return [results[i % LANES][i // LANES] for i in range(len(envelopes))]

    def _lane(  # noqa: PLR0913 - one lane's share of send_many's arguments
        self,
        lane: int,
        from_address: str,
        envelopes: Sequence[tuple[str, bytes]],
        provider_ids: Sequence[str],
        on_result: Callable[[int, _Result], None] | None = None,
        senders: Sequence[str] | None = None,
    ) -> Generator[Step, None, list[_Result]]:
        """Send ``envelopes`` on connection ``lane``, yielding after each write (see
        :func:`_in_step`); returns each message's receipt or error, in order, and tells
        ``on_result`` of each (by its index in :meth:`send_many`'s items) as it comes."""
        out = _Results(lane, on_result)
        reconnected = False  # whether the message after the last one in ``out`` was tried on a new connection
        while len(out) < len(envelopes):
            try:
                conn = self._connection(lane)
                left = senders[len(out) :] if senders else None
                for outcome in transactions(conn, from_address, envelopes[len(out) :], left):
                    if outcome is Step.WRITTEN:
                        yield outcome
                        continue
                    out.append(Receipt(provider_id=provider_ids[len(out)]) if outcome is None else translate(outcome))
                    reconnected = False
            except smtplib.SMTPServerDisconnected as exc:
                self._drop(lane)  # a kept-open connection the server closed: reconnect once
                if reconnected:
                    out.append(translate(exc))
                reconnected = not reconnected
            except smtplib.SMTPAuthenticationError as exc:
                self._drop(lane)
                out.append(PermanentDeliveryError(f"SMTP login refused: {_reply(exc.smtp_code, exc.smtp_error)}"))
                reconnected = False
            except (smtplib.SMTPException, OSError) as exc:
                self._drop(lane)  # refusals of a sender or recipient are yielded, not raised
                out.append(translate(exc))
                reconnected = False
            except BaseException:
                # Stopped mid-transaction (a time limit, the other lane failing, shutdown):
                # replies may be unread, so this connection must never be used again.
                self._drop(lane)
                raise
        return out

    def close(self) -> None:
        """Quit every open connection: now those of threads not sending, and those of a
        thread sending now when it has finished (see the class doc)."""
        with self._lock:
            self._closed = True
            idle = [conn for lanes in self._threads if not lanes.busy for conn in lanes.take()]
        _quit(idle)
