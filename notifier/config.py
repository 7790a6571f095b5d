"""Load and validate ``config/`` into frozen, typed models.

Everything the policy team edits is read here: ``notifier.yaml``, ``stakeholders/*.yaml``,
``stakeholders/*.csv`` and ``consultations/*.yaml``. Every problem carries the file and
line it comes from (YAML node marks, CSV row numbers), and all problems are collected in
one pass: :func:`load_config` raises one :class:`~notifier.errors.ConfigError` listing
them all, or returns a :class:`Config` whose ``warnings`` may still say something.
:func:`load_partial` returns the problems with a Config of whatever loaded, so that
``notifier validate`` can go on to check its templates.

Settings that are not the policy team's business (where Redis is, SMTP credentials,
tokens) come from the environment through :class:`Settings`.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import os
import re
import secrets
import tempfile
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
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
    database_url: str | None = None
    retention_days: float | None = None
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
            database_url=env.get("NOTIFIER_DATABASE_URL") or None,
            retention_days=_number(env, "NOTIFIER_RETENTION_DAYS", 0) if env.get("NOTIFIER_RETENTION_DAYS") else None,
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
            _create_key(path)
        key = path.read_text().strip()
        if not key:
            raise ConfigError([Problem.at(path, None, "the secret key file is empty: delete it to make a new "
                                                      "key (unsubscribe links already sent stop working)")])
        return key.encode()


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


@dataclass
class Lines:
    """Where things are in one YAML file, by key path (``("lists", "police", "include", 1)``).

    ``entries`` has the line of each mapping entry (its key's line, so an error about the list
    ``police`` points at ``police:``, not at the block below it) and of each sequence item.
    ``values`` has the line of each scalar value, for messages about the value itself.
    """

    entries: dict[tuple[Any, ...], int] = field(default_factory=dict)
    values: dict[tuple[Any, ...], int] = field(default_factory=dict)


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


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused, if it was running, for the duration.

    Loading a config of 100,000 stakeholders, checking it and resolving its audiences each
    allocate a few hundred thousand long-lived objects, and the collector would otherwise
    run full passes over all of them several times on the way. Pausing only defers
    collection: anything cyclic made meanwhile is collected once it runs again.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _check_email(value: str) -> str:
    """``value`` normalised as ``email_validator`` normalises it, or ValueError saying why not.

    A stakeholder list can hold 100,000 addresses, and ``email_validator`` spends most of
    its time on per-character Unicode checks that a plain ASCII address does not need. So
    :func:`_fast_email` accepts the common shape itself and everything else, every address
    it is not certain of, goes to ``email_validator``: the result is the same either way.
    """
    fast = _fast_email(value)
    if fast is not None:
        return fast
    return _slow_email(value)


def _slow_email(value: str) -> str:
    """``email_validator``'s verdict on ``value``: its normalised form, or ValueError."""
    try:
        return validate_email(value, check_deliverability=False, allow_smtputf8=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"invalid e-mail address {value!r}: {exc}") from None


# An ASCII dot-atom local part (RFC 5322 3.2.3: atext separated by single dots), which
# email_validator accepts unchanged, and an ASCII domain made of letters, digits, hyphens
# and dots, whose real checks are email_validator's own (see _fast_domain).
_FAST_LOCAL = re.compile(r"[A-Za-z0-9_!#$%&'*+/=?^`{|}~-]+(?:\.[A-Za-z0-9_!#$%&'*+/=?^`{|}~-]+)*")
_FAST_DOMAIN = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_MAX_ADDRESS = 254  # email_validator's limit on the whole address (RFC 5321 4.5.3.1.3)
# RFC 2142 mailbox names, which email_validator lower-cases: left to it.
_LOWERED_MAILBOXES = frozenset(
    {"info", "marketing", "sales", "support", "abuse", "noc", "security", "postmaster", "hostmaster",
     "usenet", "news", "webmaster", "www", "uucp", "ftp"}
)
_DOMAINS: dict[str, str | None] = {}  # domain as written -> email_validator's form, or None: ask it
_DOMAINS_MAX = 50_000


