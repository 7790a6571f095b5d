"""The exception tree.

Two families matter to callers:

* :class:`ConfigError` carries every problem found in ``config/`` and ``templates/``
  at once, each with the file and line, so the policy team fixes them in one pass.
* :class:`DeliveryError` splits into :class:`TransientDeliveryError` (try again later:
  SMTP 4xx, connection errors, timeouts, HTTP 429 and 5xx) and
  :class:`PermanentDeliveryError` (never retried: SMTP 5xx, other HTTP 4xx).
  Channels translate foreign errors into these at the boundary.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
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


class TemplateLimitError(NotifierError):
    """A template went over what one render may use: time, output or the size of a value.

    ``path`` and ``line`` say where, when the template's own frames are not on the
    traceback (output is checked as it streams out, between the template's steps).
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


class UsageError(NotifierError):
    """A command was asked for something that does not exist (an unknown consultation, say)."""


class TooEarlyError(UsageError):
    """A scheduled event was fired by hand before its time without saying so (``--early``):
    it would go out early and then not at its time."""


class DeliveryError(NotifierError):
    """A delivery did not happen. ``provider_reply`` is what the far side said, if anything."""

    def __init__(self, message: str, *, provider_reply: str | None = None) -> None:
        super().__init__(message)
        self.provider_reply = provider_reply


class TransientDeliveryError(DeliveryError):
    """Worth trying again later; ``retry_after`` (seconds) is the far side's hint, if it gave one."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, provider_reply: str | None = None
    ) -> None:
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


class EmbeddedDataError(NotifierError):
    """The embedded Redis's data files cannot be loaded safely by the embedded server.

    Raised instead of letting a server start empty over them: an empty ledger would make
    every event look unsent and send it again.
    """


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
