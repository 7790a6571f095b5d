"""The Redis record of every delivery: what fired, who was told, how it went.

It is also what makes every side effect happen once:

* an event occurrence is claimed atomically before it fires (two schedulers, one firing);
* an occurrence is fanned out by one ``fire`` message at a time (``fanner`` in ``occ:<id>``),
  so a second ``fire`` does nothing while the first is at it or once it is done;
* a delivery is claimed (``SET NX`` with a lease, owned by a live worker) before it is sent,
  so two workers never send the same one, and a claim held by a dead worker is taken over
  (a holder with no heartbeat at all counts as alive until its claim is ``DEAD_AFTER_MS`` old);
* a delivery already ``sent`` (or ``outbox``, ``failed``, ``suppressed``, ``skipped``) is never sent again.

Keys, under ``<namespace>:`` (``notifier`` for the real ledger, another for rehearsals):

=========================  ==================================================================
``fired:<c>:<e>``          id of the latest occurrence of event e of consultation c
``seq:<c>:<e>``            occurrence counter (``send --again`` makes a new one)
``missed:<c>:<e>``         when a scheduled event was missed past the grace period
``occ:<id>``               hash: consultation, event, number, at, fired_at, late, state, and
                           fanner, fanner_at (the ``fire`` message fanning it out, since when);
                           an acknowledgement's also holds its ``response`` (JSON)
``occs:<c>``               sorted set of the consultation's occurrences by firing time
``st:<id>``                hash ``<channel>|<recipient>`` -> status
``dl:<id>``                hash ``<channel>|<recipient>`` -> JSON :class:`Record` as fanned out
``out:<id>``               hash ``<channel>|<recipient>`` -> JSON :class:`Outcome`, once attempted
``cnt:<id>``               hash ``<channel>|<status>`` -> count (``notifier retry`` moves failed ones back)
``claim:<id>:<field>``     the worker sending that delivery now (with a lease)
``suppressed``             hash address -> JSON {reason, at}
``arc:<id>``               list of fields whose delivery became final, not yet archived to the
                           database (:mod:`notifier.archive` drains it in batches)
``arcq``                   set of occurrence ids whose ``arc:<id>`` may hold fields
``workers``                sorted set of live worker ids by last heartbeat
=========================  ==================================================================
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal, cast

import redis

from notifier.broker import DEAD_AFTER_MS, NAMESPACE, WORKERS_KEY, text
from notifier.errors import UnknownOccurrenceError

#: ``outbox``: written to the outbox (Maildir, JSONL file) instead of delivered; final like ``sent``.
#: ``skipped``: left out by the event's ``skip`` (the recipient or their organisation responded).
#: ``bounced``: sent, and a bounce came back later (:mod:`notifier.bounces`); final.
Status = Literal["pending", "sent", "outbox", "failed", "suppressed", "skipped", "bounced"]
FINAL: frozenset[str] = frozenset({"sent", "outbox", "failed", "suppressed", "skipped", "bounced"})
#: Done and successful: never sent again, and not a failure for exit codes.
SUCCEEDED: frozenset[str] = frozenset({"sent", "outbox"})
#: The statuses a delivery can have, in the order summaries show them.
STATUSES: tuple[Status, ...] = ("sent", "outbox", "failed", "bounced", "suppressed", "skipped", "pending")
#: An occurrence's state (``occ:<id>`` field ``state``) once claimed to fire, before it has fanned out.
CLAIMED = "claimed"
#: An occurrence's state once every delivery is recorded (the Lua scripts here spell it too).
FANNED_OUT = "fanned-out"
CLAIM_LEASE_MS = 300_000
CHUNK = 1_000
#: ``json.dumps`` with options builds an encoder on every call; this one is built once.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


_second: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """Now, UTC, ISO 8601 to the millisecond (``2026-11-27T23:13:16.480+00:00``, as
    ``datetime.isoformat(timespec="milliseconds")`` writes it). Every delivery stamps one or
    two of these, so the text up to the second is made once a second (about 3x cheaper)."""
    global _second
    now = time.time()
    second = int(now)
    if _second[0] != second:
        _second = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{int((now - second) * 1000):03d}+00:00"


@dataclass(frozen=True, slots=True)
class Record:
    """One delivery: (occurrence, channel, recipient) and how it went."""

    channel: str
    recipient: str
    status: Status = "pending"
    name: str | None = None
    lists: tuple[str, ...] = ()
    attempts: int = 0
    error: str | None = None
    provider_id: str | None = None
    url: str | None = None
    created: str = field(default_factory=now_iso)
    updated: str | None = None
    sent_at: str | None = None

    @property
    def field(self) -> str:
        """The hash field of this delivery."""
        return f"{self.channel}|{self.recipient}"

    def to_json(self) -> str:
        """Compact JSON for Redis."""
        return _encode({name: getattr(self, name) for name in _RECORD_FIELDS})  # asdict() is 5x slower

    @classmethod
    def from_json(cls, data: bytes | str) -> Record:
        """The record stored as ``data``."""
        raw = json.loads(data)
        raw["lists"] = tuple(raw.get("lists") or ())
        return cls(**raw)

    def having(self, outcome: Outcome) -> Record:
        """This record as ``outcome`` left it."""
        return replace(self, **{name: getattr(outcome, name) for name in _OUTCOME_FIELDS})


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a delivery has gone so far: the part of its :class:`Record` that sending changes.

    A worker claims and marks deliveries with these rather than whole records: the name,
    lists and creation time written when the occurrence fanned out never change, so they
    are neither read back nor written again for every attempt.
    """

    status: Status = "pending"
    attempts: int = 0
    error: str | None = None
    provider_id: str | None = None
    url: str | None = None
    updated: str | None = None
    sent_at: str | None = None

    def to_json(self) -> str:
        """Compact JSON for Redis."""
        return _encode(
            {
                "status": self.status,
                "attempts": self.attempts,
                "error": self.error,
                "provider_id": self.provider_id,
                "url": self.url,
                "updated": self.updated,
                "sent_at": self.sent_at,
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> Outcome:
        """The outcome stored as ``data``."""
        return cls(**json.loads(data))


_RECORD_FIELDS = tuple(f.name for f in fields(Record))
_OUTCOME_FIELDS = tuple(f.name for f in fields(Outcome))


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One firing of an event: ``send --again`` makes another of the same event."""

    id: str
    consultation: str
    event: str
    number: int
    at: datetime
    fired_at: datetime
    late: bool = False
    state: str = CLAIMED
    rehearsal: bool = False
    #: The ``closes`` it told, and the one before an extension (:mod:`notifier.extension` keeps
    #: them in the hash; the record keeps them too, so they outlive Redis).
    closes: datetime | None = None
    previous_closes: datetime | None = None

    @classmethod
    def from_hash(cls, occurrence_id: str, data: Mapping[Any, Any]) -> Occurrence:
        """Decode the ``occ:<id>`` hash."""
        d = {text(k): text(v) for k, v in data.items()}
        return cls(
            id=occurrence_id,
            consultation=d["consultation"],
            event=d["event"],
            number=int(d["number"]),
            at=datetime.fromisoformat(d["at"]),
            fired_at=datetime.fromisoformat(d["fired_at"]),
            late=d.get("late") == "1",
            state=d.get("state", CLAIMED),
            rehearsal=d.get("rehearsal") == "1",
        )


ClaimState = Literal["claimed", "busy", "final"]


@dataclass(frozen=True, slots=True)
class Claim:
    """The result of claiming one delivery, and how its earlier attempts went."""

    field: str
    state: ClaimState
    outcome: Outcome


# Whether the holder of a claim ("<worker id>|<message id>", taken at ``since`` ms) is dead: its
# worker's heartbeat when it has one, else the time of the claim itself, is older than dead_after.
# So a worker that has not beaten yet (or a process that is no worker) keeps its claim for
# dead_after after taking it, rather than losing it at once.
_DEAD = """
local function dead(workers, holder, since, now, dead_after)
  local seen = redis.call('ZSCORE', workers, string.match(holder, '^([^|]*)'))
  local last = seen and tonumber(seen) or since
  return last < now - dead_after
end
"""

# KEYS: st, out, workers.  ARGV: owner, lease_ms, now_ms, dead_after_ms, claim_prefix, fields...
# An owner is "<worker id>|<message id>": the same message (a Dramatiq retry) may take its own
# claims back, another message of the same worker may not; a claim whose holder is dead is free.
# A claim's age is its lease less what is left of it.
_CLAIM = (
    _DEAD
    + """
local now, lease, dead_after = tonumber(ARGV[3]), tonumber(ARGV[2]), tonumber(ARGV[4])
local out = {}
for i = 6, #ARGV do
  local f = ARGV[i]
  local status = redis.call('HGET', KEYS[1], f)
  local state
  if status == 'sent' or status == 'outbox' or status == 'failed' or status == 'suppressed'
      or status == 'skipped' or status == 'bounced' then
    state = 'final'
  else
    local key = ARGV[5] .. f
    if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
      state = 'claimed'
    else
      local holder = redis.call('GET', key)
      local since = now - (lease - redis.call('PTTL', key))
      if holder == ARGV[1] or dead(KEYS[3], holder, since, now, dead_after) then
        redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
        state = 'claimed'
      else
        state = 'busy'
      end
    end
  end
  out[#out + 1] = state
  out[#out + 1] = redis.call('HGET', KEYS[2], f) or ''
end
return out
"""
)

# KEYS: occ, workers.  ARGV: owner, now_ms, dead_after_ms.  Take the fan-out of an occurrence:
# 1 when the caller is to fan out, 0 when it is done or a live owner is at it, false if unknown.
# A redelivery of the same message (same message id, any worker) takes it back.
_TAKE_FAN_OUT = (
    _DEAD
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'fanned-out' then return 0 end
local holder = redis.call('HGET', KEYS[1], 'fanner')
if holder and string.match(holder, '|(.*)$') ~= string.match(ARGV[1], '|(.*)$') then
  local since = tonumber(redis.call('HGET', KEYS[1], 'fanner_at'))
  if not dead(KEYS[2], holder, since, tonumber(ARGV[2]), tonumber(ARGV[3])) then return 0 end
end
redis.call('HSET', KEYS[1], 'fanner', ARGV[1], 'fanner_at', ARGV[2])
return 1
"""
)

# KEYS: occ.  ARGV: owner.  Only the owner gives a fan-out up.
_RELEASE_FAN_OUT = """
if redis.call('HGET', KEYS[1], 'fanner') == ARGV[1] then redis.call('HDEL', KEYS[1], 'fanner', 'fanner_at') end
return 1
"""

# KEYS: st, out, cnt, arc, arcq.  ARGV: claim_prefix, owner, occurrence id, then triples (field, status,
# outcome json). Counts move only when the status changes; a sent (or outbox) delivery stays so; only the
# owner releases a claim. A final outcome is queued for the database (arc, arcq) in the same step.
_MARK = """
for i = 4, #ARGV, 3 do
  local f, status, outcome = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local old = redis.call('HGET', KEYS[1], f)
  if old ~= 'sent' and old ~= 'outbox' and old ~= 'bounced' then
    local channel = string.match(f, '^([^|]*)|')
    if old ~= status then
      redis.call('HSET', KEYS[1], f, status)
      if old then redis.call('HINCRBY', KEYS[3], channel .. '|' .. old, -1) end
      redis.call('HINCRBY', KEYS[3], channel .. '|' .. status, 1)
    end
    redis.call('HSET', KEYS[2], f, outcome)
    if status ~= 'pending' then
      redis.call('RPUSH', KEYS[4], f)
      redis.call('SADD', KEYS[5], ARGV[3])
    end
  end
  local key = ARGV[1] .. f
  if redis.call('GET', key) == ARGV[2] then redis.call('DEL', key) end
end
return 1
"""

# KEYS: st, out, cnt.  ARGV: updated (now).  Every failed delivery back to pending with a fresh
# count of attempts (its last error kept until the next attempt); returns their fields.
_REQUEUE = """
local fields = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i + 1] == 'failed' then
    local f = all[i]
    local channel = string.match(f, '^([^|]*)|')
    redis.call('HSET', KEYS[1], f, 'pending')
    redis.call('HINCRBY', KEYS[3], channel .. '|failed', -1)
    redis.call('HINCRBY', KEYS[3], channel .. '|pending', 1)
    local raw = redis.call('HGET', KEYS[2], f)
    if raw then
      local outcome = cjson.decode(raw)
      outcome['status'] = 'pending'
      outcome['attempts'] = 0
      outcome['updated'] = ARGV[1]
      redis.call('HSET', KEYS[2], f, cjson.encode(outcome))
    end
    fields[#fields + 1] = f
  end
end
return fields
"""

# KEYS: st, dl, cnt, arc, arcq.  ARGV: occurrence id, then triples (field, status, json).  Adds what is
# not there yet; one final already (suppressed) is queued for the database.
_ADD = """
local added = 0
for i = 2, #ARGV, 3 do
  local f = ARGV[i]
  if redis.call('HSETNX', KEYS[1], f, ARGV[i + 1]) == 1 then
    redis.call('HSET', KEYS[2], f, ARGV[i + 2])
    redis.call('HINCRBY', KEYS[3], string.match(f, '^([^|]*)|') .. '|' .. ARGV[i + 1], 1)
    if ARGV[i + 1] ~= 'pending' then
      redis.call('RPUSH', KEYS[4], f)
      redis.call('SADD', KEYS[5], ARGV[1])
    end
    added = added + 1
  end
end
return added
"""

# KEYS: st, out, cnt, arc, arcq.  ARGV: occurrence id, field, error, updated.  A delivery that was
# sent (or is pending or failed) becomes bounced, its error the bounce's; 1 when it changed, 0 when
# it was bounced already, -1 when there is no such delivery.  Queued for the database like any outcome.
_BOUNCE = """
local old = redis.call('HGET', KEYS[1], ARGV[2])
if not old then return -1 end
if old == 'bounced' then return 0 end
local channel = string.match(ARGV[2], '^([^|]*)|')
redis.call('HSET', KEYS[1], ARGV[2], 'bounced')
redis.call('HINCRBY', KEYS[3], channel .. '|' .. old, -1)
redis.call('HINCRBY', KEYS[3], channel .. '|bounced', 1)
local raw = redis.call('HGET', KEYS[2], ARGV[2])
local outcome = raw and cjson.decode(raw) or {attempts = 0}
outcome['status'] = 'bounced'
outcome['error'] = ARGV[3]
outcome['updated'] = ARGV[4]
redis.call('HSET', KEYS[2], ARGV[2], cjson.encode(outcome))
redis.call('RPUSH', KEYS[4], ARGV[2])
redis.call('SADD', KEYS[5], ARGV[1])
return 1
"""

# KEYS: fired, seq, occ_prefix, occs, missed.  ARGV: again, consultation, event, at, fired_at, late, rehearsal
_FIRE = """
if ARGV[1] == '0' and redis.call('EXISTS', KEYS[1]) == 1 then return false end
local n = redis.call('INCR', KEYS[2])
local id = ARGV[2] .. ':' .. ARGV[3] .. ':' .. n
redis.call('SET', KEYS[1], id)
redis.call('HSET', KEYS[3] .. id, 'consultation', ARGV[2], 'event', ARGV[3], 'number', n,
  'at', ARGV[4], 'fired_at', ARGV[5], 'late', ARGV[6], 'rehearsal', ARGV[7], 'state', 'claimed')
redis.call('ZADD', KEYS[4], ARGV[8], id)
redis.call('DEL', KEYS[5])
return id
"""

# KEYS: occ, occs.  ARGV: id, consultation, event, number, at, fired_at, score, then field/value
# pairs.  Starts the occurrence its caller named unless it exists: 1 when it was new.
_FIRE_NAMED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'consultation', ARGV[2], 'event', ARGV[3], 'number', ARGV[4], 'at', ARGV[5],
  'fired_at', ARGV[6], 'late', '0', 'rehearsal', '0', 'state', 'claimed')
for i = 8, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[1])
return 1
"""


# KEYS: fired, seq, occ, occs.  ARGV: id, number, consultation, event, at, fired_at, late, score.
_RESTORE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[2]) then redis.call('SET', KEYS[2], ARGV[2]) end
redis.call('HSET', KEYS[3], 'consultation', ARGV[3], 'event', ARGV[4], 'number', ARGV[2], 'at', ARGV[5],
  'fired_at', ARGV[6], 'late', ARGV[7], 'rehearsal', '0', 'state', 'fanned-out', 'restored', '1')
redis.call('ZADD', KEYS[4], ARGV[8], ARGV[1])
return 1
"""

# KEYS: claim keys.  ARGV: the holder each had when read.  Frees the claims still so held.
_RELEASE = """
local freed = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('DEL', KEYS[i])
    freed = freed + 1
  end
end
return freed
"""


class Ledger:
    """The delivery ledger in Redis, under ``namespace`` (one per real ledger or rehearsal)."""

    def __init__(self, client: redis.Redis, *, namespace: str = NAMESPACE) -> None:
        self.client = client
        self.ns = namespace
        self._claim = client.register_script(_CLAIM)
        self._mark = client.register_script(_MARK)
        self._add = client.register_script(_ADD)
        self._fire = client.register_script(_FIRE)
        self._fire_named = client.register_script(_FIRE_NAMED)
        self._requeue = client.register_script(_REQUEUE)
        self._take_fan_out = client.register_script(_TAKE_FAN_OUT)
        self._release_fan_out = client.register_script(_RELEASE_FAN_OUT)
        self._release = client.register_script(_RELEASE)
        self._restore = client.register_script(_RESTORE)
        self._bounce = client.register_script(_BOUNCE)

    def _k(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    # -- occurrences --------------------------------------------------------

    def claim_occurrence(  # noqa: PLR0913 - the occurrence and its keyword-only flags, all stored with it
        self,
        consultation: str,
        event: str,
        *,
        at: datetime,
        again: bool = False,
        late: bool = False,
        rehearsal: bool = False,
    ) -> str | None:
        """Atomically start a new occurrence; None when the event already fired (and not ``again``)."""
        fired_at = datetime.now(UTC)
        result = self._fire(
            keys=[
                self._k("fired", consultation, event),
                self._k("seq", consultation, event),
                self._k("occ", ""),
                self._k("occs", consultation),
                self._k("missed", consultation, event),
            ],
            args=[
                "1" if again else "0",
                consultation,
                event,
                at.isoformat(),
                fired_at.isoformat(),
                "1" if late else "0",
                "1" if rehearsal else "0",
                fired_at.timestamp(),
            ],
        )
        return text(result) if result else None

    def restore(self, occurrence: Occurrence) -> bool:
        """Put back an occurrence that the database records and Redis has lost (a ``FLUSHALL``,
        a new empty Redis), as fanned out: the event is known as fired again, so it is not
        sent again, and ``send --again`` numbers its next occurrence after it. False (nothing
        changed) when Redis knows the event fired already."""
        return bool(
            self._restore(
                keys=[
                    self._k("fired", occurrence.consultation, occurrence.event),
                    self._k("seq", occurrence.consultation, occurrence.event),
                    self._k("occ", occurrence.id),
                    self._k("occs", occurrence.consultation),
                ],
                args=[
                    occurrence.id,
                    occurrence.number,
                    occurrence.consultation,
                    occurrence.event,
                    occurrence.at.isoformat(),
                    occurrence.fired_at.isoformat(),
                    "1" if occurrence.late else "0",
                    occurrence.fired_at.timestamp(),
                ],
            )
        )

    def fired(self, consultation: str, event: str) -> str | None:
        """The id of the latest occurrence of this event, if it fired."""
        value = self.client.get(self._k("fired", consultation, event))
        return text(value) if value else None

    def occurrence(self, occurrence_id: str) -> Occurrence:
        """The occurrence with this id (UnknownOccurrenceError, a KeyError, if unknown)."""
        data = self.client.hgetall(self._k("occ", occurrence_id))
        if not data:
            raise UnknownOccurrenceError(occurrence_id)
        return Occurrence.from_hash(occurrence_id, data)

    def take_fan_out(self, occurrence_id: str, *, owner: str) -> bool:
        """Whether ``owner`` (``<worker id>|<message id>``) is to fan the occurrence out: not when
        it is fanned out already or a live worker's other message is at it (a second ``fire``),
        yes when nobody is, a redelivery of the same message is, or the one who is has died.
        UnknownOccurrenceError (a KeyError) if the occurrence is unknown."""
        taken = self._take_fan_out(
            keys=[self._k("occ", occurrence_id), WORKERS_KEY], args=[owner, int(time.time() * 1000), DEAD_AFTER_MS]
        )
        if taken is None:
            raise UnknownOccurrenceError(occurrence_id)
        return bool(taken)

    def release_fan_out(self, occurrence_id: str, *, owner: str) -> None:
        """Give up a fan-out ``owner`` took and could not finish, so the next ``fire`` may take it."""
        self._release_fan_out(keys=[self._k("occ", occurrence_id)], args=[owner])

    def set_state(self, occurrence_id: str, state: str) -> None:
        """Move an occurrence on (claimed -> fanned-out)."""
        self.client.hset(self._k("occ", occurrence_id), "state", state)

    def occurrences(self, consultation: str) -> list[Occurrence]:
        """Every occurrence of the consultation's events, oldest first."""
        ids = [text(i) for i in self.client.zrange(self._k("occs", consultation), 0, -1)]
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self._k("occ", i))
        return [Occurrence.from_hash(i, d) for i, d in zip(ids, pipe.execute(), strict=True) if d]

    def claim_named_occurrence(  # noqa: PLR0913 - what names the occurrence, then keyword-only details
        self,
        occurrence_id: str,
        consultation: str,
        event: str,
        *,
        number: int,
        at: datetime,
        extra: Mapping[str, str] | None = None,
    ) -> bool:
        """Atomically start the occurrence ``occurrence_id`` (chosen by the caller, so that the
        same thing can only ever fire once, however often it is asked), with ``extra`` fields in
        its hash; False when it exists already. It does not become the event's latest
        (``fired``): an acknowledgement of one response is not "the" ``response_received``."""
        fired_at = datetime.now(UTC)
        args: list[str | float] = [
            occurrence_id,
            consultation,
            event,
            str(number),
            at.isoformat(),
            fired_at.isoformat(),
            fired_at.timestamp(),
        ]
        for key, value in (extra or {}).items():
            args += [key, value]
        return bool(self._fire_named(keys=[self._k("occ", occurrence_id), self._k("occs", consultation)], args=args))

    def keep_occurrence_field(self, occurrence_id: str, name: str, value: str) -> None:
        """Set a field of an occurrence's hash unless it is set already (the first value stays)."""
        self.client.hsetnx(self._k("occ", occurrence_id), name, value)

    def set_latest(self, consultation: str, event: str, occurrence_id: str) -> None:
        """Make ``occurrence_id`` the event's latest (``fired``): a named occurrence that is "the" event."""
        self.client.set(self._k("fired", consultation, event), occurrence_id)

    def occurrence_field(self, occurrence_id: str, name: str) -> str | None:
        """One field of an occurrence's hash (an ``extra`` of :meth:`claim_named_occurrence`)."""
        value = self.client.hget(self._k("occ", occurrence_id), name)
        return text(value) if value is not None else None

    def mark_missed(self, consultation: str, event: str, at: datetime) -> None:
        """Record that a scheduled event was missed beyond the grace period."""
        self.client.set(self._k("missed", consultation, event), at.isoformat(), nx=True)

    def missed(self, consultation: str, event: str) -> datetime | None:
        """When the event was missed, if it was."""
        value = self.client.get(self._k("missed", consultation, event))
        return datetime.fromisoformat(text(value)) if value else None

    # -- deliveries ---------------------------------------------------------

    def add(self, occurrence_id: str, records: Iterable[Record]) -> int:
        """Record deliveries not recorded yet (idempotent); how many were new."""
        keys = [
            self._k("st", occurrence_id),
            self._k("dl", occurrence_id),
            self._k("cnt", occurrence_id),
            *self._archive_keys(occurrence_id),
        ]
        added = 0
        for chunk in _chunks(records, CHUNK):
            args: list[str] = [occurrence_id]
            for record in chunk:
                args += [record.field, record.status, record.to_json()]
            added += int(self._add(keys=keys, args=args))
        return added

    def claim(self, occurrence_id: str, fields: list[str], *, owner: str) -> list[Claim]:
        """Claim deliveries for ``owner`` (``<worker id>|<message id>``): ``claimed`` ones are
        yours to send, ``busy`` ones a live worker is sending, ``final`` ones are done. One round trip."""
        now_ms = int(time.time() * 1000)
        raw = self._claim(
            keys=[self._k("st", occurrence_id), self._k("out", occurrence_id), WORKERS_KEY],
            args=[owner, CLAIM_LEASE_MS, now_ms, DEAD_AFTER_MS, self._k("claim", occurrence_id, ""), *fields],
        )
        first = Outcome()  # not attempted yet: most claims
        claims = []
        for i, f in enumerate(fields):
            state, data = text(raw[2 * i]), raw[2 * i + 1]
            claims.append(Claim(f, cast(ClaimState, state), Outcome.from_json(data) if data else first))
        return claims

    def mark(self, occurrence_id: str, outcomes: Iterable[tuple[str, Outcome]], *, owner: str) -> None:
        """Store how deliveries (by field, ``<channel>|<recipient>``) went and release their
        claims (one round trip)."""
        args: list[str] = [self._k("claim", occurrence_id, ""), owner, occurrence_id]
        for field_, outcome in outcomes:
            args += [field_, outcome.status, outcome.to_json()]
        if len(args) > 3:
            keys = [
                self._k("st", occurrence_id),
                self._k("out", occurrence_id),
                self._k("cnt", occurrence_id),
                *self._archive_keys(occurrence_id),
            ]
            self._mark(keys=keys, args=args)

    def requeue_failed(self, occurrence_id: str) -> list[str]:
        """Put every failed delivery of the occurrence back to pending, atomically, and return
        their fields (``<channel>|<recipient>``) to deliver again. Their Message-IDs stay the
        same (they are derived from the delivery); each starts a fresh count of attempts."""
        keys = [self._k("st", occurrence_id), self._k("out", occurrence_id), self._k("cnt", occurrence_id)]
        return [text(f) for f in self._requeue(keys=keys, args=[now_iso()])]

    def recorder(self, occurrence_id: str, *, owner: str) -> Recorder:
        """A :class:`Recorder` of ``owner``'s outcomes for one occurrence."""
        keys = (
            self._k("st", occurrence_id),
            self._k("out", occurrence_id),
            self._k("cnt", occurrence_id),
            *self._archive_keys(occurrence_id),
        )
        claim_prefix = self._k("claim", occurrence_id, "")
        return Recorder(
            self.client, self._mark.sha, keys, claim_prefix=claim_prefix, owner=owner, occurrence_id=occurrence_id
        )

    def _archive_keys(self, occurrence_id: str) -> tuple[str, str]:
        """The list of an occurrence's outcomes waiting for the database, and the set naming such lists."""
        return self._k("arc", occurrence_id), self._k("arcq")

    def counts(self, occurrence_id: str) -> dict[str, dict[str, int]]:
        """``{channel: {status: count}}`` for one occurrence."""
        out: dict[str, dict[str, int]] = {}
        for key, value in self.client.hgetall(self._k("cnt", occurrence_id)).items():
            channel, status = text(key).split("|", 1)
            if int(value):
                out.setdefault(channel, {})[status] = int(value)
        return out

    def records(self, occurrence_id: str) -> list[Record]:
        """Every delivery of one occurrence, as its latest attempt left it."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self._k("dl", occurrence_id))
        pipe.hgetall(self._k("out", occurrence_id))
        fanned_out, outcomes = pipe.execute()
        return [_merged(data, outcomes.get(f)) for f, data in fanned_out.items()]

    def record(self, occurrence_id: str, channel: str, recipient: str) -> Record | None:
        """One delivery, if recorded, as its latest attempt left it."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self._k("dl", occurrence_id), f"{channel}|{recipient}")
        pipe.hget(self._k("out", occurrence_id), f"{channel}|{recipient}")
        data, outcome = pipe.execute()
        return _merged(data, outcome) if data else None

    def bounce(self, occurrence_id: str, field_: str, error: str) -> int:
        """Mark the delivery ``field_`` (``<channel>|<recipient>``) bounced with ``error``: 1 when
        it changed, 0 when it was bounced already, -1 when Redis does not know it."""
        keys = [
            self._k("st", occurrence_id),
            self._k("out", occurrence_id),
            self._k("cnt", occurrence_id),
            *self._archive_keys(occurrence_id),
        ]
        return int(self._bounce(keys=keys, args=[occurrence_id, field_, error, now_iso()]))

    # -- suppression --------------------------------------------------------

    def suppress(self, email: str, reason: str) -> None:
        """Leave ``email`` out of every later event (unsubscribed, bounced)."""
        entry = json.dumps({"reason": reason, "at": now_iso()})
        self.client.hset(self._k("suppressed"), email.lower(), entry)

    def unsuppress(self, email: str) -> bool:
        """Take ``email`` back in; whether it was suppressed."""
        return bool(self.client.hdel(self._k("suppressed"), email.lower()))

    def suppressed(self) -> dict[str, str]:
        """Every suppressed address (lower-cased) and why."""
        return {text(k): json.loads(v)["reason"] for k, v in self.client.hgetall(self._k("suppressed")).items()}

    def suppressions(self, emails: list[str]) -> dict[str, str]:
        """Which of ``emails`` are suppressed (compared lower-cased, as stored), and why. One round trip."""
        values = self.client.hmget(self._k("suppressed"), [e.lower() for e in emails]) if emails else []
        return {e: json.loads(v)["reason"] for e, v in zip(emails, values, strict=True) if v}

    def suppression(self, email: str) -> str | None:
        """Why ``email`` is suppressed, or None."""
        value = self.client.hget(self._k("suppressed"), email.lower())
        return json.loads(value)["reason"] if value else None

    # -- scheduler ----------------------------------------------------------

    def latest(self, events: list[tuple[str, str]]) -> list[Occurrence | None]:
        """The latest occurrence of each ``(consultation, event)``, None where it never fired.
        Two round trips however many events."""
        pipe = self.client.pipeline(transaction=False)
        for consultation, event in events:
            pipe.get(self._k("fired", consultation, event))
        ids = [text(v) if v else None for v in pipe.execute()] if events else []
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            if i:
                pipe.hgetall(self._k("occ", i))
        found = iter(pipe.execute() if any(ids) else [])
        out: list[Occurrence | None] = []
        for i in ids:
            data = next(found) if i else None
            out.append(Occurrence.from_hash(i, data) if i and data else None)
        return out

    def unstarted(self, consultations: Iterable[str], *, older_than: float, within: float) -> list[Occurrence]:
        """Occurrences claimed between ``within`` and ``older_than`` seconds ago that are still
        ``claimed`` with no delivery recorded: their ``fire`` message may never have been sent."""
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        for consultation in consultations:
            pipe.zrangebyscore(self._k("occs", consultation), now - within, now - older_than)
        ids = [text(i) for found in pipe.execute() for i in found]
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self._k("occ", i))
            pipe.exists(self._k("st", i))
        replies = pipe.execute()
        out = []
        for n, i in enumerate(ids):
            data, recorded = replies[2 * n], replies[2 * n + 1]
            if data and not recorded:
                occurrence = Occurrence.from_hash(i, data)
                if occurrence.state == CLAIMED:
                    out.append(occurrence)
        return out

    def unfinished(self, consultations: Iterable[str], *, within: float) -> list[tuple[Occurrence, dict[str, int]]]:
        """Occurrences (not rehearsals) fired within ``within`` seconds that have not fanned
        out or still have pending deliveries, each with its counts by ``<channel>|<status>``."""
        since = time.time() - within
        pipe = self.client.pipeline(transaction=False)
        for consultation in consultations:
            pipe.zrangebyscore(self._k("occs", consultation), since, "+inf")
        ids = [text(i) for found in pipe.execute() for i in found]
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self._k("occ", i))
            pipe.hgetall(self._k("cnt", i))
        replies = pipe.execute() if ids else []
        out = []
        for n, i in enumerate(ids):
            data, raw = replies[2 * n], replies[2 * n + 1]
            counts = {text(k): int(v) for k, v in raw.items()}
            if not data:
                continue
            occurrence = Occurrence.from_hash(i, data)
            waiting = occurrence.state != FANNED_OUT or any(k.endswith("|pending") and v for k, v in counts.items())
            if waiting and not occurrence.rehearsal:
                out.append((occurrence, counts))
        return out

    def orphaned(self, occurrence_id: str, *, named: set[str], live: set[str]) -> list[str]:
        """The pending deliveries of an occurrence that no message will send: not ``named`` by
        a message Redis holds, and not claimed by a message in ``live`` (ids of those messages).
        A claim whose message is gone is freed, so that a new message can take it."""
        statuses = self.client.hgetall(self._k("st", occurrence_id))
        fields = [text(f) for f, status in statuses.items() if status == b"pending" and text(f) not in named]
        if not fields:
            return []
        keys = [self._k("claim", occurrence_id, f) for f in fields]
        holders = self.client.mget(keys)
        out, stale_keys, stale_holders = [], [], []
        for f, key, holder in zip(fields, keys, holders, strict=True):
            if holder is None:
                out.append(f)
            elif text(holder).partition("|")[2] not in live:
                out.append(f)
                stale_keys.append(key)
                stale_holders.append(holder)
        if stale_keys:
            self._release(keys=stale_keys, args=stale_holders)
        return out


