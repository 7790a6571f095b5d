"""What one process needs to deliver, built once: settings, config, renderer, ledger, channels.

The config comes from the process' :class:`~notifier.source.ConfigSource` (shared with
the Service and the scheduler): re-read when a file under ``config/`` or ``templates/``
changes (checked at most once a second), so a long-running worker picks up an edited list
or template without a restart; the renderer, channels and prepared occurrences are rebuilt
from each new config. A channel a batch is sending on (:meth:`Runtime.hold`) is not closed
under it by the reload: it is closed when the last batch holding it lets go. A rehearsal
gets its own runtime: another ledger namespace and outbox-only channels under its own
folder, so it can never touch the real ledger or post live.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis

from notifier import acknowledgement, archive, extension, timeline
from notifier.audience import Recipient, resolve
from notifier.broker import NAMESPACE, connect
from notifier.channels import registry
from notifier.channels.base import Channel
from notifier.channels.email import Sender
from notifier.config import Config, Consultation, Settings
from notifier.errors import StoreError
from notifier.ledger import Ledger, Occurrence
from notifier.rendering import Renderer
from notifier.retry import RetryPolicy
from notifier.source import ConfigSource
from notifier.store import Store, SuppressionSource

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Prepared:
    """One occurrence, resolved against the current config."""

    occurrence: Occurrence
    consultation: Consultation
    event: timeline.Event
    context: dict[str, Any]
    recipients: dict[str, Recipient]


class Runtime:
    """Per-process state for delivering: thread-safe, cheap to ask, built lazily."""

    def __init__(  # noqa: PLR0913 - settings, then keyword-only overrides for tests and rehearsals
        self,
        settings: Settings,
        *,
        client: redis.Redis | None = None,
        namespace: str = NAMESPACE,
        data_dir: Path | None = None,
        worker_id: str | None = None,
        source: ConfigSource | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        #: What the pace of a rate-limited channel reads the time from (Unix seconds): its
        #: slots and the local day its daily cap counts (a test turns the day with it).
        self.clock = clock
        self.retry = RetryPolicy.from_settings(settings)
        self.source = source or ConfigSource(settings)
        self.client = client or connect(settings)
        self.ledger = Ledger(self.client, namespace=namespace)
        self.rehearsal = namespace != NAMESPACE
        self.data_dir = data_dir or settings.data_dir  # a rehearsal writes its outbox elsewhere
        self.worker_id = worker_id or f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.RLock()
        self._config: Config | None = None
        self._renderer: Renderer | None = None
        self._channels: dict[str, Channel[Any]] = {}
        #: How many batches hold each channel now (by id, see :meth:`hold`), and the held
        #: channels a reload has replaced, closed by their last :meth:`release`.
        self._holds: dict[int, int] = {}
        self._retired: dict[int, Channel[Any]] = {}
        self._prepared: dict[str, Prepared] = {}
        self._store: Store | None = None
        self._archiver: archive.Archiver | None = None
        self.secret_key = settings.secret_key()

    # -- config -------------------------------------------------------------

    @property
    def config(self) -> Config:
        """The source's current config (reloaded when its files changed); what was built
        from the one before (renderer, channels, prepared occurrences) is dropped."""
        with self._lock:
            config = self.source.current()
            if config is not self._config:
                self._close_channels()
                self._config = config
                self._renderer = Renderer(config)
                self._prepared.clear()
            return config

    @property
    def renderer(self) -> Renderer:
        """The renderer of the current config."""
        _ = self.config
        assert self._renderer is not None
        return self._renderer

    def prepare(self, occurrence_id: str) -> Prepared:
        """Everything about one occurrence that each of its deliveries needs, cached."""
        config = self.config
        with self._lock:
            found = self._prepared.get(occurrence_id)
            if found is None:
                occurrence = self.ledger.occurrence(occurrence_id)
                consultation = config.consultation(occurrence.consultation)
                event = timeline.event(consultation, occurrence.event, config.tz)
                context = self.renderer.context(consultation, event, at=occurrence.at)
                if occurrence.event == acknowledgement.EVENT:  # the one respondent, and the response
                    respondent, context["response"] = acknowledgement.respondent(self.ledger, occurrence_id, config.tz)
                    recipients = {respondent.key: respondent}
                else:
                    recipients = {r.key: r for r in resolve(config.lists, event.audience).recipients}
                if occurrence.event == timeline.EXTENDED:
                    context["previous_closes"] = extension.previous_closes(self.ledger, occurrence_id, config.tz)
                    event, recipients = self._told_of_opening(consultation.id, event, recipients)
                found = Prepared(occurrence, consultation, event, context, recipients)
                if len(self._prepared) > 64:
                    self._prepared.clear()
                self._prepared[occurrence_id] = found
            return found

    def _told_of_opening(
        self, consultation_id: str, event: timeline.Event, recipients: dict[str, Recipient]
    ) -> tuple[timeline.Event, dict[str, Recipient]]:
        """An ``extended`` event goes to those ``opened`` reached (:func:`notifier.extension.told`):
        its recipients narrowed to them, its accounts to those posted to."""
        told = extension.told(self.ledger, self.store, consultation_id)
        people = set().union(*(told.recipients(c) for c in event.channels if registry.per_recipient(c)))
        channels = tuple(c for c in event.channels if registry.per_recipient(c) or told.posted(c))
        return replace(event, channels=channels), {k: r for k, r in recipients.items() if k in people}

    # -- the consultation record -------------------------------------------

    @property
    def record(self) -> Store:
        """The consultation record, opened once per process: the one place a delivering
        process opens it (the archiver writes to it, a fan-out reads who responded from it,
        an acknowledgement is marked in it, the web desk records responses in it)."""
        with self._lock:
            if self._store is None:
                self._store = Store.open(self.settings)
            return self._store

    @property
    def store(self) -> Store | None:
        """The :attr:`record` to write to; None for a rehearsal, which never counts as the
        real thing (it still reads who responded from the record)."""
        return None if self.rehearsal else self.record

    def archiver(self) -> archive.Archiver | None:
        """This process' :class:`~notifier.archive.Archiver` (None for a rehearsal)."""
        store = self.store
        if store is None:
            return None
        with self._lock:
            if self._archiver is None:
                self._archiver = archive.Archiver(self.ledger, store, self._sender_domain, owner=self.worker_id)
            return self._archiver

    def _sender_domain(self) -> str:
        return Sender.parse(self.config.email.from_, self.config.email.reply_to).domain

    def suppressed(self) -> dict[str, str]:
        """Every suppressed address and why, from Redis, after putting back what the record
        holds if Redis has lost it (see :func:`notifier.archive.seed_suppressions`)."""
        store = self.store
        if store is not None:
            archive.seed_suppressions(self.ledger, store)
        return self.ledger.suppressed()

    def suppress(self, email: str, source: SuppressionSource, reason: str) -> None:
        """Leave ``email`` out from now on (Redis, for the delivery path) and record why (the
        database). A database that cannot be written is logged, not raised: the outcome
        that bounced still has to be recorded, and Redis holds the suppression meanwhile."""
        self.ledger.suppress(email, reason)
        store = self.store
        if store is not None:
            try:
                store.suppress(email, source, detail=reason)
            except StoreError as exc:
                log.error("could not record the suppression (%s) in the database: %s", source, exc)

    # -- channels -----------------------------------------------------------

    def channel(self, name: str) -> Channel[Any]:
        """The channel ``name`` (``email`` or an account id), built once per config. To send
        on it while the config may change, :meth:`hold` it instead."""
        config = self.config
        with self._lock:
            if name not in self._channels:
                self._channels[name] = self._build(config, name)
            return self._channels[name]

    def hold(self, name: str) -> Channel[Any]:
        """The channel ``name``, held until :meth:`release`: a reload meanwhile leaves it open
        for the holder (closing it then broke a post in flight, or refused the next one: sent
        again on retry), and the last release closes it."""
        with self._lock:  # re-entrant: no reload between getting the channel and holding it
            channel = self.channel(name)
            self._holds[id(channel)] = self._holds.get(id(channel), 0) + 1
        return channel

    def release(self, channel: Channel[Any]) -> None:
        """Let go of a channel :meth:`hold` gave; closed now if it was replaced meanwhile."""
        with self._lock:
            left = self._holds.pop(id(channel), 1) - 1
            if left:
                self._holds[id(channel)] = left
                return
            retired = self._retired.pop(id(channel), None)
        if retired is not None:
            retired.close()

    def _build(self, config: Config, name: str) -> Channel[Any]:
        if registry.per_recipient(name):
            return registry.build_email_channel(config, self.settings, data_dir=self.data_dir, live=not self.rehearsal)
        account = config.accounts[name]
        settings = self.settings
        if self.rehearsal:
            account = account.model_copy(update={"outbox": True})
            settings = settings.model_copy(update={"env": {}})
        return registry.build_account_channel(account, settings, data_dir=self.data_dir)

    def _close_channels(self) -> None:
        """Drop the channels: close those no batch holds, and leave the others to their last
        :meth:`release` (called under the lock)."""
        for channel in self._channels.values():
            if id(channel) in self._holds:
                self._retired[id(channel)] = channel
            else:
                channel.close()
        self._channels = {}

    def close(self) -> None:
        """Close channels (SMTP connections, HTTP clients; a held one when it is released)."""
        with self._lock:
            self._close_channels()
            if self._store is not None:
                self._store.close()
                self._store = None
                self._archiver = None
