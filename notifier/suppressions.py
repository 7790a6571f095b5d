"""Suppressions by hand: list, add and lift them in the record and in Redis at once, audited.

The record (:class:`notifier.store.Store`) is what is kept: a suppression there outlives a
Redis FLUSHALL (:func:`notifier.archive.restore_suppressions` puts it back). Redis is what a
worker reads before each e-mail, so both change together, the record first. A suppression
that comes from the config (``subscribed: false``) is lifted only by editing the list: the
next config sync would put it back anyway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import redis

from notifier.archive import REASONS
from notifier.config._email import check_email
from notifier.errors import InvalidValueError, UsageError

if TYPE_CHECKING:
    from notifier.ledger import Ledger
    from notifier.store import Store, Suppression

log = logging.getLogger(__name__)

#: Longest reason kept: a sentence, not a document.
MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class Entry:
    """A suppressed address, why, where that came from and since when (None: only Redis knows)."""

    email: str
    reason: str
    source: str
    since: datetime | None

    def as_json(self) -> dict[str, str | None]:
        """The entry as the JSON API gives it."""
        return {
            "email": self.email,
            "reason": self.reason,
            "source": self.source,
            "since": self.since.isoformat() if self.since else None,
        }


def _entry(s: Suppression) -> Entry:
    return Entry(s.email, s.detail or REASONS.get(s.source, s.source), s.source, s.at)


def check_reason(reason: object) -> str:
    """A reason a person gave: non-empty text of at most :data:`MAX_REASON` characters on one line."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidValueError("a reason is required: say why, for the audit log")
    text = " ".join(reason.split())
    if len(text) > MAX_REASON:
        raise InvalidValueError(f"the reason must be at most {MAX_REASON} characters, not {len(text)}")
    return text


def entries(store: Store, ledger: Ledger | None) -> list[Entry]:
    """Every suppressed address, by address: the record's, and any only Redis has (when it answers)."""
    found = {s.email: _entry(s) for s in store.suppressions()}
    if ledger is not None:
        try:
            extra = ledger.suppressed()
        except (redis.RedisError, OSError) as exc:
            log.warning("suppressions listed from the record only: Redis did not answer (%s)", type(exc).__name__)
            extra = {}
        for email, reason in extra.items():
            found.setdefault(email, Entry(email, reason, "redis", None))
    return [found[email] for email in sorted(found)]


def suppress(store: Store, ledger: Ledger, email: object, reason: object, *, actor: str) -> tuple[Entry, bool]:
    """Suppress ``email`` by hand because of ``reason``: the entry, and whether it is new (an
    address suppressed already keeps its entry). InvalidValueError for a bad address or reason."""
    if not isinstance(email, str):
        raise InvalidValueError("an e-mail address is required")
    address = check_email(email.strip()).lower()
    why = check_reason(reason)
    existing = store.suppression(address)
    if existing is not None:
        entry = _entry(existing)
        if ledger.suppression(address) is None:
            ledger.suppress(address, entry.reason)
        return entry, False
    now = datetime.now(UTC)
    store.suppress(address, "manual", detail=why, at=now)
    ledger.suppress(address, why)
    store.audit(actor, "suppress", detail=f"{address}: {why}")
    return Entry(address, why, "manual", now), True


def lift(store: Store, ledger: Ledger, email: str, reason: object, *, actor: str) -> Entry:
    """Lift the suppression of ``email`` because of ``reason``; the entry lifted. UsageError when
    the address is not suppressed or is suppressed by the config; InvalidValueError without a reason."""
    why = check_reason(reason)
    address = email.strip().lower()
    existing = store.suppression(address)
    in_redis = ledger.suppression(address)
    if existing is None and in_redis is None:
        raise UsageError(f"{address} is not suppressed")
    if existing is not None and existing.source == "config":
        raise UsageError(
            f"{address} is suppressed by the config (subscribed: false in a stakeholder list): change the list instead"
        )
    store.unsuppress(address)
    ledger.unsuppress(address)
    store.audit(actor, "unsuppress", detail=f"{address}: {why}")
    if existing is not None:
        return _entry(existing)
    return Entry(address, in_redis or "", "redis", None)