def _fast_email(value: str) -> str | None:
    """The normalised form of a plain ASCII address, without ``email_validator``'s
    per-character work; None when the address is anything else (then ask
    :func:`_slow_email`, which accepts or rejects it and says why).

    What is accepted here ``email_validator`` accepts too, normalised the same way: one
    ``@``, a dot-atom local part kept as written (one not lower-cased by RFC 2142), a domain
    ``email_validator`` itself accepted (cached per domain) and whose normalised form is
    plain ASCII, and at most 254 characters before and after normalisation.
    """
    if not value.isascii() or len(value) > _MAX_ADDRESS:
        return None
    local, at, domain = value.partition("@")
    if not at or not _FAST_LOCAL.fullmatch(local) or local.lower() in _LOWERED_MAILBOXES:
        return None
    normalised = _fast_domain(domain)
    if normalised is None:
        return None
    address = f"{local}@{normalised}"
    return address if len(address) <= _MAX_ADDRESS else None


def _fast_domain(domain: str) -> str | None:
    """``email_validator``'s normalised form of an ASCII ``domain`` it accepts, when that
    form is ASCII too (no Punycode label to turn into Unicode); None otherwise. Asked once
    per domain: a list of 100,000 people has a few thousand domains at most."""
    try:
        return _DOMAINS[domain]
    except KeyError:
        pass
    found: str | None = None
    if _FAST_DOMAIN.fullmatch(domain):
        try:
            checked = validate_email("x@" + domain, check_deliverability=False, allow_smtputf8=False)
        except EmailNotValidError:
            pass  # rejected: _slow_email says why, with the whole address
        else:
            if checked.domain == checked.ascii_domain and checked.domain.isascii():
                found = checked.domain
    if len(_DOMAINS) >= _DOMAINS_MAX:
        _DOMAINS.clear()
    _DOMAINS[domain] = found
    return found


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode's Cc: C0 controls, DEL and C1 controls


def _no_control(value: str) -> None:
    """ValueError naming the first control character in ``value`` (a line break, a NUL, ...)."""
    found = _CONTROL.search(value)
    if found is not None:
        code = ord(found.group())
        what = {0: " (NUL)", 9: " (tab)", 10: " (line feed)", 13: " (carriage return)"}.get(code, "")
        raise ValueError(f"contains the control character U+{code:04X}{what}: names and organisations "
                         "are one line of text")


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

    @field_validator("name", "organisation")
    @classmethod
    def _one_plain_line(cls, value: str | None) -> str | None:
        # The name goes into the To header of every e-mail: a CR, LF or NUL there is header
        # injection or SMTP smuggling (C\r.\rMAIL FROM:...), whatever the MIME writer does.
        if value is not None:
            _no_control(value)
        return value

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
    _lines: Lines = PrivateAttr(default_factory=Lines)

    def line(self, *key: Any) -> int | None:
        """The line of ``key`` in this list (e.g. ``"include", 0``); the list's own line if unknown."""
        return _line(self._lines, ("lists", self.id, *key)) or self.where.line


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
    #: ``[responded]``: leave out recipients whose address or organisation has a recorded response.
    skip: tuple[Literal["responded"], ...] = ()
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
    _lines: Lines = PrivateAttr(default_factory=Lines)

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

# What all the aliases of one YAML file may expand to, in values (each scalar, list and
# mapping counts one). A config that shares a few blocks by alias stays far below it; a
# "billion laughs" file of nested aliases (272 bytes that expand to hundreds of millions
# of values) is refused at the alias that crosses it, before anything is expanded.
MAX_ALIAS_VALUES = 10_000


