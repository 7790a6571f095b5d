"""Process settings from ``NOTIFIER_*`` environment variables (pydantic-settings), and the secret key.

Settings that are not the policy team's business (where Redis is, SMTP credentials, tokens)
come from the environment, never from ``config/``. A new setting is one more field of
:class:`Settings`: ``NOTIFIER_`` + its name upper-cased is its variable (``database_url`` is
``NOTIFIER_DATABASE_URL``), unless a ``validation_alias`` names the contract's variable.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import tempfile
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from notifier.errors import ConfigError, InvalidValueError, Problem

PREFIX = "NOTIFIER_"


class Settings(BaseSettings):
    """Process settings, read from ``NOTIFIER_*`` environment variables (see the contract).

    :meth:`from_env` reads them from ``os.environ`` (or a given mapping). A Settings made
    directly reads only the environment given as ``env``: ``Settings(redis_url=...)`` is the
    defaults but for what it names, whatever the process's environment says, so tests and
    tools get what they ask for. An empty variable counts as unset.
    """

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        env_ignore_empty=True,
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    config_dir: Path = Field(Path("config"), validation_alias="NOTIFIER_CONFIG")
    data_dir: Path = Path("var")
    redis_url: str | None = None
    smtp_url: str | None = None
    public_url: str = "http://localhost:8080"
    web_bind: str = "127.0.0.1:8080"
    secret_key_env: str | None = Field(None, validation_alias="NOTIFIER_SECRET_KEY", repr=False)
    grace: timedelta = Field(timedelta(hours=24), validation_alias="NOTIFIER_GRACE_HOURS")
    retry_base: timedelta = Field(timedelta(seconds=10), validation_alias="NOTIFIER_RETRY_BASE_SECONDS")
    max_attempts: int = 8
    database_url: str | None = None
    retention_days: float | None = None
    # The whole environment, for the variables named at run time (NOTIFIER_<ACCOUNT>_TOKEN,
    # NOTIFIER_ADMIN_TOKEN); never read from a variable itself.
    env: Mapping[str, str] = Field(default_factory=dict, repr=False, exclude=True)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``env`` (``os.environ`` by default), with the contract's defaults.

        A variable with a bad value is a ConfigError naming it (``NOTIFIER_GRACE_HOURS: must
        be a number, not 'a day'``), every such variable at once.
        """
        try:
            return cls(env=dict(os.environ if env is None else env))
        except ValidationError as exc:
            raise ConfigError([_problem(error) for error in exc.errors()]) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """What is given first, then the variables of the ``env`` given, if any; no ``.env``
        file and no secrets directory (the contract names the environment only)."""
        environ = getattr(init_settings, "init_kwargs", {}).get("env")
        if environ is None:
            return (init_settings,)
        return init_settings, _Environment(settings_cls, environ)

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("grace", mode="before")
    @classmethod
    def _hours(cls, value: Any) -> Any:
        return _duration(value, "hours")

    @field_validator("retry_base", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        return _duration(value, "seconds")

    @field_validator("retention_days", mode="before")
    @classmethod
    def _days(cls, value: Any) -> Any:
        return _number(value) if isinstance(value, str) else value

    @field_validator("max_attempts", mode="before")
    @classmethod
    def _at_least_one(cls, value: Any) -> Any:
        return max(1, int(_number(value))) if isinstance(value, str) else value

    @property
    def embedded(self) -> bool:
        """True when notifier runs its own Redis under the data dir."""
        return self.redis_url is None

    def token(self, account_id: str) -> str | None:
        """The credential of a social account, from ``NOTIFIER_<ACCOUNT>_TOKEN``."""
        return self.env.get(token_variable(account_id)) or None

    def secret_key(self) -> bytes:
        """The key that signs unsubscribe tokens and webhook bodies.

        ``NOTIFIER_SECRET_KEY`` when set. On the embedded default, one is generated once
        and kept (mode 0600) in the data dir so tokens stay valid across restarts. With an
        external Redis there is no default: production must set the variable.
        """
        if self.secret_key_env:
            return self.secret_key_env.encode()
        if not self.embedded:
            raise ConfigError([Problem.at("NOTIFIER_SECRET_KEY", None, "must be set when NOTIFIER_REDIS_URL is set")])
        path = self.data_dir / "secret.key"
        if not path.exists():
            _create_key(path)
        key = path.read_text().strip()
        if not key:
            raise ConfigError(
                [
                    Problem.at(
                        path,
                        None,
                        "the secret key file is empty: delete it to make a new "
                        "key (unsubscribe links already sent stop working)",
                    )
                ]
            )
        return key.encode()


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source, over a given mapping rather than ``os.environ``.

    pydantic-settings matches names ignoring case; names in a POSIX environment are
    case-sensitive and the contract's are upper-case, so only upper-case names are read
    (``notifier_config`` is not ``NOTIFIER_CONFIG``, and cannot shadow it).
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env_vars = {
            name.lower(): value
            for name, value in environ.items()
            if name == name.upper() and not (self.env_ignore_empty and value == "")
        }

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """The variable of ``field_name``; none for ``env``, which is the environment itself."""
        if field_name == "env":
            return None, field_name, False
        return super().get_field_value(field, field_name)


def _number(value: str) -> float:
    """The finite number a variable's text says, or ValueError saying it is not one."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise InvalidValueError(f"must be a number, not {value!r}")
    return number


def _duration(value: Any, unit: str) -> Any:
    """A variable's text as a timedelta of that many ``unit``; anything else as it is."""
    if not isinstance(value, str):
        return value
    try:
        return timedelta(**{unit: _number(value)})
    except OverflowError:
        raise InvalidValueError(f"{value} {unit} is too long") from None


def _problem(error: ErrorDetails) -> Problem:
    """A validation error of :class:`Settings` as a problem named by its variable."""
    key = str(error["loc"][0]) if error["loc"] else "env"
    field = Settings.model_fields.get(key)
    alias = field.validation_alias if field is not None else None
    variable = alias if isinstance(alias, str) else key if key.upper().startswith(PREFIX) else PREFIX + key.upper()
    return Problem.at(variable, None, error["msg"].removeprefix("Value error, "))


def _create_key(path: Path) -> None:
    """Write a new key to ``path`` whole or not at all, and keep an existing one.

    The key is written and fsynced in a private temporary file, then hard-linked to ``path``:
    the link appears with the whole key in it, and fails if another process linked first, whose
    key then stands. So processes starting together all read one whole key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secret.key.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


def token_variable(account_id: str) -> str:
    """``pcc-x`` -> ``NOTIFIER_PCC_X_TOKEN``."""
    return PREFIX + re.sub(r"[^A-Za-z0-9]", "_", account_id).upper() + "_TOKEN"
