"""Who hears of an event: lists, includes, de-duplication and suppression. Pure.

A recipient is one e-mail address, compared case-insensitively: a person in both the CSP
and SOCJAG lists is told once. Each recipient remembers which lists brought them in, so the
report can show why they were told.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from notifier.config import Member, StakeholderList
from notifier.memo import collector_paused

_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Recipient:
    """One person to tell, merged across every list they are in."""

    email: str
    name: str | None = None
    organisation: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    lists: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The identity of this recipient: the address, lower-cased."""
        return self.email.lower()

    def context(self) -> dict[str, Any]:
        """What templates see as ``recipient``."""
        return {**self.extra, "email": self.email, "name": self.name, "organisation": self.organisation}


@dataclass(frozen=True, slots=True)
class Suppressed:
    """A recipient left out, and why (``subscribed: false``, unsubscribed, bounced)."""

    recipient: Recipient
    reason: str


@dataclass(frozen=True, slots=True, weakref_slot=True)  # weakly referable: the memo must not keep one alive
class Audience:
    """The resolved audience of an event: who is told, who is left out, and any warnings."""

    recipients: tuple[Recipient, ...]
    suppressed: tuple[Suppressed, ...] = ()
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.recipients)

    def find(self, email: str) -> Recipient | None:
        """The recipient (told or suppressed) with this address, if any."""
        key = email.lower()
        for recipient in self.recipients:
            if recipient.key == key:
                return recipient
        for item in self.suppressed:
            if item.recipient.key == key:
                return item.recipient
        return None


def expand(lists: Mapping[str, StakeholderList], names: Iterable[str]) -> list[str]:
    """Every list reached from ``names`` through includes, each once, in first-seen order."""
    seen: dict[str, None] = {}
    stack = list(reversed(list(names)))
    while stack:
        list_id = stack.pop()
        if list_id in seen:
            continue
        seen[list_id] = None
        stack.extend(reversed(lists[list_id].include))
    return list(seen)


def resolve(
    lists: Mapping[str, StakeholderList],
    names: Iterable[str],
    *,
    suppressed: Mapping[str, str] | None = None,
) -> Audience:
    """The union of the lists ``names`` (with their includes), de-duplicated by address.

    ``suppressed`` maps lower-cased addresses to a reason (unsubscribed, bounced); members
    marked ``subscribed: false`` in any list are suppressed too. Conflicting names for one
    address across lists are a warning, and the first name seen wins.
    """
    order = expand(lists, names)
    if suppressed:
        return _paused(lists, order, suppressed)
    chosen = tuple(lists[list_id] for list_id in order)
    key = (tuple(order), tuple(map(id, chosen)))
    with _MEMO_LOCK:
        entry = _MEMO.get(key)
        if entry is not None and all(ref() is item for ref, item in zip(entry[0], chosen, strict=True)):
            return entry[1]
    audience = _paused(lists, order, {})
    with _MEMO_LOCK:
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.clear()

        def forget(_: object, key: tuple[tuple[str, ...], tuple[int, ...]] = key) -> None:
            with _MEMO_LOCK:
                _MEMO.pop(key, None)

        _MEMO[key] = (tuple(weakref.ref(item, forget) for item in chosen), audience)
    return audience


# The last few audiences resolved without ``suppressed``, by the lists they came from: the
# ids in order and the very StakeholderList objects (frozen models of tuples of frozen
# members, so the same objects always give the same audience). ``notifier send`` checks
# every event of a consultation, and most events share the consultation's audience: at
# 100,000 members each resolve is a third of a second. An entry holds only weak references
# to its lists, checked on every hit, and is dropped as soon as one of them is (a config
# reload), so it never keeps an old config's audience alive.
_MEMO: dict[tuple[tuple[str, ...], tuple[int, ...]], tuple[tuple[weakref.ref[StakeholderList], ...], Audience]] = {}
_MEMO_MAX = 4
_MEMO_LOCK = threading.RLock()


def _paused(lists: Mapping[str, StakeholderList], order: list[str], suppressed: Mapping[str, str]) -> Audience:
    """:func:`_resolve` with the cyclic garbage collector paused.

    At 100,000 members, building the result allocates hundreds of thousands of objects,
    and the cyclic collector would run full passes over the whole heap (the config's
    members included) several times while it does: most of the cost. Nothing made here
    can form a cycle, so the collector is paused for the duration.
    """
    with collector_paused():
        return _resolve(lists, order, suppressed)


