"""Checks across config files: includes, include cycles, audiences and channels that name real things.

Also the small checks the loaders share (an http(s) URL, how many problems are errors).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from notifier.config._models import EMAIL_CHANNEL, Account, Consultation, StakeholderList
from notifier.errors import Problem


@dataclass
class Failed:
    """What exists but did not load, so cross-file checks do not call it unknown as well."""

    lists: set[str] = field(default_factory=set)
    accounts: set[str] = field(default_factory=set)
    any_list: bool = False  # a stakeholders file could not be read: any list id may be in it
    any_account: bool = False  # notifier.yaml or its accounts could not be read

    def unknown_list(self, name: str, lists: Collection[str]) -> bool:
        """``name`` is not among ``lists`` and not among those that failed to load."""
        return name not in lists and name not in self.lists and not self.any_list

    def unknown_channel(self, name: str, channels: Collection[str]) -> bool:
        """``name`` is not among ``channels`` and not an account that failed to load."""
        return name not in channels and name not in self.accounts and not self.any_account


def is_http_url(value: str) -> bool:
    """True for an absolute ``http://`` or ``https://`` URL with a host."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def count_errors(problems: list[Problem]) -> int:
    """How many of ``problems`` are errors (not warnings)."""
    return sum(problem.severity == "error" for problem in problems)


def find_cycle(includes: Mapping[str, Sequence[str]], start: str) -> list[str] | None:
    """The include path from ``start`` back to itself, e.g. ``[a, b, a]``, or None.

    ``includes`` maps each list id to the ids it includes. A depth-first walk with its own
    stack rather than recursion, so a chain of includes thousands of lists deep is walked
    like a short one (no RecursionError).
    """
    if start not in includes:
        return None
    path = [start]
    on_path = {start}
    done: set[str] = set()
    pending = [iter(includes[start])]  # pending[i]: what path[i] has left to visit
    while pending:
        included = next(pending[-1], None)
        if included is None:
            finished = path.pop()
            on_path.discard(finished)
            done.add(finished)
            pending.pop()
            continue
        if included in on_path:
            return [*path[path.index(included) :], included]
        if included in done or included not in includes:
            continue
        path.append(included)
        on_path.add(included)
        pending.append(iter(includes[included]))
    return None


def check_references(
    lists: dict[str, StakeholderList],
    consultations: dict[str, Consultation],
    accounts: dict[str, Account],
    failed: Failed,
    problems: list[Problem],
) -> None:
    """Cross-file checks: includes, cycles, audiences and channels that name real things.

    A name that exists but failed to load (``failed``) has been reported already.
    """
    _check_includes(lists, failed, problems)
    _check_cycles(lists, problems)
    channels = {EMAIL_CHANNEL, *accounts}
    for consultation in consultations.values():
        _check_consultation_names(consultation, lists, channels, failed, problems)


def _check_includes(lists: dict[str, StakeholderList], failed: Failed, problems: list[Problem]) -> None:
    """Each list's ``include`` names lists that exist."""
    for item in lists.values():
        for i, included in enumerate(item.include):
            if failed.unknown_list(included, lists):
                problems.append(
                    Problem.at(
                        item.where.path, item.line("include", i), f"list {item.id!r} includes unknown list {included!r}"
                    )
                )


def _check_cycles(lists: dict[str, StakeholderList], problems: list[Problem]) -> None:
    """No list includes itself, directly or through others; each cycle is reported once."""
    reported: set[frozenset[str]] = set()
    includes = {list_id: item.include for list_id, item in lists.items()}
    for item in lists.values():
        cycle = find_cycle(includes, item.id)
        if cycle and frozenset(cycle) not in reported:
            reported.add(frozenset(cycle))
            problems.append(item.where.problem("include cycle: " + " -> ".join(cycle)))


def _check_consultation_names(
    consultation: Consultation,
    lists: dict[str, StakeholderList],
    channels: set[str],
    failed: Failed,
    problems: list[Problem],
) -> None:
    """The audiences and channels of a consultation and of each of its events name lists and
    channels that exist; the message lists the known ones."""
    path = consultation.where.path
    for key, audience, channel_names in [
        ((), consultation.audience, consultation.channels),
        *((("events", e.name), e.audience or (), e.channels or ()) for e in consultation.events.values()),
    ]:
        for i, name in enumerate(audience):
            if failed.unknown_list(name, lists):
                known = ", ".join(sorted(lists))
                line = consultation.line(*key, "audience", i)
                problems.append(Problem.at(path, line, f"unknown list {name!r} in audience (known: {known})"))
        for i, name in enumerate(channel_names):
            if failed.unknown_channel(name, channels):
                known = ", ".join(sorted(channels))
                line = consultation.line(*key, "channels", i)
                problems.append(Problem.at(path, line, f"unknown channel {name!r} (known: {known})"))


def without_dangling(
    lists: dict[str, StakeholderList], consultations: dict[str, Consultation], accounts: dict[str, Account]
) -> tuple[dict[str, StakeholderList], dict[str, Consultation]]:
    """``lists`` and ``consultations`` less their references to lists and channels that are
    not there, so what did load can still be checked (see :func:`load_partial`)."""
    channels = {EMAIL_CHANNEL, *accounts}

    def known(names: tuple[str, ...] | None, among: Collection[str]) -> tuple[str, ...] | None:
        return None if names is None else tuple(n for n in names if n in among)

    kept_lists = {
        list_id: item.model_copy(update={"include": known(item.include, lists)}) for list_id, item in lists.items()
    }
    kept_consultations = {}
    for consultation_id, consultation in consultations.items():
        events = {
            name: event.model_copy(
                update={"audience": known(event.audience, lists), "channels": known(event.channels, channels)}
            )
            for name, event in consultation.events.items()
        }
        kept_consultations[consultation_id] = consultation.model_copy(
            update={
                "audience": known(consultation.audience, lists),
                "channels": known(consultation.channels, channels),
                "events": events,
            }
        )
    return kept_lists, kept_consultations