class Recorder:
    """Stores outcomes one by one as they become known, without waiting for Redis.

    Each :meth:`record` writes one call of the mark script (as :meth:`Ledger.mark` would
    for that one delivery) on a connection of its own and returns: the replies are read by
    :meth:`flush`. So an e-mail is recorded as soon as the server has accepted it, for the
    cost of a write: a worker killed afterwards has not left it unrecorded (its write is in
    Redis' socket already), and only what was accepted and not yet read can be sent twice.
    A failed write raises at once (``redis.ConnectionError``), so nothing more is sent
    that could not be recorded.
    """

    def __init__(  # noqa: PLR0913 - keyword-only: what the recorder writes to and as whom
        self,
        client: redis.Redis,
        sha: str,
        keys: tuple[str, ...],
        *,
        claim_prefix: str,
        owner: str,
        occurrence_id: str,
    ) -> None:
        self._pool = client.connection_pool
        self._head = ("EVALSHA", sha, len(keys), *keys, claim_prefix, owner, occurrence_id)
        self._conn: Any = None
        self._unread = 0

    def record(self, field_: str, outcome: Outcome) -> None:
        """Write ``outcome`` for the delivery ``field_`` and release its claim (reply unread)."""
        if self._conn is None:
            self._conn = self._pool.get_connection()
            # The script cache is empty after a Redis restart: load it first on this connection.
            self._conn.send_command("SCRIPT", "LOAD", _MARK)
            self._unread = 1
        try:
            # No health check (a PING when the connection has been idle past the client's
            # health_check_interval): it would read an unread mark's reply instead of PONG.
            self._conn.send_command(*self._head, field_, outcome.status, outcome.to_json(), check_health=False)
        except BaseException:
            self.abort()
            raise
        self._unread += 1

    def flush(self) -> None:
        """Read every reply; raise the first error Redis answered (after reading them all)."""
        if self._conn is None:
            return
        errors: list[redis.ResponseError] = []
        try:
            while self._unread:
                self._unread -= 1
                try:
                    self._conn.read_response()
                except redis.ResponseError as exc:
                    errors.append(exc)
        except BaseException:
            self.abort()
            raise
        self._pool.release(self._conn)
        self._conn = None
        if errors:
            raise errors[0]

    def abort(self) -> None:
        """Drop the connection (replies may be unread, so it cannot be reused)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.disconnect()
            self._pool.release(conn)


def _merged(record: bytes | str, outcome: bytes | str | None) -> Record:
    """A delivery's record as fanned out, updated by its latest outcome if it has one."""
    found = Record.from_json(record)
    return found.having(Outcome.from_json(outcome)) if outcome else found


def _chunks(items: Iterable[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