class _Loader(yaml.SafeLoader):
    """SafeLoader that leaves ``2019-07-09 09:00``-style timestamps as text for our parser,
    and refuses aliases that would expand beyond :data:`MAX_ALIAS_VALUES` or into themselves."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> values it expands to
        self._expanded = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        """The next node; an alias is counted against the budget at its own line first."""
        if self.check_event(yaml.AliasEvent):
            event: yaml.AliasEvent = self.peek_event()  # type: ignore[no-untyped-call]
            node = self.anchors.get(str(event.anchor))
            if node is not None:
                self._count_alias(node, str(event.anchor), event.start_mark)
        return super().compose_node(parent, index)

    def _count_alias(self, node: yaml.Node, anchor: str, mark: Any) -> None:
        if node.end_mark is None:  # still being composed: the alias is inside what it names
            raise yaml.composer.ComposerError(
                None, None, f"alias *{anchor} is inside the block it names, so it would never end", mark
            )
        self._expanded += _size(node, self._sizes)
        if self._expanded > MAX_ALIAS_VALUES:
            raise yaml.composer.ComposerError(
                None, None, f"too many aliases: by *{anchor} here they expand to more than "
                f"{MAX_ALIAS_VALUES:,} values (write the values out, or share less)", mark,
            )


def _size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` expands to (itself and everything in it, aliases expanded);
    remembered in ``sizes`` so a node aliased many times is counted once."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    if isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_size(item, sizes) for item in node.value)
    elif isinstance(node, yaml.MappingNode):
        total = 1 + sum(_size(k, sizes) + _size(v, sizes) for k, v in node.value)
    else:
        total = 1
    sizes[id(node)] = total
    return total


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_yaml(path: Path, problems: list[Problem]) -> tuple[Any, Lines]:
    """Parse one YAML file into plain data and the lines of its keys and values.

    Syntax errors, duplicate keys and an empty file are added to ``problems``; returns
    ``(None, Lines())`` then.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem.at(path, None, f"cannot read: {exc}"))
        return None, Lines()
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        lines = Lines()
        before = len(problems)
        data = None if node is None else _build(loader, node, (), lines, path, problems)
        if len(problems) != before:
            return None, lines
        if data is None:
            problems.append(Problem.at(path, None, "empty file"))
        return data, lines
    except yaml.YAMLError as exc:
        problems.append(_yaml_problem(exc, path))
        return None, Lines()
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError, path: Path) -> Problem:
    """A YAML syntax error at the line to fix.

    PyYAML notices an unclosed ``[``, ``{`` or quote only where the next thing cannot
    belong to it (the ``problem_mark``); the line where it opened is the ``context_mark``.
    The context of a block (``while parsing a block mapping``) is where that whole block
    starts, which is no help, so it is not used.
    """
    problem = getattr(exc, "problem", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    context = getattr(exc, "context", None)
    opened = getattr(exc, "context_mark", None)
    if (
        mark is not None
        and opened is not None
        and context
        and not context.startswith("while parsing a block")
        and opened.line < mark.line
    ):
        at_end = mark.buffer is not None and mark.index >= len(mark.buffer.rstrip("\0"))
        what = "it is never closed (the file ends first)" if at_end else f"{problem} on line {mark.line + 1}"
        message = f"invalid YAML: {context} that starts here: {what}"
        return Problem.at(path, opened.line + 1, message)
    return Problem.at(path, mark.line + 1 if mark else None, f"invalid YAML: {problem}")


def _build(
    loader: _Loader, node: yaml.Node, key: tuple[Any, ...], lines: Lines, path: Path, problems: list[Problem]
) -> Any:
    """``node`` as plain data; records in ``lines`` where each entry and scalar value is."""
    lines.entries.setdefault(key, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for k_node, v_node in node.value:
            k = loader.construct_object(k_node, deep=True)
            if not isinstance(k, str | int | bool | float):
                problems.append(Problem.at(path, k_node.start_mark.line + 1, "a key must be plain text"))
                continue
            if k in out:
                problems.append(Problem.at(path, k_node.start_mark.line + 1, f"duplicate key {k!r}"))
            lines.entries[(*key, k)] = k_node.start_mark.line + 1
            out[k] = _build(loader, v_node, (*key, k), lines, path, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, (*key, i), lines, path, problems) for i, item in enumerate(node.value)]
    lines.values[key] = node.start_mark.line + 1
    return loader.construct_object(node, deep=True)


def _line(lines: Lines, loc: tuple[Any, ...]) -> int | None:
    """The line of the entry ``loc``, or of its deepest known parent."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines.entries:
            return lines.entries[loc[:n]]
    return None


def _value_line(lines: Lines, loc: tuple[Any, ...]) -> int | None:
    """The line of the scalar value at ``loc`` (for ``key:`` then the value on the next
    line, the value's line); the entry's line when the value is not a scalar."""
    return lines.values.get(loc) or _line(lines, loc)


def _pydantic_problems(
    exc: ValidationError, path: Path, lines: Lines, prefix: tuple[Any, ...] = ()
) -> Iterator[Problem]:
    for err in exc.errors():
        loc = (*prefix, *err["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            yield Problem.at(path, _line(lines, loc), f"unknown key {field!r}")
        elif err["type"] == "missing":
            yield Problem.at(path, _line(lines, loc), f"missing required key {field!r}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            yield Problem.at(path, _value_line(lines, loc), f"{field}: {msg}")


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


def clock_change_note(local: datetime, tz: ZoneInfo) -> str | None:
    """What the wall-clock time ``local`` (its date and time, read in ``tz``) means when the
    clocks change then, as ``2027-03-28 01:30 does not exist in ...``; None when it names
    exactly one moment.

    A time the clocks skip (01:30 on the day they go forward) is read as the same wall time
    before the change, which lands after it; a time that happens twice (01:30 on the day
    they go back) is its first occurrence. Both are quiet surprises, so ``validate`` says
    which moment will be used, with its offset.
    """
    naive = local.replace(tzinfo=None)
    first = naive.replace(tzinfo=tz, fold=0)
    used = first.astimezone(UTC).astimezone(tz)
    written = f"{naive:%Y-%m-%d %H:%M}"
    if used.replace(tzinfo=None) != naive:
        return (f"{written} does not exist in {tz.key} (the clocks go forward then): "
                f"it is read as {_with_offset(used)}")
    second = naive.replace(tzinfo=tz, fold=1)
    if first.utcoffset() != second.utcoffset():
        later = second.astimezone(UTC).astimezone(tz)
        return (f"{written} happens twice in {tz.key} (the clocks go back then): the first is used, "
                f"{_with_offset(used)}; write {later.isoformat(timespec='minutes')} for the second")
    return None


def _with_offset(moment: datetime) -> str:
    """``2027-03-28 02:30 BST (+01:00)``."""
    return f"{moment:%Y-%m-%d %H:%M} {moment.tzname()} ({moment.isoformat()[-6:]})"


def load_config(config_dir: Path | str) -> Config:
    """Load and validate the whole config directory; raise ConfigError with every problem."""
    config, problems = load_partial(config_dir)
    if problems:
        raise ConfigError(problems)
    return config


def load_partial(config_dir: Path | str) -> tuple[Config, list[Problem]]:
    """Every problem in the config directory, and a Config of what loaded despite them.

    For ``notifier validate``, which goes on to check the templates of what loaded so that
    every problem is reported at once. A list, account or consultation with a problem is
    left out of the Config, and so are references to what is not there (an unknown list in
    an audience or an include, an unknown channel); a reference to something that exists
    but failed to load is not reported again as unknown. When there are problems the Config
    is not validated as a whole (it may lack the organisation or the sender), so it is only
    fit for checking, never for sending. Only a missing config directory or notifier.yaml
    stops everything (ConfigError).
    """
    root = Path(config_dir)
    problems: list[Problem] = []
    main_path = root / "notifier.yaml"
    if not root.is_dir():
        raise ConfigError([Problem.at(root, None, "config directory not found (set NOTIFIER_CONFIG)")])
    if not main_path.exists():
        raise ConfigError([Problem.at(main_path, None, "missing: every config directory needs notifier.yaml")])

    failed = _Failed()
    main, lines = read_yaml(main_path, problems)
    tz = ZoneInfo("Europe/London")
    settings: dict[str, Any] = {"templates": root.parent / "templates"}
    accounts: dict[str, Account] = {}
    if isinstance(main, dict):
        settings, accounts, tz = _load_main(main, main_path, lines, root, problems, failed)
    else:
        failed.any_account = True
        if main is not None:
            problems.append(Problem.at(main_path, 1, "must be a mapping of settings"))

    lists = _load_lists(root / "stakeholders", problems, failed)
    consultations = _load_consultations(root / "consultations", tz, problems)
    _check_references(lists, consultations, accounts, failed, problems)
    if not _errors(problems):
        return Config(root=root, lists=lists, consultations=consultations, accounts=accounts,
                      warnings=tuple(problems), **settings), []
    lists, consultations = _without_dangling(lists, consultations, accounts)
    partial = Config.model_construct(
        root=root,
        organisation=settings.get("organisation", ""),
        timezone=tz.key,
        email=settings.get("email"),  # type: ignore[arg-type]  # partial: may be missing
        accounts=accounts,
        templates=settings["templates"],
        lists=lists,
        consultations=consultations,
        warnings=(),
    )
    return partial, problems


@dataclass
class _Failed:
    """What exists but did not load, so cross-file checks do not call it unknown as well."""

    lists: set[str] = field(default_factory=set)
    accounts: set[str] = field(default_factory=set)
    any_list: bool = False  # a stakeholders file could not be read: any list id may be in it
    any_account: bool = False  # notifier.yaml or its accounts could not be read


def _load_main(
    main: dict[str, Any], path: Path, lines: Lines, root: Path, problems: list[Problem], failed: _Failed
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
            Problem.at(path, _value_line(lines, ("timezone",)), f"unknown timezone {tz_name!r} (e.g. Europe/London)")
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
            Problem.at(path, _value_line(lines, ("templates",)) or 1,
                       f"templates directory {settings['templates']} not found")
        )

    accounts: dict[str, Account] = {}
    raw_accounts = main.get("accounts") or {}
    if not isinstance(raw_accounts, dict):
        problems.append(Problem.at(path, _line(lines, ("accounts",)), "accounts must be a mapping of id: settings"))
        failed.any_account = True
        raw_accounts = {}
    for account_id, raw in raw_accounts.items():
        where = Where(str(path), _line(lines, ("accounts", account_id)))
        account = _account(account_id, raw, where, path, lines, problems)
        if account is None:
            failed.accounts.add(str(account_id))
        else:
            accounts[account_id] = account
    return settings, accounts, tz


def _account(
    account_id: Any, raw: Any, where: Where, path: Path, lines: Lines, problems: list[Problem]
) -> Account | None:
    """One entry of ``accounts``, or None when it has a problem (added to ``problems``)."""
    if not _ID.match(str(account_id)) or account_id == EMAIL_CHANNEL:
        problems.append(
            where.problem(f"account id {account_id!r} must be lower-case letters, digits, - or _, and not 'email'")
        )
        return None
    if not isinstance(raw, dict):
        problems.append(where.problem(f"account {account_id!r} must be a mapping with a platform"))
        return None
    try:
        account = Account.model_validate(raw).model_copy(update={"id": account_id, "where": where})
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, path, lines, ("accounts", account_id)))
        return None
    needs = {"facebook": "page_id", "mastodon": "instance", "bluesky": "handle", "webhook": "url"}
    need = needs.get(account.platform)
    if need and not getattr(account, need) and not (need == "instance" and account.api_base):
        problems.append(where.problem(f"account {account_id!r} ({account.platform}) needs {need!r}"))
        return None
    before = len(problems)
    for key in ("url", "instance", "api_base"):
        value = getattr(account, key)
        if value is not None and not _is_http_url(value):
            line = _value_line(lines, ("accounts", account_id, key))
            problems.append(Problem.at(path, line, f"{key} must be an http(s) URL like https://example.org/…, "
                                                   f"not {value!r}"))
    return account if len(problems) == before else None


def _is_http_url(value: str) -> bool:
    """True for an absolute ``http://`` or ``https://`` URL with a host."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


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


def _load_lists(folder: Path, problems: list[Problem], failed: _Failed) -> dict[str, StakeholderList]:
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
            for item in _lists_from_yaml(path, problems, failed):
                add(item)
        elif path.suffix == ".csv":
            from_csv = _list_from_csv(path, problems)
            if from_csv is None:
                failed.lists.add(path.stem)
            else:
                add(from_csv)
    return lists


def _lists_from_yaml(path: Path, problems: list[Problem], failed: _Failed) -> Iterator[StakeholderList]:
    data, lines = read_yaml(path, problems)
    if not isinstance(data, dict) or set(data) - {"lists"}:
        failed.any_list = True
        if data is None:
            return  # read_yaml said why
        extra = sorted(set(data) - {"lists"}) if isinstance(data, dict) else []
        what = f"unknown key {extra[0]!r}" if extra else "a stakeholders file is a mapping with one key, 'lists'"
        problems.append(Problem.at(path, _line(lines, (extra[0],)) if extra else 1, what))
        return
    raw_lists = data.get("lists") or {}
    if not isinstance(raw_lists, dict):
        failed.any_list = True
        problems.append(Problem.at(path, _line(lines, ("lists",)), "'lists' must map list ids to lists"))
        return
    for list_id, raw in raw_lists.items():
        item = _list_from_yaml(list_id, raw, path, lines, problems)
        if item is None:
            failed.lists.add(str(list_id))
        else:
            yield item


def _list_from_yaml(
    list_id: Any, raw: Any, path: Path, lines: Lines, problems: list[Problem]
) -> StakeholderList | None:
    """One entry of ``lists``, or None when it has a problem (added to ``problems``)."""
    where = Where(str(path), _line(lines, ("lists", list_id)))
    if not _ID.match(str(list_id)):
        problems.append(where.problem(f"list id {list_id!r} must be lower-case letters, digits, - or _"))
        return None
    if not isinstance(raw, dict):
        problems.append(where.problem(f"list {list_id!r} must be a mapping with members and/or include"))
        return None
    try:
        item = StakeholderList.model_validate(raw).model_copy(update={"id": list_id, "where": where})
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, path, lines, ("lists", list_id)))
        return None
    item._lines = lines
    return item


