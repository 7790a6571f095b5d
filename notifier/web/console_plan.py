"""A consultation's agenda as the console reads it: what ``notifier plan`` prints.

The rows come from :func:`notifier.agenda.agenda`, as the command's do; this module only
gathers what it reads from the console's process (the ledger, the record's responders) after
:func:`notifier.archive.restore` has put back what Redis lost. Synchronous: handlers call it
through :func:`notifier.web.console.blocking`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from notifier import agenda, archive
from notifier.config import Config, Consultation, Settings
from notifier.ledger import Ledger
from notifier.responders import RESPONDED, Responders, responders
from notifier.store import Store
from notifier.timeline import Event

#: What a missed event needs, in the console's words.
BY_HAND = "a send by hand"


def plan(  # noqa: PLR0913 - the parts plan reads, and whether to count by list; all from the app
    settings: Settings,
    ledger: Ledger,
    store: Store,
    config: Config,
    consultation: Consultation,
    *,
    by_list: bool = False,
) -> agenda.Agenda:
    """The agenda of ``consultation`` as ``notifier plan CONSULTATION`` computes it."""
    archive.restore(ledger, store, consultation.id)

    def responded(consultation_id: str) -> Responders | None:
        return responders(store, consultation_id, config.tz)

    now = datetime.now(UTC)
    return agenda.agenda(
        config, consultation, ledger, ledger.suppressed(), responded, now, grace=settings.grace, by_list=by_list
    )


def reach(ledger: Ledger, store: Store, config: Config, consultation: Consultation, event: Event) -> agenda.Reach:
    """What firing ``event`` now would send: the confirmation page's "36 e-mails and 4 posts"."""
    reasons = responders(store, consultation.id, config.tz) if RESPONDED in event.skip else None
    return agenda.reach(config, event, ledger.suppressed(), reasons)


def describe(row: agenda.Row, config: Config) -> str:
    """A row's state in the console's words (a missed event needs a send by hand)."""
    return agenda.describe(row.status, config, by_hand=BY_HAND)
