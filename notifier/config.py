"""Load and validate ``config/`` into frozen, typed models.

Everything the policy team edits is read here: ``notifier.yaml``, ``stakeholders/*.yaml``,
``stakeholders/*.csv`` and ``consultations/*.yaml``. Every problem carries the file and
line it comes from (YAML node marks, CSV row numbers), and all problems are collected in
one pass: :func:`load_config` raises one :class:`~notifier.errors.ConfigError` listing
them all, or returns a :class:`Config` whose ``warnings`` may still say something.

Settings that are not the policy team's business (where Redis is, SMTP credentials,
tokens) come from the environment through :class:`Settings`.
"""

from __future__ import annotations

import csv
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from notifier.errors import ConfigError, Problem

EMAIL_CHANNEL = "email"
PLATFORMS = ("x", "facebook", "mastodon", "bluesky", "webhook")
DEFAULT_EVENTS = {"opened": "opens", "reminder": "closes - 7d", "closed": "closes"}
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
_ID = re.compile(ID_PATTERN)

# ---------------------------------------------------------------------------
# Settings (environment)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Process settings, read from ``NOTIFIER_*`` environment variables (see the contract)."""

    config_dir: Path = Path("config")
    data_dir: Path = Path("var")
    redis_url: str | None = None
    smtp_url: str | None = None
    public_url: str = "http://localhost:8080"
    web_bind: str = "127.0.0.1:8080"
    secret_key_env: str | None = field(default=None, repr=False)
    grace: timedelta = timedelta(hours=24)
    retry_base: timedelta = timedelta(seconds=10)
    max_attempts: int = 8
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``env`` (``os.environ`` by default), with the contract's defaults."""
        env = dict(os.environ if env is None else env)
        grace = timedelta(hours=_number(env, "NOTIFIER_GRACE_HOURS", 24))
        retry_base = timedelta(seconds=_number(env, "NOTIFIER_RETRY_BASE_SECONDS", 10))
        max_attempts = int(_number(env, "NOTIFIER_MAX_ATTEMPTS", 8))
        return cls(
            config_dir=Path(env.get("NOTIFIER_CONFIG") or "config"),
            data_dir=Path(env.get("NOTIFIER_DATA_DIR") or "var"),
            redis_url=env.get("NOTIFIER_REDIS_URL") or None,
            smtp_url=env.get("NOTIFIER_SMTP_URL") or None,
            public_url=(env.get("NOTIFIER_PUBLIC_URL") or "http://localhost:8080").rstrip("/"),
            web_bind=env.get("NOTIFIER_WEB_BIND") or "127.0.0.1:8080",
            secret_key_env=env.get("NOTIFIER_SECRET_KEY") or None,
            grace=grace,
            retry_base=retry_base,
            max_attempts=max(1, max_attempts),
            env=env,
        )

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
            raise ConfigError(
                [Problem.at("NOTIFIER_SECRET_KEY", None, "must be set when NOTIFIER_REDIS_URL is set")]
            )
        path = self.data_dir / "secret.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
        return path.read_text().strip().encode()


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(env.get(name) or default)
    except ValueError:
        raise ConfigError([Problem.at(name, None, f"must be a number, not {env[name]!r}")]) from None


def token_variable(account_id: str) -> str:
    """``pcc-x`` -> ``NOTIFIER_PCC_X_TOKEN``."""
    return "NOTIFIER_" + re.sub(r"[^A-Za-z0-9]", "_", account_id).upper() + "_TOKEN"


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


Lines = dict[tuple[Any, ...], int]


@dataclass(frozen=True, slots=True)
class Where:
    """A place in the config: file and 1-based line (``None`` when unknown)."""

    path: str
    line: int | None = None

    def problem(self, message: str) -> Problem:
        """An error at this place."""
        return Problem.at(self.path, self.line, message)

    def warning(self, message: str) -> Problem:
        """A warning at this place."""
        return Problem.warn(self.path, self.line, message)


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


