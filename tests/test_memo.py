"""ByIdentity remembers by the very object, never by an equal one, and stays small."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from notifier.memo import ByIdentity


def test_a_value_is_remembered_for_the_same_object_and_extra_key_only() -> None:
    cache: ByIdentity[str] = ByIdentity()
    utc = datetime(2019, 8, 15, 22, 59, tzinfo=UTC)
    london = datetime(2019, 8, 15, 23, 59, tzinfo=ZoneInfo("Europe/London"))
    assert utc == london  # equal instants, printed differently: equality must not share a value

    assert cache.put(utc, "22:59", "time") == "22:59"
    assert cache.get(utc, "time") == "22:59"
    assert cache.get(london, "time") is None
    assert cache.get(utc, "date") is None


def test_it_empties_itself_when_full() -> None:
    cache: ByIdentity[int] = ByIdentity(most=3)
    keys = [object() for _ in range(4)]
    for n, key in enumerate(keys[:3]):
        cache.put(key, n)
    assert [cache.get(k) for k in keys[:3]] == [0, 1, 2]
    cache.put(keys[3], 3)
    assert [cache.get(k) for k in keys] == [None, None, None, 3]
