"""Pace: how fast a channel may send (``rate: 30/minute``) and how much a day (``daily: 10000``),
held in Redis so that every thread of every worker process keeps to the one limit.

**Rate.** Each channel with a rate has a schedule in Redis: the time its next free send
slot starts (``<ns>:pace:<channel>:tat``, the generic cell rate algorithm's theoretical
arrival time). Slots are one *interval* apart (a minute / 30 is 2 s, and :data:`HEADROOM`
more: the relay counts what arrives, and arrivals jitter). A batch reserves a slot for each
delivery it holds in one round trip (:data:`_RESERVE`) and sends each delivery at its slot.
A slot within the :func:`horizon` (2.5 s; longer for a slow rate) is waited for: the wait
is the schedule's, shared by all workers, not a per-process sleep that would let N
processes send N times the rate. A later one is *postponed*: the delivery stays
``pending`` with its attempt count unchanged, the batch's queue message comes back just
before its next slot (``dramatiq.Retry`` with that delay) and keeps its reserved slots
while it waits (under its message id, so its retry finds them on any worker). A thread
never holds a batch longer than :data:`HOLD_S`. A slot missed by more than :data:`LATE_S`
(a worker that came back late) is given up, never sent late: sending it late would crowd
the slots after it. So any second sees at most the rate, plus one message per send group
(:func:`group_size`: one for rates up to 20 a second), plus the jitter the headroom absorbs.

**Daily cap.** A counter per local day (``<ns>:pace:<channel>:day:2027-03-29``, in the
configured timezone, from the pacer's clock): each send takes from it first. When the
day's count is used up, the rest are postponed to the next local day (its send window's
first opening, when there is one), so a campaign larger than the cap continues by itself.

**Slowing down.** A relay that answers 421 or 451 "too many" (:class:`~notifier.errors.ThrottledError`)
is obeyed rather than counted as a failed attempt: the delivery stays pending with its
attempt count unchanged, and the channel's interval doubles (up to :data:`MAX_SLOWDOWN`
times) for :data:`SLOW_FOR_S`; the circuit breaker (:mod:`notifier.breaker`) also counts
it, so a relay that keeps saying so pauses the channel for every worker, rate or no rate.

:func:`finish` estimates when a campaign of N messages would end at a channel's pace
(``plan`` and the console show it).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from zoneinfo import ZoneInfo

import redis

from notifier.errors import InvalidValueError, RateLimitedError
from notifier.window import SendWindow, next_day_opening

T = TypeVar("T")

PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour)s?\s*$")
#: Slots are this much further apart than the rate says (5%): the relay counts arrivals, not sends.
HEADROOM = 1.05
#: A slot this close is waited for by the thread holding it; a later one is postponed.
HORIZON_S = 2.5
#: The furthest :func:`horizon` reaches for a slow rate.
MAX_HORIZON_S = 10.0
#: A postponed batch comes back this long before its next slot (a queue is not punctual).
LEAD_S = 1.0
#: A slot missed by more than this is given up (and a new one reserved), never sent late.
LATE_S = 0.02
#: The longest a thread holds one batch waiting for its slots before postponing the rest.
HOLD_S = 30.0
#: A 421/451 "too many" doubles the interval, up to this factor, for this long.
MAX_SLOWDOWN = 16
SLOW_FOR_S = 600
#: How long a throttled delivery waits when its channel has no rate of its own.
THROTTLED_WAIT_S = 60.0
#: The longest a postponed message waits in the queue (Redis refuses a delay of 7 days or more).
MAX_WAIT_S = 6 * 86_400.0
_KEEP_S = 3 * 86_400  # reservations and day counts outlive their use by this long

# KEYS: the schedule, this batch's reservation, the slowdown. ARGV: now, interval, count, ttl.
# Returns "start,interval": the count's slots are start, start + interval, ...
_RESERVE = """
local now = tonumber(ARGV[1])
local step = tonumber(ARGV[2]) * tonumber(redis.call('GET', KEYS[3]) or '1')
local n = tonumber(ARGV[3])
local start = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
local ttl = math.ceil(start + n * step - now) + tonumber(ARGV[4])  -- outlives its last slot
redis.call('SET', KEYS[1], string.format('%.6f', start + n * step), 'EX', ttl)
local slots = string.format('%.6f', start) .. ',' .. tostring(n) .. ',' .. string.format('%.6f', step)
redis.call('SET', KEYS[2], slots, 'EX', ttl)
return slots
"""
# KEYS: the day's count. ARGV: wanted, cap, ttl. Returns how many of ``wanted`` it grants.
_TAKE_DAY = """
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local over = math.max(0, math.min(tonumber(ARGV[1]), count - tonumber(ARGV[2])))
if over > 0 then redis.call('DECRBY', KEYS[1], over) end
return tonumber(ARGV[1]) - over
"""
# KEYS: the slowdown. ARGV: most, ttl. Doubles it.
_SLOW = """
local factor = math.min(tonumber(ARGV[1]), 2 * tonumber(redis.call('GET', KEYS[1]) or '1'))
redis.call('SET', KEYS[1], tostring(factor), 'EX', ARGV[2])
return factor
"""


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``limit`` messages per ``period`` seconds."""

    limit: int
    period: float
    unit: str = "second"

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``30/minute``, ``20/second``, ``500/hour``; ValueError saying what would be right."""
        match = _RATE.match(text)
        if not match or int(match.group(1)) < 1:
            raise InvalidValueError(f"{text!r} is not a positive number per second, minute or hour (e.g. 30/minute)")
        return cls(int(match.group(1)), PERIODS[match.group(2)], match.group(2))

    @property
    def interval(self) -> float:
        """Seconds between two slots: the period over the limit, and :data:`HEADROOM` more, so
        that the time a message takes to reach the relay (which varies by some milliseconds,
        more on a busy machine) cannot bunch more than the limit into one of the relay's seconds."""
        return self.period / self.limit * HEADROOM

    def __str__(self) -> str:
        return f"{self.limit}/{self.unit}"