def opted_out(lists: Mapping[str, StakeholderList], names: Iterable[str]) -> tuple[Suppressed, ...]:
    """Who :func:`resolve` leaves out for ``subscribed: false``, with the same lists and
    reasons, without building a recipient for everyone else."""
    order = expand(lists, names)
    keys = {m.email.lower() for list_id in order for m in lists[list_id].members if not m.subscribed}
    if not keys:
        return ()
    return _resolve(lists, order, {}, only=keys).suppressed


_new = object.__new__
_SET_EMAIL, _SET_NAME, _SET_ORGANISATION, _SET_EXTRA, _SET_LISTS = (
    Recipient.__dict__[name].__set__ for name in ("email", "name", "organisation", "extra", "lists")
)


def _recipient(
    email: str, name: str | None, organisation: str | None, extra: Mapping[str, Any], lists: tuple[str, ...]
) -> Recipient:
    """``Recipient(email, name, organisation, extra, lists)``, set through the slots
    directly: a frozen dataclass's ``__init__`` goes through ``object.__setattr__`` for each
    field, which is half the cost at 100,000 recipients."""
    recipient = _new(Recipient)
    _SET_EMAIL(recipient, email)
    _SET_NAME(recipient, name)
    _SET_ORGANISATION(recipient, organisation)
    _SET_EXTRA(recipient, extra)
    _SET_LISTS(recipient, lists)
    return recipient


def _resolve(
    lists: Mapping[str, StakeholderList],
    order: list[str],
    suppressed: Mapping[str, str],
    *,
    only: set[str] | None = None,
) -> Audience:
    # ``order``: the lists from expand(). ``only``: these keys alone.
    seen = _collect(lists, order, only)
    return _sort_out(seen, suppressed)


@dataclass(slots=True)
class _Seen:
    """What one pass over the members found, keyed by lower-cased address: one dict entry
    per address and no containers per member (at 100,000 people that is what keeps
    ``resolve`` under its one-second target)."""

    first: dict[str, Member]  # key -> first member seen
    found_in: dict[str, str | list[str]]  # key -> its list id, or ids when several
    opted_out: dict[str, str]  # key -> first list with subscribed: false
    warnings: list[str]


def _collect(lists: Mapping[str, StakeholderList], order: list[str], only: set[str] | None) -> _Seen:
    """Walk the members of ``order``'s lists once: keep each person's first entry, every list
    they are in, the first list that opts them out, and a warning when two lists name them
    differently."""
    first: dict[str, Member] = {}
    found_in: dict[str, str | list[str]] = {}
    opted_out: dict[str, str] = {}
    warnings: list[str] = []
    for list_id in order:
        for member in lists[list_id].members:
            key = member.email.lower()
            if only is not None and key not in only:
                continue
            seen = first.get(key)
            if seen is None:
                first[key] = member
                found_in[key] = list_id
            else:
                where = found_in[key]
                if isinstance(where, str):
                    if where != list_id:
                        found_in[key] = [where, list_id]
                elif list_id not in where:
                    where.append(list_id)
                if member.name and seen.name and member.name != seen.name:
                    origin = where if isinstance(where, str) else where[0]
                    warnings.append(
                        f"{member.email}: named {seen.name!r} in {origin!r} but {member.name!r} in {list_id!r}"
                    )
            if not member.subscribed and key not in opted_out:
                opted_out[key] = list_id
    return _Seen(first, found_in, opted_out, warnings)


def _sort_out(seen: _Seen, suppressed: Mapping[str, str]) -> Audience:
    """Make one recipient per person found and put each in the audience, or among the
    suppressed with its reason (opted out in a list first, then the ``suppressed`` map)."""
    found_in, opted_out = seen.found_in, seen.opted_out
    recipients: list[Recipient] = []
    left_out: list[Suppressed] = []
    single: dict[str, tuple[str, ...]] = {}  # one shared tuple per list for people in one list
    for key, member in seen.first.items():
        where = found_in[key]
        if isinstance(where, str):
            list_ids = single.get(where)
            if list_ids is None:
                list_ids = single[where] = (where,)
        else:
            list_ids = tuple(where)
        extra = member.__pydantic_extra__  # what model_extra returns, without the property call
        recipient = _recipient(
            member.email,
            member.name,
            member.organisation,
            MappingProxyType(extra) if extra else _NO_EXTRA,  # a read-only view, not a copy
            list_ids,
        )
        if key in opted_out:
            left_out.append(Suppressed(recipient, f"subscribed: false in {opted_out[key]}"))
        elif key in suppressed:
            left_out.append(Suppressed(recipient, suppressed[key]))
        else:
            recipients.append(recipient)
    return Audience(tuple(recipients), tuple(left_out), tuple(seen.warnings))
