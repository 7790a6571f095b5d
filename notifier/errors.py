"""The exception tree: every error notifier raises on purpose is one of these.

Code under ``notifier/`` raises only these classes, besides a builtin for a caller's
programming error and the few foreign errors listed (with the reason) in
``tests/test_errors.py``, which checks every ``raise`` and checks that this tree and the
classes below agree. Channels translate foreign errors into :class:`DeliveryError` at the
boundary. Each class, what it means, and how the CLI and the worker treat it::

    NotifierError                    on purpose; the CLI prints "error: <message>" and exits 1
    ├── ConfigError                  config/templates invalid; CLI prints each PATH:LINE problem, exits 1
    │   ├── RenderError              a template failed to render; a worker fails the delivery, no retry
    │   ├── ResponsesFileError       a responses CSV has bad rows (FILE:LINE each); nothing imported
    │   └── BadResponseError         a response given field by field (the API) has bad fields; 422
    ├── InvalidValueError            a value a user wrote is not valid; loaders report it at its PATH:LINE
    │   └── BadToken                 an unsubscribe token not made with our key; the page answers 400
    ├── TemplateLimitError           a render went over its time, output or value size: a RenderError
    ├── FilterError                  a filter got what it cannot use (date of a text): a RenderError
    ├── UsageError                   a command asked for what does not exist; exit 1, actors never retry
    │   └── TooEarlyError            fired a scheduled event before its time without --early; exit 1
    ├── UnknownOccurrenceError       the ledger has no such occurrence; a worker retries the message
    ├── DeliveryError                a delivery did not happen; provider_reply is what the far side said
    │   ├── TransientDeliveryError   retried with backoff; failed after NOTIFIER_MAX_ATTEMPTS
    │   │   ├── UnreachableError     refused, reset, timed out; counted by the channel's circuit breaker
    │   │   └── ChannelPausedError   breaker open: not attempted, stays pending, attempt not counted
    │   │       ├── RateLimitedError the channel's rate or daily cap (notifier.pace): postponed, not counted
    │   │       └── ThrottledError   the relay said 421/451 "too many": postponed, not counted, channel slowed
    │   └── PermanentDeliveryError   recorded failed, never retried (send --wait exits 2); bounce suppresses
    ├── RedisUnavailable             Redis cannot be reached or started; exit 1 (plan: "state unknown")
    ├── EmbeddedDataError            embedded Redis data unsafe to load; every command stops, exit 1
    ├── SignInRefused                wrong e-mail address or password (never says which); the form again
    │   └── AccountLocked            five failed sign-ins in a row: refused for 15 minutes, any password
    └── StoreError                   the SQL record cannot be used; exit 1
        └── SchemaBehindError        the database schema is older than notifier: run notifier db upgrade

A :class:`ConfigError` carries every problem found at once, each with its file and line, so
the policy team fixes them in one pass. Channels map the far side's answers: transient is
SMTP 4xx, connection errors, timeouts, HTTP 429 and 5xx; permanent is SMTP 5xx and other HTTP 4xx.

Three also subclass the builtin that callers (and libraries) catch: :class:`InvalidValueError`
(and so :class:`BadToken`) is a ``ValueError``, which pydantic validators must raise to be
reported as a validation error; :class:`UnknownOccurrenceError` is a ``KeyError``, as a lookup
of an unknown key is. :class:`RenderError` is a :class:`ConfigError`: a template that does not
render is a template to fix, printed by ``validate`` and ``preview`` as every other problem.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong (or worth a warning) in the configuration, with where it is."""

    path: str
    line: int | None
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{where}: {prefix}{self.message}"

    @classmethod
    def at(cls, path: Path | str, line: int | None, message: str) -> Problem:
        """An error at ``path:line``."""
        return cls(str(path), line, message)

    @classmethod
    def warn(cls, path: Path | str, line: int | None, message: str) -> Problem:
        """A warning at ``path:line``: reported, but does not fail validation."""
        return cls(str(path), line, message, "warning")


class NotifierError(Exception):
    """Base of every error notifier raises on purpose."""


