"""Who has responded to a consultation, as the consultation record says: for ``skip: [responded]``
and the acknowledgements.

A process that delivers (a worker, ``send --wait``, ``responses import``) opens the record once,
in its :class:`~notifier.runtime.Runtime` (``Runtime.record``), and keeps it: fanning out an
event that skips responders, and marking an acknowledgement sent, each need a look at it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import TYPE_CHECKING

from notifier.audience import Recipient
from notifier.rendering import format_date

if TYPE_CHECKING:
    from notifier.store import Response, Store

#: The ``skip`` value that leaves out those who responded.
RESPONDED = "responded"


@dataclass(frozen=True, slots=True)
class Responders:
    """The addresses and organisations with a recorded response to one consultation."""

    #: lower-cased address -> why it is left out (``responded on 1 August 2019``)
    addresses: Mapping[str, str]
    #: case-folded organisation -> why (``Telford & Wrekin CCG responded``)
    organisations: Mapping[str, str]

    @classmethod
    def of(cls, responses: Iterable[Response], tz: tzinfo) -> Responders:
        """From the recorded responses; a date is the response's ``received``, else when it was recorded."""
        addresses: dict[str, str] = {}
        organisations: dict[str, str] = {}
        for r in responses:
            when = (r.received or r.recorded_at).astimezone(tz)
            addresses.setdefault(r.email.lower(), f"responded on {format_date(when)}")
            if r.organisation and r.organisation.strip():
                organisations.setdefault(r.organisation.strip().casefold(), f"{r.organisation.strip()} responded")
        return cls(addresses, organisations)

    def reason(self, recipient: Recipient) -> str | None:
        """Why ``recipient`` is left out, or None: their own address first, then their organisation."""
        found = self.addresses.get(recipient.key)
        if found is None and recipient.organisation:
            found = self.organisations.get(recipient.organisation.strip().casefold())
        return found

    def __len__(self) -> int:
        return len(self.addresses) + len(self.organisations)


def responders(store: Store, consultation: str, tz: tzinfo) -> Responders:
    """Who responded to ``consultation``, from ``store``."""
    return Responders.of(store.responses(consultation), tz)


def skipped(skip: Iterable[str], reasons: Responders | None, recipients: Iterable[Recipient]) -> dict[str, str]:
    """The recipients an event's ``skip`` leaves out (by key), each with its reason."""
    if RESPONDED not in skip or reasons is None or not len(reasons):
        return {}
    out: dict[str, str] = {}
    for recipient in recipients:
        why = reasons.reason(recipient)
        if why is not None:
            out[recipient.key] = why
    return out


def skipped_by_event(
    record: Callable[[], Store], consultation: str, skip: Iterable[str], recipients: Iterable[Recipient], tz: tzinfo
) -> dict[str, str]:
    """:func:`skipped` for an event about to fan out, opening the record (``record()``, the
    runtime's) only when its ``skip`` asks for it."""
    if RESPONDED not in skip:
        return {}
    return skipped(skip, responders(record(), consultation, tz), recipients)
