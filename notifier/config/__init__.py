"""Load and validate ``config/`` into frozen, typed models; settings from the environment.

Everything the policy team edits is read here: ``notifier.yaml``, ``stakeholders/*.yaml``,
``stakeholders/*.csv`` and ``consultations/*.yaml``. Every problem carries the file and
line it comes from (YAML node marks, CSV row numbers), and all problems are collected in
one pass: :func:`load_config` raises one :class:`~notifier.errors.ConfigError` listing them
all, or returns a :class:`Config` whose ``warnings`` may still say something.
:func:`load_partial` returns the problems with a Config of whatever loaded, so that
``notifier validate`` can go on to check its templates.

Settings that are not the policy team's business (where Redis is, SMTP credentials,
tokens) come from the environment through :class:`Settings`.

The modules behind these names are private; import from here. From the bottom up:
``_email`` (address checks) and ``_models`` (the models, which import only those and
:mod:`notifier.errors`), ``_settings`` (the environment), ``_yaml`` (YAML with the line of
every key and value), ``_csv`` (CSV lists), ``_checks`` (cross-file checks),
``_consultations`` (consultation files) and ``_load`` (the whole directory).
"""

from notifier.config._checks import find_cycle
from notifier.config._csv import read_csv_text
from notifier.config._load import load_config, load_partial
from notifier.config._models import (
    DEFAULT_EVENTS,
    EMAIL_CHANNEL,
    ID_PATTERN,
    PLATFORMS,
    Account,
    Config,
    Consultation,
    EmailSettings,
    EventSpec,
    Lines,
    Member,
    StakeholderList,
    Text,
    Where,
)
from notifier.config._settings import Settings, token_variable
from notifier.config._yaml import MAX_ALIAS_VALUES, read_yaml
from notifier.memo import collector_paused  # its home is notifier.memo; importable here as before the split

__all__ = [
    "DEFAULT_EVENTS",
    "EMAIL_CHANNEL",
    "ID_PATTERN",
    "MAX_ALIAS_VALUES",
    "PLATFORMS",
    "Account",
    "Config",
    "Consultation",
    "EmailSettings",
    "EventSpec",
    "Lines",
    "Member",
    "Settings",
    "StakeholderList",
    "Text",
    "Where",
    "collector_paused",
    "find_cycle",
    "load_config",
    "load_partial",
    "read_csv_text",
    "read_yaml",
    "token_variable",
]
