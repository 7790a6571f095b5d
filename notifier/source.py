"""One process' config: loaded once, validated once, and reloaded in one place.

:class:`ConfigSource` is shared by everything in a process that reads the config (the
:class:`~notifier.service.Service`, its :class:`~notifier.runtime.Runtime` and the
scheduler). It re-checks the files' signature (names, mtimes and sizes of every file under
``config/`` and ``templates/``) at most every ``every`` seconds unless asked for a fresher
look, and only when that changed loads the files again; the validation (rendering every
template for its real audience, see :func:`notifier.validation.check`) runs once per load,
when someone first asks for a validated config. So a long-running worker picks up an edited
list or template without a restart, and a ``send`` loads and checks the files once.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from notifier.config import Config, Settings, collector_paused, load_config
from notifier.errors import ConfigError
from notifier.validation import check

Signature = tuple[tuple[str, float, int], ...]


def config_signature(settings: Settings, templates: Path | None = None) -> Signature:
    """Names, mtimes and sizes of every config and template file: changes when any does."""
    found = []
    for root in (settings.config_dir, templates or settings.config_dir.parent / "templates"):
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                found.append((path, st.st_mtime, st.st_size))
    return tuple(sorted(found))


class ConfigSource:
    """The config of one process, reloaded when its files change. Thread-safe."""

    def __init__(self, settings: Settings, *, every: float = 1.0) -> None:
        self.settings = settings
        self.every = every
        #: Counts loads (good or failed): a reader that remembers it knows when the files changed.
        self.generation = 0
        self._lock = threading.Lock()
        self._config: Config | None = None
        self._error: ConfigError | None = None
        self._signature: Signature | None = None
        self._checked = 0.0
        self._validate_lock = threading.Lock()  # validating takes seconds: readers of current() go on
        self._validated: tuple[Config, ConfigError | None] | None = None

    def check(self, *, within: float | None = None) -> int:
        """Look at the files' signature unless it was looked at less than ``within`` seconds
        ago (``every`` by default; 0 looks now), reload them if it changed, and return the
        generation. Never raises: a config that does not load is raised by :meth:`current`."""
        within = self.every if within is None else within
        with self._lock:
            now = time.monotonic()
            if self._signature is not None and now - self._checked < within:
                return self.generation
            self._checked = now
            templates = self._config.templates if self._config is not None else None
            signature = config_signature(self.settings, templates)
            if signature != self._signature:
                try:
                    with collector_paused():
                        self._config, self._error = load_config(self.settings.config_dir), None
                except ConfigError as exc:
                    self._error = exc  # the same files fail the same way: not re-read until they change
                self._signature = signature
                self.generation += 1
            return self.generation

    def current(self, *, within: float | None = None) -> Config:
        """The config as last loaded (see :meth:`check` for ``within``); ConfigError when its
        files do not load. Templates are not checked: see :meth:`validated`."""
        self.check(within=within)
        with self._lock:
            if self._error is not None:
                raise ConfigError(self._error.problems)  # a new one each time: a raise grows the traceback
            assert self._config is not None
            return self._config

    def validated(self, *, within: float | None = None) -> Config:
        """The current config once :func:`~notifier.validation.check` found no error in it
        (checked once per load); ConfigError with every error otherwise."""
        config = self.current(within=within)
        with self._validate_lock:
            if self._validated is None or self._validated[0] is not config:
                with collector_paused():
                    errors = [p for p in check(config, self.settings) if p.severity == "error"]
                self._validated = (config, ConfigError(errors) if errors else None)
            error = self._validated[1]
        if error is not None:
            raise ConfigError(error.problems)
        return config