_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0"}


def _list_from_csv(path: Path, problems: list[Problem]) -> StakeholderList | None:
    """The list in one CSV file (id = file stem), or None when it has a problem."""
    list_id = path.stem
    where = Where(str(path), 1)
    if not _ID.match(list_id):
        problems.append(
            where.problem(f"list id {list_id!r} (the file name) must be lower-case letters, digits, - or _")
        )
        return None
    text = _read_csv_text(path, problems)
    if text is None:
        return None
    # At 100,000 rows the cyclic collector would otherwise run full passes over the growing
    # heap of members several times.
    with collector_paused():
        return _csv_list(list_id, path, text, where, problems)


def _csv_list(list_id: str, path: Path, text: str, where: Where, problems: list[Problem]) -> StakeholderList | None:
    """The list made of a CSV file's rows, or None when it has a problem (added to ``problems``)."""
    before = len(problems)
    reader = csv.reader(io.StringIO(text, newline=""))
    members: list[Member] = []
    try:
        header = [h.strip() for h in next(reader, [])]
        if "email" not in header:
            problems.append(where.problem("the header row must have an 'email' column"))
            return None
        if len(set(header)) != len(header):
            problems.append(where.problem("the header row repeats a column name"))
            return None
        file = str(path)
        while True:
            line = reader.line_num + 1  # where the next row starts: a quoted cell may span lines
            cells = next(reader, None)
            if cells is None:
                break
            member = _csv_member(header, cells, file, line, problems)
            if member is not None:
                members.append(member)
    except csv.Error as exc:
        problems.append(Problem.at(path, reader.line_num, f"cannot read CSV: {exc}"))
        return None
    if len(problems) != before:
        return None
    return StakeholderList(id=list_id, name=None, members=tuple(members), where=where)


