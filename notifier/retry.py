"""The one retry policy: what is retried, when, how often, and what a user sees.

**What is retried.** A delivery whose channel raised
:class:`~notifier.errors.TransientDeliveryError` (an SMTP 4xx, a lost or refused
connection, a timeout, an HTTP 408, 429 or 5xx) stays ``pending`` with the error as its
last error. A :class:`~notifier.errors.PermanentDeliveryError` (SMTP 5xx, any other HTTP
4xx, a recipient no longer in the lists) or a template that cannot be rendered is
``failed`` at once, never retried.

**When.** After attempt *n* fails transiently, the delivery is due again after
:meth:`RetryPolicy.backoff` ``(n)``: ``NOTIFIER_RETRY_BASE_SECONDS`` (default 10) times
2^(n-1), capped at :data:`CAP_S` (an hour), times a random 0.8 to 1.2 so that deliveries
that failed together do not all come back together. When the far side said how long to
wait (``Retry-After``, or a platform's rate-limit reset), the longer of the two is used
(:meth:`RetryPolicy.retry_in`). A batch waits for the longest of its deliveries: the
``deliver`` actor raises ``dramatiq.Retry`` with that delay, and the retried message
sends only what is still pending.

**How often.** ``NOTIFIER_MAX_ATTEMPTS`` (default 8) attempts in all: a transient failure
on the last one makes the delivery ``failed`` with ``gave up after N attempts: <error>``
(:meth:`RetryPolicy.gives_up`).

**What does not count as an attempt.**

* A channel paused by its circuit breaker (:mod:`notifier.breaker`, after it kept being
  unreachable): its deliveries are not tried; they stay ``pending`` with ``<channel>
  paused: ...`` as their last error, their attempt count unchanged, and come back when the
  pause ends (its ``retry_after``). Pauses start at :attr:`RetryPolicy.breaker_base_s`
  (three times the base) and double per pause up to :data:`notifier.breaker.CAP_S`.
* A channel at its rate or daily cap (:mod:`notifier.pace`): the delivery waits for its
  send slot or the next day, ``pending`` with ``<channel> at its rate ...`` or ``... sent
  its N for <day>`` as its last error; the message comes back exactly then (no backoff).
* A relay's 421/451 "too many" (:class:`~notifier.errors.ThrottledError`): pending, the
  channel's rate halved for a while, and counted by the breaker as an unreachable attempt is.
* Deliveries another live worker holds (``busy`` claims, a second message for the same
  batch): not touched; the message looks again after :data:`BUSY_RECHECK_S` in case that
  worker dies.

**The queue message itself.** Dramatiq's ``Retries`` middleware (:func:`dramatiq_retries`,
installed by :func:`notifier.broker.make_broker`) carries the delays above, and retries a
message whose actor raised anything else (Redis unreachable, say) after 1 s, 2 s, 4 s, ...
up to :data:`CAP_S`. It gives a message up after :data:`MESSAGE_RETRIES` retries, far more
than the attempts a delivery has; should a long pause use them up, the deliveries stay
pending in the ledger and each worker's sweeper queues them again
(:class:`notifier.actors.Sweeper`).

**What a user sees.** The report shows such deliveries as ``pending`` (not final yet),
with their attempts and last error, until they are ``sent`` or ``failed``; a retry never
resends what was recorded as sent (the ledger's claims), and an e-mail keeps its
Message-ID on every attempt, so a resend is recognisable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dramatiq.middleware import Retries

from notifier.config import Settings

#: The longest wait between two attempts at a delivery, in seconds.
CAP_S = 3600.0
#: Each wait is the backoff times a random factor in this range.
JITTER = (0.8, 1.2)
#: Seconds until a message whose deliveries another live worker holds looks at them again.
BUSY_RECHECK_S = 15.0
#: Retries of one queue message (each ``dramatiq.Retry`` counts): well above any
#: ``NOTIFIER_MAX_ATTEMPTS``, so the ledger, not the queue, decides when a delivery gives up.
MESSAGE_RETRIES = 100
#: Dramatiq's first delay for a message whose actor raised (doubling per retry).
MESSAGE_MIN_BACKOFF_MS = 1_000


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a delivery that failed transiently is tried again, and when it is given up."""

    base_s: float
    max_attempts: int
    cap_s: float = CAP_S
    jitter: tuple[float, float] = JITTER

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """From ``NOTIFIER_RETRY_BASE_SECONDS`` and ``NOTIFIER_MAX_ATTEMPTS``."""
        return cls(base_s=settings.retry_base.total_seconds(), max_attempts=settings.max_attempts)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1``: exponential, capped, with jitter."""
        return min(self.cap_s, self.base_s * 2.0 ** (attempt - 1)) * random.uniform(*self.jitter)

    def gives_up(self, attempt: int) -> bool:
        """Whether a transient failure of attempt ``attempt`` is final (the last attempt)."""
        return attempt >= self.max_attempts

    def retry_in(self, attempts: int, retry_after: float | None) -> float:
        """Seconds until a delivery left pending after ``attempts`` attempts is due: its
        backoff, or the far side's ``retry_after`` (or the breaker's pause) if longer."""
        return max(self.backoff(attempts), retry_after or 0.0)

    @property
    def breaker_base_s(self) -> float:
        """A channel's first pause when its circuit breaker opens (then doubled per pause)."""
        return 3 * self.base_s


def dramatiq_retries() -> Retries:
    """Dramatiq's ``Retries`` middleware as this policy has it (see the module docstring)."""
    return Retries(max_retries=MESSAGE_RETRIES, min_backoff=MESSAGE_MIN_BACKOFF_MS, max_backoff=int(CAP_S * 1000))