Text = Annotated[str, BeforeValidator(_strip), Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


def _check_email(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False, allow_smtputf8=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"invalid e-mail address {value!r}: {exc}") from None


class Member(BaseModel):
    """A stakeholder: ``email`` required; ``name``, ``organisation``, ``subscribed`` optional.

    Any other key is kept and reaches templates as ``recipient.<key>``.
    """

    model_config = ConfigDict(frozen=True, extra="allow", str_strip_whitespace=True)

    email: str
    name: str | None = None
    organisation: str | None = None
    subscribed: bool = True

    @field_validator("email")
    @classmethod
    def _valid_email(cls, value: str) -> str:
        return _check_email(value)

    @property
    def extra(self) -> dict[str, Any]:
        """Keys beyond the known ones, for templates."""
        return dict(self.model_extra or {})


class StakeholderList(_Model):
    """A named list of members, optionally including other lists by id."""

    id: str = ""
    name: Text | None = None
    members: tuple[Member, ...] = ()
    include: tuple[str, ...] = ()
    where: Where = Where("")


class Account(_Model):
    """A social account or website: a channel named by its id."""

    id: str = ""
    platform: Literal["x", "facebook", "mastodon", "bluesky", "webhook"]
    page_id: Text | None = None
    graph_version: Annotated[str, Field(pattern=r"^v\d+\.\d+$")] = "v26.0"
    instance: Text | None = None
    handle: Text | None = None
    url: Text | None = None
    api_base: Text | None = None
    outbox: bool = False
    where: Where = Where("")


class EmailSettings(_Model):
    """The sender of every e-mail."""

    from_: Text = Field(alias="from")
    reply_to: Text | None = None

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class EventSpec(_Model):
    """An event of a consultation: when it fires (``at``; none for on-demand events such as
    an outcome) and optionally narrower ``channels`` and ``audience``."""

    name: str = ""
    at: str | None = None
    channels: tuple[str, ...] | None = None
    audience: tuple[str, ...] | None = None
    where: Where = Where("")

    @field_validator("at", mode="before")
    @classmethod
    def _at_text(cls, value: Any) -> Any:
        if isinstance(value, datetime | date):
            return value.isoformat()
        return value


class Consultation(_Model):
    """A consultation: opens and closes (aware datetimes), who hears of it and how."""

    id: str = ""
    title: Text
    url: Text
    summary: Text
    opens: datetime
    closes: datetime
    audience: tuple[str, ...] = Field(min_length=1)
    channels: tuple[str, ...] = Field(min_length=1)
    contact: Text | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    events: dict[str, EventSpec] = Field(default_factory=dict)
    where: Where = Where("")
    _lines: Lines = PrivateAttr(default_factory=dict)

    def line(self, *key: Any) -> int | None:
        """The line in this consultation's file of ``key`` (e.g. ``"audience", 0``)."""
        return _line(self._lines, key)


class Config(_Model):
    """The whole, validated configuration."""

    root: Path
    organisation: Text
    timezone: str = "Europe/London"
    email: EmailSettings
    accounts: dict[str, Account] = Field(default_factory=dict)
    templates: Path
    lists: dict[str, StakeholderList] = Field(default_factory=dict)
    consultations: dict[str, Consultation] = Field(default_factory=dict)
    warnings: tuple[Problem, ...] = ()

    @property
    def tz(self) -> ZoneInfo:
        """The configured timezone."""
        return ZoneInfo(self.timezone)

    @property
    def channels(self) -> tuple[str, ...]:
        """Every channel name: ``email`` and each account id."""
        return (EMAIL_CHANNEL, *self.accounts)

    def consultation(self, consultation_id: str) -> Consultation:
        """The consultation with this id, or a :class:`UsageError` listing the known ones."""
        from notifier.errors import UsageError

        try:
            return self.consultations[consultation_id]
        except KeyError:
            known = ", ".join(sorted(self.consultations)) or "none"
            raise UsageError(f"unknown consultation {consultation_id!r} (known: {known})") from None


# ---------------------------------------------------------------------------
# YAML with line numbers
# ---------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """SafeLoader that leaves ``2019-07-09 09:00``-style timestamps as text for our parser."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_yaml(path: Path, problems: list[Problem]) -> tuple[Any, Lines]:
    """Parse one YAML file into plain data and a map from key path to line number.

    Syntax errors and duplicate keys are added to ``problems``; returns ``(None, {})`` then.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem.at(path, None, f"cannot read: {exc}"))
        return None, {}
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: Lines = {}
        before = len(problems)
        data = _build(loader, node, (), lines, path, problems)
        return (data if len(problems) == before else None), lines
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = getattr(exc, "problem", None) or str(exc)
        problems.append(Problem.at(path, mark.line + 1 if mark else None, f"invalid YAML: {reason}"))
        return None, {}
    finally:
        loader.dispose()


def _build(
    loader: _Loader, node: yaml.Node, key: tuple[Any, ...], lines: Lines, path: Path, problems: list[Problem]
) -> Any:
    lines[key] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for k_node, v_node in node.value:
            k = loader.construct_object(k_node, deep=True)
            if not isinstance(k, str | int | bool | float):
                problems.append(Problem.at(path, k_node.start_mark.line + 1, "a key must be plain text"))
                continue
            if k in out:
                problems.append(Problem.at(path, k_node.start_mark.line + 1, f"duplicate key {k!r}"))
            out[k] = _build(loader, v_node, (*key, k), lines, path, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, (*key, i), lines, path, problems) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _line(lines: Lines, loc: tuple[Any, ...]) -> int | None:
    """The line of the deepest known prefix of ``loc``."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _pydantic_problems(
    exc: ValidationError, path: Path, lines: Lines, prefix: tuple[Any, ...] = ()
) -> Iterator[Problem]:
    for err in exc.errors():
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in (*prefix, *loc)) or "(top level)"
        if err["type"] == "extra_forbidden":
            message = f"unknown key {field!r}"
        elif err["type"] == "missing":
            message = f"missing required key {field!r}"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            message = f"{field}: {msg}"
        yield Problem.at(path, _line(lines, (*prefix, *loc)), message)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _parse_moment(value: Any, tz: ZoneInfo) -> datetime:
    """``2019-07-09 09:00`` (local), a date, or ISO 8601 with an offset -> aware datetime."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{value!r} is not a date and time (use 2019-07-09 09:00, or ISO 8601 with an offset)"
            ) from None
    else:
        raise ValueError(f"{value!r} is not a date and time")
    return moment if moment.tzinfo else moment.replace(tzinfo=tz)


def load_config(config_dir: Path | str) -> Config:
    """Load and validate the whole config directory; raise ConfigError with every problem."""
    root = Path(config_dir)
    problems: list[Problem] = []
    warnings: list[Problem] = []
    main_path = root / "notifier.yaml"
    if not root.is_dir():
        raise ConfigError([Problem.at(root, None, "config directory not found (set NOTIFIER_CONFIG)")])
    if not main_path.exists():
        raise ConfigError([Problem.at(main_path, None, "missing: every config directory needs notifier.yaml")])

    main, lines = read_yaml(main_path, problems)
    tz = ZoneInfo("Europe/London")
    settings: dict[str, Any] = {}
    accounts: dict[str, Account] = {}
    if main is not None and not isinstance(main, dict):
        problems.append(Problem.at(main_path, 1, "must be a mapping of settings"))
    elif isinstance(main, dict):
        settings, accounts, tz = _load_main(main, main_path, lines, root, problems)

    lists = _load_lists(root / "stakeholders", problems)
    consultations = _load_consultations(root / "consultations", tz, problems)

    if not problems:
        _check_references(lists, consultations, accounts, problems, warnings)
    if problems:
        raise ConfigError(problems)
    return Config(
        root=root,
        lists=lists,
        consultations=consultations,
        accounts=accounts,
        warnings=tuple(warnings),
        **settings,
    )


def _load_main(
    main: dict[str, Any], path: Path, lines: Lines, root: Path, problems: list[Problem]
) -> tuple[dict[str, Any], dict[str, Account], ZoneInfo]:
    known = {"organisation", "timezone", "email", "accounts", "templates"}
    for key in main:
        if key not in known:
            problems.append(Problem.at(path, _line(lines, (key,)), f"unknown key {key!r}"))
    tz = ZoneInfo("Europe/London")
    tz_name = main.get("timezone", "Europe/London")
    try:
        tz = ZoneInfo(str(tz_name))
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(
            Problem.at(path, _line(lines, ("timezone",)), f"unknown timezone {tz_name!r} (e.g. Europe/London)")
        )
    settings: dict[str, Any] = {"timezone": tz.key}
    if "organisation" not in main:
        problems.append(Problem.at(path, 1, "missing required key 'organisation'"))
    elif not isinstance(main["organisation"], str) or not main["organisation"].strip():
        problems.append(Problem.at(path, _line(lines, ("organisation",)), "organisation must be text"))
    else:
        settings["organisation"] = main["organisation"]
    if "email" not in main:
        problems.append(Problem.at(path, 1, "missing required key 'email' (with 'from')"))
    else:
        try:
            email = EmailSettings.model_validate(main["email"])
            _check_sender(email, path, lines, problems)
            settings["email"] = email
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, path, lines, ("email",)))
    templates = main.get("templates")
    settings["templates"] = (root / str(templates)) if templates else root.parent / "templates"
    if not Path(settings["templates"]).is_dir():
        problems.append(
            Problem.at(path, _line(lines, ("templates",)) or 1, f"templates directory {settings['templates']} not found")
        )

    accounts: dict[str, Account] = {}
    raw_accounts = main.get("accounts") or {}
    if not isinstance(raw_accounts, dict):
        problems.append(Problem.at(path, _line(lines, ("accounts",)), "accounts must be a mapping of id: settings"))
        raw_accounts = {}
    for account_id, raw in raw_accounts.items():
        where = Where(str(path), _line(lines, ("accounts", account_id)))
        if not _ID.match(str(account_id)) or account_id == EMAIL_CHANNEL:
            problems.append(
                where.problem(f"account id {account_id!r} must be lower-case letters, digits, - or _, and not 'email'")
            )
            continue
        if not isinstance(raw, dict):
            problems.append(where.problem(f"account {account_id!r} must be a mapping with a platform"))
            continue
        try:
            account = Account.model_validate(raw).model_copy(update={"id": account_id, "where": where})
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, path, lines, ("accounts", account_id)))
            continue
        needs = {"facebook": "page_id", "mastodon": "instance", "bluesky": "handle", "webhook": "url"}
        need = needs.get(account.platform)
        if need and not getattr(account, need) and not (need == "instance" and account.api_base):
            problems.append(where.problem(f"account {account_id!r} ({account.platform}) needs {need!r}"))
        accounts[account_id] = account
    return settings, accounts, tz


def _check_sender(email: EmailSettings, path: Path, lines: Lines, problems: list[Problem]) -> None:
    from email.utils import parseaddr

    for key, value in (("from", email.from_), ("reply_to", email.reply_to)):
        if value is None:
            continue
        line = _line(lines, ("email", key))
        if "\r" in value or "\n" in value:
            problems.append(Problem.at(path, line, f"email.{key} must be one line"))
            continue
        _, address = parseaddr(value)
        try:
            validate_email(address, check_deliverability=False)
        except EmailNotValidError as exc:
            problems.append(Problem.at(path, line, f"email.{key}: invalid address {value!r}: {exc}"))


def _load_lists(folder: Path, problems: list[Problem]) -> dict[str, StakeholderList]:
    lists: dict[str, StakeholderList] = {}
    if not folder.is_dir():
        problems.append(Problem.at(folder, None, "stakeholders directory not found"))
        return lists

    def add(stakeholder_list: StakeholderList) -> None:
        if stakeholder_list.id in lists:
            first = lists[stakeholder_list.id].where
            problems.append(
                stakeholder_list.where.problem(
                    f"duplicate list id {stakeholder_list.id!r} (first defined at {first.path}:{first.line})"
                )
            )
        else:
            lists[stakeholder_list.id] = stakeholder_list

    for path in sorted(folder.iterdir()):
        if path.suffix in (".yaml", ".yml"):
            for item in _lists_from_yaml(path, problems):
                add(item)
        elif path.suffix == ".csv":
            item = _list_from_csv(path, problems)
            if item is not None:
                add(item)
    return lists


def _lists_from_yaml(path: Path, problems: list[Problem]) -> Iterator[StakeholderList]:
    data, lines = read_yaml(path, problems)
    if data is None:
        return
    if not isinstance(data, dict) or set(data) - {"lists"}:
        extra = sorted(set(data) - {"lists"}) if isinstance(data, dict) else []
        what = f"unknown key {extra[0]!r}" if extra else "a stakeholders file is a mapping with one key, 'lists'"
        problems.append(Problem.at(path, _line(lines, (extra[0],)) if extra else 1, what))
        return
    raw_lists = data.get("lists") or {}
    if not isinstance(raw_lists, dict):
        problems.append(Problem.at(path, _line(lines, ("lists",)), "'lists' must map list ids to lists"))
        return
    for list_id, raw in raw_lists.items():
        where = Where(str(path), _line(lines, ("lists", list_id)))
        if not _ID.match(str(list_id)):
            problems.append(where.problem(f"list id {list_id!r} must be lower-case letters, digits, - or _"))
            continue
        if not isinstance(raw, dict):
            problems.append(where.problem(f"list {list_id!r} must be a mapping with members and/or include"))
            continue
        try:
            item = StakeholderList.model_validate(raw)
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, path, lines, ("lists", list_id)))
            continue
        yield item.model_copy(update={"id": list_id, "where": where})


_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0"}


def _list_from_csv(path: Path, problems: list[Problem]) -> StakeholderList | None:
    list_id = path.stem
    where = Where(str(path), 1)
    if not _ID.match(list_id):
        problems.append(where.problem(f"list id {list_id!r} (the file name) must be lower-case letters, digits, - or _"))
        return None
    before = len(problems)
    members: list[Member] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            if "email" not in header:
                problems.append(where.problem("the header row must have an 'email' column"))
                return None
            reader.fieldnames = header
            if len(set(header)) != len(header):
                problems.append(where.problem("the header row repeats a column name"))
                return None
            for row in reader:
                line = reader.line_num
                if None in row:
                    problems.append(Problem.at(path, line, f"row has more cells than the header ({len(header)})"))
                    continue
                values = {k: (v or "").strip() for k, v in row.items()}
                if not any(values.values()):
                    continue
                subscribed = values.get("subscribed", "").lower()
                raw: dict[str, Any] = {k: v for k, v in values.items() if v != "" or k not in _OPTIONAL}
                if "subscribed" in values:
                    if subscribed in _TRUE or subscribed == "":
                        raw["subscribed"] = True
                    elif subscribed in _FALSE:
                        raw["subscribed"] = False
                    else:
                        problems.append(Problem.at(path, line, f"subscribed must be true or false, not {subscribed!r}"))
                        continue
                try:
                    members.append(Member.model_validate(raw))
                except ValidationError as exc:
                    for err in exc.errors():
                        field_name = ".".join(str(p) for p in err["loc"])
                        msg = err["msg"].removeprefix("Value error, ")
                        problems.append(Problem.at(path, line, f"{field_name}: {msg}"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.append(Problem.at(path, None, f"cannot read CSV: {exc}"))
        return None
    if len(problems) != before:
        return None
    return StakeholderList(id=list_id, name=None, members=tuple(members), where=where)


_OPTIONAL = {"name", "organisation", "subscribed"}


def _load_consultations(folder: Path, tz: ZoneInfo, problems: list[Problem]) -> dict[str, Consultation]:
    consultations: dict[str, Consultation] = {}
    if not folder.is_dir():
        return consultations
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".yaml", ".yml"):
            continue
        consultation_id = path.stem
        if consultation_id in consultations:
            problems.append(Problem.at(path, 1, f"duplicate consultation id {consultation_id!r}"))
            continue
        if not _ID.match(consultation_id):
            problems.append(
                Problem.at(path, 1, f"consultation id {consultation_id!r} (the file name) must be lower-case "
                           "letters, digits, - or _")
            )
            continue
        data, lines = read_yaml(path, problems)
        if data is None:
            continue
        if not isinstance(data, dict):
            problems.append(Problem.at(path, 1, "a consultation file is a mapping (title, url, opens, …)"))
            continue
        item = _consultation(consultation_id, data, path, lines, tz, problems)
        if item is not None:
            consultations[consultation_id] = item
    return consultations


def _consultation(
    consultation_id: str, data: dict[str, Any], path: Path, lines: Lines, tz: ZoneInfo, problems: list[Problem]
) -> Consultation | None:
    from notifier.timeline import parse_at

    before = len(problems)
    data = dict(data)
    for key in ("id", "where"):
        if key in data:
            problems.append(Problem.at(path, _line(lines, (key,)), f"unknown key {key!r}"))
            data.pop(key)
    for key in ("opens", "closes"):
        if key in data:
            try:
                data[key] = _parse_moment(data[key], tz)
            except ValueError as exc:
                problems.append(Problem.at(path, _line(lines, (key,)), f"{key}: {exc}"))
                data.pop(key)
                return None
    raw_events = data.get("events")
    if raw_events is None:
        raw_events = {name: {"at": at} for name, at in DEFAULT_EVENTS.items()}
    if not isinstance(raw_events, dict):
        problems.append(Problem.at(path, _line(lines, ("events",)), "events must map event names to settings"))
        return None
    events: dict[str, Any] = {}
    for name, raw in raw_events.items():
        at_line = _line(lines, ("events", name))
        if not _ID.match(str(name)):
            problems.append(Problem.at(path, at_line, f"event name {name!r} must be lower-case letters, digits, - or _"))
            continue
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            problems.append(Problem.at(path, at_line, f"event {name!r} must be a mapping (at, channels, audience)"))
            continue
        events[name] = {**raw, "name": name, "where": Where(str(path), at_line)}
    data["events"] = events
    try:
        consultation = Consultation.model_validate(data)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, path, lines))
        return None
    consultation = consultation.model_copy(update={"id": consultation_id, "where": Where(str(path), 1)})
    consultation._lines = lines
    if consultation.opens >= consultation.closes:
        problems.append(
            Problem.at(path, _line(lines, ("closes",)), "closes must be after opens "
                       f"({consultation.closes:%Y-%m-%d %H:%M} is not after {consultation.opens:%Y-%m-%d %H:%M})")
        )
    for event in consultation.events.values():
        if event.at is not None:
            try:
                parse_at(event.at, tz)
            except ValueError as exc:
                problems.append(Problem.at(path, _line(lines, ("events", event.name, "at")), str(exc)))
    return consultation if len(problems) == before else None


def _check_references(
    lists: dict[str, StakeholderList],
    consultations: dict[str, Consultation],
    accounts: dict[str, Account],
    problems: list[Problem],
    warnings: list[Problem],
) -> None:
    """Cross-file checks: includes, cycles, audiences and channels that name real things."""
    from notifier.audience import find_cycle

    for item in lists.values():
        for included in item.include:
            if included not in lists:
                problems.append(item.where.problem(f"list {item.id!r} includes unknown list {included!r}"))
    if not problems:
        reported: set[frozenset[str]] = set()
        for item in lists.values():
            cycle = find_cycle(lists, item.id)
            if cycle and frozenset(cycle) not in reported:
                reported.add(frozenset(cycle))
                problems.append(item.where.problem("include cycle: " + " -> ".join(cycle)))

    channels = {EMAIL_CHANNEL, *accounts}
    for consultation in consultations.values():
        path = consultation.where.path
        for key, audience, channel_names in [
            ((), consultation.audience, consultation.channels),
            *((("events", e.name), e.audience or (), e.channels or ()) for e in consultation.events.values()),
        ]:
            for i, name in enumerate(audience):
                if name not in lists:
                    known = ", ".join(sorted(lists))
                    line = consultation.line(*key, "audience", i)
                    problems.append(Problem.at(path, line, f"unknown list {name!r} in audience (known: {known})"))
            for i, name in enumerate(channel_names):
                if name not in channels:
                    known = ", ".join(sorted(channels))
                    line = consultation.line(*key, "channels", i)
                    problems.append(Problem.at(path, line, f"unknown channel {name!r} (known: {known})"))