def _read_csv_text(path: Path, problems: list[Problem]) -> str | None:
    """The text of a CSV file, or None with a problem saying how to save it as UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.append(Problem.at(path, None, f"cannot read CSV: {exc}"))
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problems.append(Problem.at(
            path, line, f"not UTF-8 (byte 0x{data[exc.start]:02x} on this line): save the file as "
            '"CSV UTF-8" (in Excel: File > Save As > CSV UTF-8 (Comma delimited))'
        ))
        return None
    if not text.strip():
        problems.append(Problem.at(path, None, "empty file: a CSV list needs a header row with an 'email' column"))
        return None
    return text


def _csv_member(header: list[str], cells: list[str], path: str, line: int, problems: list[Problem]) -> Member | None:
    """The member in one CSV row, or None for a blank row or one with a problem (added to
    ``problems`` at ``path``:``line``)."""
    if len(cells) != len(header):
        if len(cells) > len(header):
            problems.append(Problem.at(path, line, f"row has more cells than the header ({len(header)})"))
            return None
        cells = cells + [""] * (len(header) - len(cells))
    raw: dict[str, Any] = dict(zip(header, map(str.strip, cells), strict=True))
    if not any(raw.values()):
        return None
    for key in _BLANK_IS_NONE:  # a blank name or organisation is no name or organisation
        if raw.get(key) == "":
            del raw[key]
    subscribed = raw.get("subscribed")
    if subscribed is not None:
        subscribed = subscribed.lower()
        if subscribed in _TRUE or subscribed == "":
            raw["subscribed"] = True
        elif subscribed in _FALSE:
            raw["subscribed"] = False
        else:
            problems.append(Problem.at(path, line, f"subscribed must be true or false, not {subscribed!r}"))
            return None
    try:
        return Member.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            field_name = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(Problem.at(path, line, f"{field_name}: {msg}"))
        return None


_BLANK_IS_NONE = ("name", "organisation")


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
            continue  # read_yaml said why
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
    before = _errors(problems)
    data = dict(data)
    for key in ("id", "where"):
        if key in data:
            problems.append(Problem.at(path, _line(lines, (key,)), f"unknown key {key!r}"))
            data.pop(key)
    moments = [_moment(data, key, path, lines, tz, problems) for key in ("opens", "closes") if key in data]
    if not all(moments):
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
            problems.append(
                Problem.at(path, at_line, f"event name {name!r} must be lower-case letters, digits, - or _")
            )
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
    if not _is_http_url(consultation.url):
        problems.append(Problem.at(path, _value_line(lines, ("url",)), "url must be an http(s) URL like "
                                   f"https://www.example.org/consultations/…, not {consultation.url!r}"))
    if consultation.opens >= consultation.closes:
        problems.append(
            Problem.at(path, _line(lines, ("closes",)), "closes must be after opens "
                       f"({consultation.closes:%Y-%m-%d %H:%M} is not after {consultation.opens:%Y-%m-%d %H:%M})")
        )
    _check_event_times(consultation, path, lines, tz, problems)
    return consultation if _errors(problems) == before else None


def _check_event_times(
    consultation: Consultation, path: Path, lines: Lines, tz: ZoneInfo, problems: list[Problem]
) -> None:
    """Each event's ``at``: an error if it cannot be read, a warning if the clocks skip or
    repeat the wall-clock time it names."""
    from notifier.timeline import parse_at

    for event in consultation.events.values():
        if event.at is None:
            continue
        line = _value_line(lines, ("events", event.name, "at"))
        try:
            at = parse_at(event.at, tz)
        except ValueError as exc:
            problems.append(Problem.at(path, line, str(exc)))
            continue
        note = _event_clock_note(consultation, at.moment, at.anchor, at.days, tz)
        if note:
            if at.moment is None:  # "at: closes - 7d is 2027-10-31 01:30, which happens twice ..."
                day, time, rest = note.split(" ", 2)
                note = f"{event.at.strip()} is {day} {time}, which {rest}"
            problems.append(Problem.warn(path, line, f"at: {note}"))


def _event_clock_note(
    consultation: Consultation, moment: datetime | None, anchor: str | None, days: int, tz: ZoneInfo
) -> str | None:
    """:func:`clock_change_note` for the wall-clock time an event's ``at`` names: a local
    datetime as written, or opens/closes moved by whole days (which keep the wall time)."""
    if moment is not None:
        return clock_change_note(moment, tz) if moment.tzinfo is tz else None
    if not days:
        return None  # opens or closes itself (warned about there), or moved by elapsed hours
    base = consultation.opens if anchor == "opens" else consultation.closes
    return clock_change_note(base.astimezone(tz) + timedelta(days=days), tz)


def _errors(problems: list[Problem]) -> int:
    """How many of ``problems`` are errors (not warnings)."""
    return sum(problem.severity == "error" for problem in problems)


def _moment(data: dict[str, Any], key: str, path: Path, lines: Lines, tz: ZoneInfo, problems: list[Problem]) -> bool:
    """Replace ``data[key]`` with the aware datetime it says; False (and a problem) if it cannot."""
    try:
        data[key] = moment = _parse_moment(data[key], tz)
    except ValueError as exc:
        problems.append(Problem.at(path, _value_line(lines, (key,)), f"{key}: {exc}"))
        return False
    note = clock_change_note(moment, tz) if moment.tzinfo is tz else None  # local time, no offset written
    if note:
        problems.append(Problem.warn(path, _value_line(lines, (key,)), f"{key}: {note}"))
    return True


def _check_references(
    lists: dict[str, StakeholderList],
    consultations: dict[str, Consultation],
    accounts: dict[str, Account],
    failed: _Failed,
    problems: list[Problem],
) -> None:
    """Cross-file checks: includes, cycles, audiences and channels that name real things.

    A name that exists but failed to load (``failed``) has been reported already.
    """
    from notifier.audience import find_cycle

    def unknown_list(name: str) -> bool:
        return name not in lists and name not in failed.lists and not failed.any_list

    for item in lists.values():
        for i, included in enumerate(item.include):
            if unknown_list(included):
                problems.append(
                    Problem.at(item.where.path, item.line("include", i),
                               f"list {item.id!r} includes unknown list {included!r}")
                )
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
                if unknown_list(name):
                    known = ", ".join(sorted(lists))
                    line = consultation.line(*key, "audience", i)
                    problems.append(Problem.at(path, line, f"unknown list {name!r} in audience (known: {known})"))
            for i, name in enumerate(channel_names):
                if name not in channels and name not in failed.accounts and not failed.any_account:
                    known = ", ".join(sorted(channels))
                    line = consultation.line(*key, "channels", i)
                    problems.append(Problem.at(path, line, f"unknown channel {name!r} (known: {known})"))


def _without_dangling(
    lists: dict[str, StakeholderList], consultations: dict[str, Consultation], accounts: dict[str, Account]
) -> tuple[dict[str, StakeholderList], dict[str, Consultation]]:
    """``lists`` and ``consultations`` less their references to lists and channels that are
    not there, so what did load can still be checked (see :func:`load_partial`)."""
    channels = {EMAIL_CHANNEL, *accounts}

    def known(names: tuple[str, ...] | None, among: Collection[str]) -> tuple[str, ...] | None:
        return None if names is None else tuple(n for n in names if n in among)

    kept_lists = {
        list_id: item.model_copy(update={"include": known(item.include, lists)}) for list_id, item in lists.items()
    }
    kept_consultations = {}
    for consultation_id, consultation in consultations.items():
        events = {
            name: event.model_copy(update={"audience": known(event.audience, lists),
                                           "channels": known(event.channels, channels)})
            for name, event in consultation.events.items()
        }
        kept_consultations[consultation_id] = consultation.model_copy(update={
            "audience": known(consultation.audience, lists),
            "channels": known(consultation.channels, channels),
            "events": events,
        })
    return kept_lists, kept_consultations
