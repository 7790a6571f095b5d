"""Memory helpers for hot paths: values remembered by object identity, the collector paused.

:class:`ByIdentity` remembers values by the identity of the immutable object they were
computed from. Some work is repeated on the very same objects many times over: the date filter on an
occurrence's datetimes (every e-mail), a compiled template's globals (every render), the
sample recipients of an audience shared by several events (every check). Those objects
are immutable, so a value computed from one stays right for as long as it lives. Each entry
holds its object, so its ``id`` cannot be reused by another object while the entry exists.

:func:`collector_paused` pauses the cyclic garbage collector while a bulk of long-lived
objects is made (loading, checking and resolving 100,000 stakeholders), and
:func:`no_collection_at_exit` spares a short-lived command the collector's last full pass.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")


class ByIdentity(Generic[V]):
    """A small cache keyed by an object's identity (and an optional ``extra`` key), emptied
    when it holds ``most`` entries. Safe to share between threads: at worst a value is
    computed twice."""

    def __init__(self, most: int = 256) -> None:
        self._entries: dict[tuple[int, Hashable], tuple[object, V]] = {}
        self._most = most

    def get(self, obj: object, extra: Hashable = None) -> V | None:
        """The value remembered for ``obj`` (and ``extra``), or None."""
        hit = self._entries.get((id(obj), extra))
        return hit[1] if hit is not None and hit[0] is obj else None

    def put(self, obj: object, value: V, extra: Hashable = None) -> V:
        """Remember ``value`` for ``obj`` (and ``extra``); returns ``value``."""
        if len(self._entries) >= self._most:
            self._entries.clear()
        self._entries[(id(obj), extra)] = (obj, value)
        return value


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused, if it was running, for the duration.

    Loading a config of 100,000 stakeholders, checking it and resolving its audiences each
    allocate a few hundred thousand long-lived objects, and the collector would otherwise
    run full passes over all of them several times on the way. Pausing only defers
    collection: anything cyclic made meanwhile is collected once it runs again.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def no_collection_at_exit() -> None:
    """Skip the cyclic collector's full pass over every live object when the process ends.

    At exit CPython collects once more before tearing the modules down; with a 100,000-
    stakeholder config (and its audiences) alive that pass took about 0.9 s of a 4 s
    ``notifier send`` (bench/RESULTS.md, 2026-11-30). Freezing the heap from an exit handler
    (handlers run before that pass) moves everything into the permanent generation, which the
    pass skips. Nothing is lost: objects still go as their references do, and what the pass
    would have found is cyclic garbage of a process that is ending anyway.
    """
    atexit.register(gc.freeze)
