"""Recording a consultation response by the JSON API, and thanking the respondent once.

The web service makes what this needs on the first response it records, not at start-up
(most deployments never use it): a :class:`~notifier.service.Service` (its config, reloaded when
the files change, and its consultation record) to enqueue the acknowledgement for the workers,
exactly as ``notifier responses import`` does (see :mod:`notifier.acknowledgement`). Inside
``notifier run`` the desk is given the process' own service instead.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from notifier import acknowledgement
from notifier.config import Settings
from notifier.errors import StoreError
from notifier.responses import from_fields, response_key
from notifier.service import Service
from notifier.store import Response, record_config


@dataclass(frozen=True, slots=True)
class Recorded:
    """A response as the API recorded it: ``new`` when this request added it."""

    response: Response
    new: bool
    #: Whether this request queued its acknowledgement (a new response, thanked once).
    acknowledging: bool


class ResponseDesk:
    """Records responses for one web app; thread-safe, built lazily, closed with the app."""

    def __init__(self, settings: Settings, *, service: Service | None = None) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        #: ``notifier run`` gives its own service (one per process); it is not closed here.
        self._service: Service | None = service
        self._owned = service is None

    def service(self) -> Service:
        """The app's :class:`Service` (made on first use)."""
        with self._lock:
            if self._service is None:
                self._service = Service(self.settings)
            return self._service

    def record(self, consultation_id: str, body: object, *, actor: str = "api") -> Recorded:
        """Record ``body`` (the request's JSON, or the console's form) as a response to
        ``consultation_id`` and, if it is new, queue its acknowledgement; ``actor`` goes into the
        audit log. UsageError for an unknown consultation, BadResponseError for bad fields,
        ConfigError when the acknowledgement's template would not render."""
        service = self.service()
        config = service.runtime.config
        config.consultation(consultation_id)
        given = from_fields(body, config.tz)
        acknowledgement.ready(config, consultation_id)  # a broken thank-you: nothing recorded
        store = service.store
        record_config(store, config)
        added = store.add_responses(consultation_id, [given])
        store.audit(
            actor, "responses record", consultation=consultation_id, detail="1 new" if added else "already recorded"
        )
        if added:
            started = service.acknowledge(consultation_id, added)
            return Recorded(added[0], new=True, acknowledging=bool(started))
        for known in store.responses(consultation_id):
            if response_key(known.email, known.received, known.reference) == given.key:
                return Recorded(known, new=False, acknowledging=False)
        raise StoreError(f"response {given.key!r} was neither added nor found: was it deleted meanwhile?")

    def close(self) -> None:
        """Release the service (its Redis connections and channels), if it made it."""
        with self._lock:
            if self._service is not None and self._owned:
                self._service.close()
                self._service = None
