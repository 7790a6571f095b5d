"""A circuit breaker per channel, kept in Redis so every thread of every worker sees it.

Without it, a relay that accepts connections and never answers makes each message wait the
full timeout: about one message a minute, for ever. With it, a channel whose sends keep
coming back :class:`~notifier.errors.UnreachableError` (refused, reset, timed out), or
:class:`~notifier.errors.ThrottledError` (the relay's 421/451 "too many": every worker
backs off together, whether or not the channel has a rate of its own), is
*open* (paused) as a whole: every worker leaves its deliveries pending, unattempted, and
re-queues them for when the pause ends, instead of each one waiting a timeout.

State, in the hash ``<namespace>:breaker:<channel>``:

* ``failures``: unreachable reports since the channel last worked (any worker's);
* ``opens``: pauses since then; each pause is twice the last (``base``, then ``2 * base``,
  ... up to ``cap``);
* ``until``: the Unix time the current pause ends.

:data:`THRESHOLD` reports in a row open the breaker. When a pause ends the channel is tried
again (half-open): one more unreachable report pauses it again, for longer, and one success
(:meth:`Breaker.succeeded`) closes it and forgets the count.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis

from notifier.channels.base import Receipt
from notifier.errors import ChannelPausedError, ThrottledError, UnreachableError

#: Unreachable reports in a row (from any worker) that pause a channel.
THRESHOLD = 2
#: The longest pause, in seconds.
CAP_S = 900.0
#: A breaker's record outlives its last report by this long, then is forgotten.
TTL_S = 86_400

# KEYS[1] the hash; ARGV: threshold, now, base, cap, ttl. Returns the pause in seconds
# (as a string) when the channel is paused, nil when it is not (yet).
_FAILED = """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
if failures < tonumber(ARGV[1]) then return nil end
local now = tonumber(ARGV[2])
local current = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if current > now then return tostring(current - now) end
local opens = redis.call('HINCRBY', KEYS[1], 'opens', 1)
local pause = math.min(tonumber(ARGV[4]), tonumber(ARGV[3]) * 2 ^ (opens - 1))
redis.call('HSET', KEYS[1], 'until', tostring(now + pause))
return tostring(pause)
"""


@dataclass(frozen=True, slots=True)
class State:
    """What a breaker said when read: unreachable reports since the channel last worked, and
    the seconds left of its pause (None when it is not paused)."""

    failures: int
    paused_for: float | None


@dataclass
class Breaker:
    """The breaker of one channel; ``base`` is the first pause in seconds."""

    client: redis.Redis
    channel: str
    base: float
    namespace: str = "notifier"
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = f"{self.namespace}:breaker:{self.channel}"

    def state(self) -> State:
        """The breaker as it is now (one round trip)."""
        failures, until = self.client.hmget(self.key, ["failures", "until"])
        left = float(until) - time.time() if until else 0.0
        return State(int(failures or 0), left if left > 0 else None)

    def failed(self) -> float | None:
        """Report that the channel was unreachable; the pause in seconds if it is now paused."""
        pause = self.client.eval(
            _FAILED, 1, self.key, THRESHOLD, repr(time.time()), repr(self.base), repr(CAP_S), TTL_S
        )
        return float(pause) if pause is not None else None

    def succeeded(self) -> None:
        """Report that the channel worked: close the breaker and forget its count."""
        self.client.delete(self.key)


@dataclass
class Gate:
    """One batch's view of its channel's breaker: read once when the batch starts sending
    (one round trip per batch, not per message), then kept up to date by what the batch's
    own sends report."""

    breaker: Breaker
    _failures: int = 0
    _until: float | None = None  # time.monotonic() when the pause ends
    _read: bool = False

    def paused(self) -> ChannelPausedError | None:
        """The error to leave each of the next sends pending with, or None to send them."""
        if not self._read:
            state = self.breaker.state()
            self._read, self._failures = True, state.failures
            self._until = time.monotonic() + state.paused_for if state.paused_for else None
        left = self._until - time.monotonic() if self._until is not None else 0.0
        if left <= 0:
            return None
        wait = left * random.uniform(1.0, 1.2)  # not all back at the same moment
        return ChannelPausedError(
            f"{self.breaker.channel} paused: it kept timing out or refusing connections; "
            f"trying it again in {wait:.0f} s",
            retry_after=wait,
        )

    def report(self, results: Sequence[object]) -> None:
        """Tell the breaker how a round of sends went: any success closes it; unreachable or
        throttled, and nothing else, counts towards pausing it."""
        if any(isinstance(r, Receipt) for r in results):
            if self._failures:
                self.breaker.succeeded()
                self._failures, self._until = 0, None
        elif any(isinstance(r, UnreachableError | ThrottledError) for r in results):
            self._failures += 1
            pause = self.breaker.failed()
            if pause is not None:
                self._until = time.monotonic() + pause
