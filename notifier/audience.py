"""Who hears of an event: lists, includes, de-duplication and suppression. Pure.

A recipient is one e-mail address, compared case-insensitively: a person in both the CSP
and SOCJAG lists is told once. Each recipient remembers which lists brought them in, so the
report can show why they were told.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from notifier.config import Member, StakeholderList


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


@dataclass(frozen=True, slots=True)
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


def find_cycle(lists: Mapping[str, StakeholderList], start: str) -> list[str] | None:
    """The include path from ``start`` back to itself, e.g. ``[a, b, a]``, or None."""
    path: list[str] = []
    on_path: set[str] = set()
    done: set[str] = set()

    def visit(list_id: str) -> list[str] | None:
        if list_id in on_path:
            return [*path[path.index(list_id) :], list_id]
        if list_id in done or list_id not in lists:
            return None
        path.append(list_id)
        on_path.add(list_id)
        for included in lists[list_id].include:
            cycle = visit(included)
            if cycle:
                return cycle
        path.pop()
        on_path.discard(list_id)
        done.add(list_id)
        return None

    return visit(start)


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
    suppressed = suppressed or {}
    merged: dict[str, list[Any]] = {}  # key -> [first member, [list ids], opted-out list]
    warnings: list[str] = []
    for list_id in expand(lists, names):
        for member in lists[list_id].members:
            key = member.email.lower()
            entry = merged.get(key)
            if entry is None:
                merged[key] = [member, [list_id], None if member.subscribed else list_id]
                continue
            first: Member = entry[0]
            if list_id not in entry[1]:
                entry[1].append(list_id)
            if not member.subscribed and entry[2] is None:
                entry[2] = list_id
            if member.name and first.name and member.name != first.name:
                warnings.append(
                    f"{member.email}: named {first.name!r} in {entry[1][0]!r} but {member.name!r} in {list_id!r}"
                )
    recipients: list[Recipient] = []
    left_out: list[Suppressed] = []
    for key, (member, list_ids, opted_out_in) in merged.items():
        recipient = Recipient(
            email=member.email,
            name=member.name,
            organisation=member.organisation,
            extra=member.extra,
            lists=tuple(list_ids),
        )
        if opted_out_in is not None:
            left_out.append(Suppressed(recipient, f"subscribed: false in {opted_out_in}"))
        elif key in suppressed:
            left_out.append(Suppressed(recipient, suppressed[key]))
        else:
            recipients.append(recipient)
    return Audience(tuple(recipients), tuple(left_out), tuple(warnings))