class ConfigError(NotifierError):
    """The configuration or templates are invalid; ``problems`` lists every error found."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class RenderError(ConfigError):
    """A template did not render: missing, not compiling, an undefined name, over its limits,
    a filter given the wrong thing. ``problems`` says where, as for every ConfigError.

    Its own class so a caller can tell a template that fails at delivery time from a config
    that does not load; a ConfigError still, so ``validate`` and ``preview`` print it as every
    other problem and a worker fails the delivery permanently (``cannot render: ...``).
    """


class TemplateLimitError(NotifierError):
    """A template went over what one render may use: time, output or the size of a value.

    ``path`` and ``line`` say where, when the template's own frames are not on the
    traceback (output is checked as it streams out, between the template's steps).
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


class FilterError(NotifierError):
    """A template filter was given what it cannot use (``date`` given text, say). Raised
    inside a render, which reports it as a :class:`RenderError` at the template's line."""


class InvalidValueError(NotifierError, ValueError):
    """A value a user wrote is not valid: a date, an e-mail address, an ``at:`` expression,
    a name with a line break, an account without the field its platform needs.

    A ``ValueError`` too: pydantic reports a validator's ``ValueError`` as a validation
    error, and the loaders that call these parsers catch ``ValueError`` to place the
    message at the file and line the value came from.
    """


class BadToken(InvalidValueError):  # noqa: N818 - reads as what it is
    """An unsubscribe token was not made with our key, or was altered or cut short."""


class UsageError(NotifierError):
    """A command was asked for something that does not exist (an unknown consultation, say)."""


class TooEarlyError(UsageError):
    """A scheduled event was fired by hand before its time without saying so (``--early``):
    it would go out early and then not at its time."""


class UnknownOccurrenceError(NotifierError, KeyError):
    """The ledger holds no occurrence with this id (the only argument). A ``KeyError`` too,
    as any lookup of an unknown key; a worker's message for it is retried as any other error."""


class DeliveryError(NotifierError):
    """A delivery did not happen. ``provider_reply`` is what the far side said, if anything."""

    def __init__(self, message: str, *, provider_reply: str | None = None) -> None:
        super().__init__(message)
        self.provider_reply = provider_reply


class TransientDeliveryError(DeliveryError):
    """Worth trying again later; ``retry_after`` (seconds) is the far side's hint, if it gave one."""

    def __init__(self, message: str, *, retry_after: float | None = None, provider_reply: str | None = None) -> None:
        super().__init__(message, provider_reply=provider_reply)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """Will never succeed as it stands; recorded as ``failed`` and not retried.

    ``bounce`` is true when the address itself is bad (SMTP 550 no such user), so it is
    suppressed from later events.
    """

    def __init__(self, message: str, *, bounce: bool = False, provider_reply: str | None = None) -> None:
        super().__init__(message, provider_reply=provider_reply)
        self.bounce = bounce


class UnreachableError(TransientDeliveryError):
    """The far side could not be reached or did not answer in time (refused, reset, timed
    out). Counted by the channel's circuit breaker (:mod:`notifier.breaker`): a channel that
    keeps being unreachable is paused as a whole rather than waited on message by message."""


class ChannelPausedError(TransientDeliveryError):
    """Not attempted: the channel's circuit breaker is open after repeated unreachable
    attempts. The delivery stays pending, its attempt is not counted, and ``retry_after``
    says when the channel is tried again."""


class RateLimitedError(ChannelPausedError):
    """Not attempted: the channel is at its rate or has sent its daily cap (:mod:`notifier.pace`).
    The delivery stays pending, its attempt is not counted, and ``retry_after`` says when its
    slot (or the next day) comes."""


class ThrottledError(ChannelPausedError):
    """The relay answered 421 or 451 "too many" (or another throttling reply): it asks us to
    slow down, which is not the message's fault. Pending, attempt not counted, and the
    channel's pace slows (:meth:`notifier.pace.Pacer.throttled`)."""


class RedisUnavailable(NotifierError):  # noqa: N818 - a public name the CLI and tests use
    """Redis could not be reached or started."""


class EmbeddedDataError(NotifierError):
    """The embedded Redis's data files cannot be loaded safely by the embedded server.

    Raised instead of letting a server start empty over them: an empty ledger would make
    every event look unsent and send it again.
    """


class SignInRefused(NotifierError):  # noqa: N818 - reads as what happened
    """A console sign-in was refused: the address is unknown or the password is wrong. The
    message never says which, so a sign-in form does not tell who has an account."""


class AccountLocked(SignInRefused):
    """Five sign-ins in a row failed: the account refuses every password, the right one too,
    until ``until`` (15 minutes after the fifth), which slows a password guesser to a crawl."""

    def __init__(self, message: str, *, until: datetime) -> None:
        super().__init__(message)
        self.until = until


class StoreError(NotifierError):
    """The consultation record (the SQL database) cannot be used: unreachable, a bad
    ``NOTIFIER_DATABASE_URL``, or unknown to it (a consultation it holds no record of)."""


class SchemaBehindError(StoreError):
    """The database's schema is older than this version of notifier: run ``notifier db upgrade``."""


class ResponsesFileError(ConfigError):
    """A responses CSV has bad rows; ``problems`` names each as ``FILE:LINE: message``."""


class BadResponseError(ConfigError):
    """A response given field by field (the JSON API's body) has bad fields; ``problems`` names
    each one (``email: invalid e-mail address ...``)."""