def horizon(rate: Rate) -> float:
    """How far off a slot may be for the thread to wait for it: :data:`HORIZON_S`, or one and
    a half intervals for a slow rate (up to :data:`MAX_HORIZON_S`), so that a batch at 20 a
    minute is sent by one thread in turn rather than as one queue retry per e-mail."""
    return max(HORIZON_S, min(MAX_HORIZON_S, 1.5 * rate.interval))


def group_size(rate: Rate, most: int) -> int:
    """How many messages may go together (pipelined on one SMTP connection): a twentieth of
    a second's worth, at least one and at most ``most``. A group is sent at its last slot,
    so it never goes early; it makes a second's count at most the rate plus the group."""
    return max(1, min(most, int(rate.limit / rate.period / 20)))


@dataclass(frozen=True, slots=True)
class Limits:
    """What one channel keeps to: its rate and daily cap (either may be None), the time zone
    its days are counted in and the window a day's sending resumes in."""

    rate: Rate | None
    daily: int | None
    tz: ZoneInfo
    window: SendWindow | None = None


@dataclass
class Pacer:
    """One batch's pace on one channel: reserves and keeps its slots, counts the day, and
    says which deliveries to postpone. Built per batch (:meth:`for_batch`); not thread-safe."""

    client: redis.Redis
    channel: str
    limits: Limits
    owner: str
    namespace: str = "notifier"
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    _slots: list[float] = field(default_factory=list)  # this batch's reserved slots, earliest first
    _postponed: RateLimitedError | None = None
    _began: float | None = None
    _loaded: bool = False  # the reservation a postponed message kept has been read

    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, "pace", self.channel, *parts))

    def send(
        self,
        items: Sequence[T],
        send: Callable[[list[int]], None],
        postpone: Callable[[int, RateLimitedError], None],
        *,
        wanted: int,
        most: int,
    ) -> None:
        """Send ``items`` at the pace: ``send(indices)`` each group at its slot, and
        ``postpone(i, error)`` each one that must wait; ``wanted`` is how many this batch
        still has to send (these included), reserved in one go."""
        i = 0
        size = group_size(self.limits.rate, most) if self.limits.rate else len(items)
        while i < len(items):
            error = self._postponed or self._wait_for_slots(min(size, len(items) - i), wanted - i)
            if error is not None:
                self._postponed = error
                for j in range(i, len(items)):
                    postpone(j, error)
                return
            n = self._take_day(min(size, len(items) - i))
            if n:
                send(list(range(i, i + n)))
                i += n

    def _wait_for_slots(self, n: int, wanted: int) -> RateLimitedError | None:
        """Wait for the slots of the next ``n`` sends (reserving ``wanted`` if need be); the
        error to postpone them with if they are too far off."""
        rate = self.limits.rate
        if rate is None:
            return None
        now = self.clock()
        self._began = self._began if self._began is not None else now
        if not self._loaded:
            self._slots, self._loaded = self._load(now), True
        self._slots = [s for s in self._slots if s >= now - LATE_S]
        if len(self._slots) < n:
            self._slots = self._reserve(now, max(n, wanted))
        last = self._slots[n - 1]
        if last - now > horizon(rate) or (last > now and now - self._began > HOLD_S):
            wait = max(0.0, self._slots[0] - now - LEAD_S)
            self.keep()
            return RateLimitedError(
                f"{self.channel} at its rate of {rate}: due again in {wait:.0f} s", retry_after=wait
            )
        if last > now:
            self.sleep(last - now)
        del self._slots[:n]
        return None

    def _load(self, now: float) -> list[float]:
        """The slots this message reserved before it was postponed and still good."""
        text = self.client.get(self._key("resv", self.owner))
        return [s for s in _slots(text) if s >= now - LATE_S] if text else []

    def _reserve(self, now: float, n: int) -> list[float]:
        assert self.limits.rate is not None
        keys = (self._key("tat"), self._key("resv", self.owner), self._key("slow"))
        text = self.client.eval(_RESERVE, 3, *keys, repr(now), repr(self.limits.rate.interval), n, _KEEP_S)
        return _slots(text)

    def keep(self) -> None:
        """Keep the slots this batch did not use for its retry (one round trip; none when
        it used them all)."""
        if self._slots and self.limits.rate is not None:
            step = self._slots[1] - self._slots[0] if len(self._slots) > 1 else self.limits.rate.interval
            value = f"{self._slots[0]:.6f},{len(self._slots)},{step:.6f}"
            ttl = math.ceil(self._slots[-1] - self.clock()) + _KEEP_S
            self.client.set(self._key("resv", self.owner), value, ex=max(_KEEP_S, ttl))

    def _take_day(self, n: int) -> int:
        """How many of ``n`` sends today's cap still allows; postpones the rest till tomorrow."""
        cap = self.limits.daily
        if cap is None:
            return n
        now = datetime.fromtimestamp(self.clock(), UTC)
        day = now.astimezone(self.limits.tz).date().isoformat()
        granted = int(self.client.eval(_TAKE_DAY, 1, self._key("day", day), n, cap, _KEEP_S))
        if granted < n:
            resume = next_day_opening(self.limits.window, now, self.limits.tz)
            wait = min((resume - now).total_seconds(), MAX_WAIT_S)
            self._postponed = RateLimitedError(
                f"{self.channel} sent its {cap} for {day}: continues {resume:%a %d %b %H:%M %Z}", retry_after=wait
            )
        return granted

    def throttled(self) -> None:
        """The relay said "too many": halve the channel's rate for a while (every worker's)."""
        self.client.eval(_SLOW, 1, self._key("slow"), MAX_SLOWDOWN, SLOW_FOR_S)


def _slots(text: bytes | str) -> list[float]:
    start, n, step = (text.decode() if isinstance(text, bytes) else text).split(",")
    return [float(start) + i * float(step) for i in range(int(n))]


def finish(limits: Limits | None, count: int, start: datetime) -> datetime | None:
    """When ``count`` messages starting at ``start`` would all be sent at this pace (None:
    no rate or cap, as fast as the channel goes). Ignores the slowdowns a relay may ask for."""
    if limits is None or count <= 0 or (limits.rate is None and limits.daily is None):
        return None
    at, left = start, count
    while True:
        today = left if limits.daily is None else min(left, limits.daily)
        seconds = (today - 1) * limits.rate.interval if limits.rate else 0.0
        end = at + timedelta(seconds=seconds)
        left -= today
        if left <= 0:
            return end
        at = next_day_opening(limits.window, at, limits.tz)
