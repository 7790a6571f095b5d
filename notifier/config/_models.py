"""The typed, frozen models of ``config/``: lists and members, accounts, consultations, the whole Config.

The bottom of :mod:`notifier.config`, so that the modules built on the models (audience,
timeline, rendering, ...) can import them without importing the loader: it imports only
:mod:`notifier.errors` and the address checks of :mod:`notifier.config._email`, which import
nothing of notifier's. Where each thing was written (:class:`Where`, :class:`Lines`) is part
of the model, for messages that name a file and line.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from notifier.config._email import check_email
from notifier.errors import InvalidValueError, Problem, UsageError
from notifier.pace import Limits, Rate
from notifier.window import Blackout, SendWindow, check_region, parse_days, parse_hours

EMAIL_CHANNEL = "email"
PLATFORMS = ("x", "facebook", "mastodon", "bluesky", "webhook")
DEFAULT_EVENTS = {"opened": "opens", "reminder": "closes - 7d", "closed": "closes"}
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
ID = re.compile(ID_PATTERN)


@dataclass
class Lines:
    """Where things are in one YAML file, by key path (``("lists", "police", "include", 1)``).

    ``entries`` has the line of each mapping entry (its key's line, so an error about the list
    ``police`` points at ``police:``, not at the block below it) and of each sequence item.
    ``values`` has the line of each scalar value, for messages about the value itself.
    """

    entries: dict[tuple[Any, ...], int] = field(default_factory=dict)
    values: dict[tuple[Any, ...], int] = field(default_factory=dict)

    def line(self, loc: tuple[Any, ...]) -> int | None:
        """The line of the entry ``loc``, or of its deepest known parent."""
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.entries:
                return self.entries[loc[:n]]
        return None

    def value_line(self, loc: tuple[Any, ...]) -> int | None:
        """The line of the scalar value at ``loc`` (for ``key:`` then the value on the next
        line, the value's line); the entry's line when the value is not a scalar."""
        return self.values.get(loc) or self.line(loc)


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


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode's Cc: C0 controls, DEL and C1 controls


def _no_control(value: str) -> None:
    """ValueError naming the first control character in ``value`` (a line break, a NUL, ...)."""
    found = _CONTROL.search(value)
    if found is not None:
        code = ord(found.group())
        what = {0: " (NUL)", 9: " (tab)", 10: " (line feed)", 13: " (carriage return)"}.get(code, "")
        raise InvalidValueError(
            f"contains the control character U+{code:04X}{what}: names and organisations are one line of text"
        )


#: The distinct sets of fields given to members (by content), for :meth:`Member._shared`.
_FIELDS_GIVEN: dict[frozenset[str], set[str]] = {}


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
        return check_email(value)

    @field_validator("name", "organisation")
    @classmethod
    def _one_plain_line(cls, value: str | None) -> str | None:
        # The name goes into the To header of every e-mail: a CR, LF or NUL there is header
        # injection or SMTP smuggling (C\r.\rMAIL FROM:...), whatever the MIME writer does.
        if value is not None:
            _no_control(value)
        return value

    @model_validator(mode="after")
    def _shared(self) -> Member:
        """Share what repeats from member to member instead of keeping a copy in each: the
        set of fields given (pydantic keeps one per instance: 216 bytes) and the text of the
        organisation and of extra keys (``role``…), interned: many members share them. Names
        and addresses are mostly unique and are left alone. Every process that loads the
        config holds every member, so at 100,000 members this saves megabytes in each (a
        worker peaked at 220 MB against a goal of 200: bench/RESULTS.md, 2026-11-30). Safe
        because a member is frozen: pydantic never changes the set of an instance it has made
        (a copy gets its own)."""
        given = self.__pydantic_fields_set__
        object.__setattr__(self, "__pydantic_fields_set__", _FIELDS_GIVEN.setdefault(frozenset(given), given))
        if self.organisation is not None:
            self.__dict__["organisation"] = sys.intern(self.organisation)
        extra = self.__pydantic_extra__
        if extra:
            for key, value in extra.items():
                if type(value) is str:
                    extra[key] = sys.intern(value)
        return self

    @property
    def extra(self) -> dict[str, Any]:
        """Keys beyond the known ones, for templates."""
        return dict(self.model_extra or {})


def _rate(value: Any) -> Any:
    """``rate: 30/minute``: checked now (a clear message at its line), kept as written."""
    if value is not None:
        Rate.parse(str(value))
        return str(value)
    return value


#: ``N/second``, ``N/minute`` or ``N/hour``: the most a channel sends, across every worker.
RateText = Annotated[str, BeforeValidator(_rate)]


class SendWindowSpec(_Model):
    """``send_window``: the days and hours scheduled events may fire (see :mod:`notifier.window`)."""

    days: str = "mon-sun"
    hours: str = "00:00-24:00"
    skip_bank_holidays: str | None = None

    @field_validator("days")
    @classmethod
    def _days(cls, value: str) -> str:
        parse_days(value)
        return value

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: str) -> str:
        parse_hours(value)
        return value

    @field_validator("skip_bank_holidays")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        return check_region(value) if value is not None else None

    def window(self, blackouts: tuple[BlackoutSpec, ...]) -> SendWindow:
        """The window this spec describes, with ``blackouts``."""
        opens, closes = parse_hours(self.hours)
        return SendWindow(
            days=parse_days(self.days),
            opens=opens,
            closes=closes,
            region=self.skip_bank_holidays,
            blackouts=tuple(Blackout(b.from_, b.to, b.reason) for b in blackouts),
        )


class BlackoutSpec(_Model):
    """An entry of ``blackouts``: whole local days (``from`` to ``to`` inclusive) and why."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    from_: date = Field(alias="from")
    to: date
    reason: Text

    @model_validator(mode="after")
    def _in_order(self) -> BlackoutSpec:
        if self.to < self.from_:
            raise InvalidValueError(f"blackout ends ({self.to}) before it starts ({self.from_})")
        return self


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
        return self._lines.line(("lists", self.id, *key)) or self.where.line


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
    rate: RateText | None = None
    where: Where = Where("")


class EmailSettings(_Model):
    """The sender of every e-mail."""

    from_: Text = Field(alias="from")
    reply_to: Text | None = None
    rate: RateText | None = None
    #: The most e-mails one local day (in the configured timezone), across every worker.
    daily: int | None = Field(default=None, gt=0)
    #: Envelope senders ``bounces+<opaque id>@bounce_domain`` (VERP); off when unset.
    bounce_domain: Text | None = None
    #: ``imaps://user@host[:port]/FOLDER`` the scheduler reads bounces from (password: NOTIFIER_BOUNCE_PASSWORD).
    bounce_mailbox: Text | None = None

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @field_validator("bounce_domain")
    @classmethod
    def _a_domain(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                return check_email(f"bounces@{value}").partition("@")[2]
            except InvalidValueError:
                raise InvalidValueError(f"{value!r} is not a mail domain (e.g. pcc.example)") from None
        return value

    @field_validator("bounce_mailbox")
    @classmethod
    def _an_imap_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme != "imaps" or not parts.hostname or not parts.username or parts.password:
                raise InvalidValueError(
                    f"{value!r} must look like imaps://user@host/INBOX "
                    "(the password comes from NOTIFIER_BOUNCE_PASSWORD, never the config)"
                )
        return value


class EventSpec(_Model):
    """An event of a consultation: when it fires (``at``; none for on-demand events such as
    an outcome) and optionally narrower ``channels`` and ``audience``."""

    name: str = ""
    at: str | None = None
    channels: tuple[str, ...] | None = None
    audience: tuple[str, ...] | None = None
    #: ``[responded]``: leave out recipients whose address or organisation has a recorded response.
    skip: tuple[Literal["responded"], ...] = ()
    #: ``ignore``: fire at ``at`` even outside the send window (a deadline, say).
    window: Literal["ignore"] | None = None
    #: Attach an ``.ics`` with the closing date to the event's e-mails (:mod:`notifier.calendar`).
    attach_calendar: bool = False
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
    #: This consultation's own send window, instead of notifier.yaml's.
    send_window: SendWindowSpec | None = None
    where: Where = Where("")
    _lines: Lines = PrivateAttr(default_factory=Lines)
    _window: SendWindow | None = PrivateAttr(default=None)

    def line(self, *key: Any) -> int | None:
        """The line in this consultation's file of ``key`` (e.g. ``"audience", 0``)."""
        return self._lines.line(key)

    @property
    def window(self) -> SendWindow | None:
        """The send window its scheduled events keep to (its own, or notifier.yaml's), with
        the blackouts; None when there is none. Set by the loader (:meth:`with_window`)."""
        return self._window

    def with_window(self, default: SendWindowSpec | None, blackouts: tuple[BlackoutSpec, ...]) -> Consultation:
        """Itself, keeping to its own send window or else ``default``, and the ``blackouts``."""
        spec = self.send_window or default
        if spec is None and blackouts:
            spec = SendWindowSpec()
        self._window = spec.window(blackouts) if spec is not None else None
        return self


class Config(_Model):
    """The whole, validated configuration."""

    root: Path
    organisation: Text
    timezone: str = "Europe/London"
    email: EmailSettings
    accounts: dict[str, Account] = Field(default_factory=dict)
    send_window: SendWindowSpec | None = None
    blackouts: tuple[BlackoutSpec, ...] = ()
    templates: Path
    lists: dict[str, StakeholderList] = Field(default_factory=dict)
    consultations: dict[str, Consultation] = Field(default_factory=dict)
    warnings: tuple[Problem, ...] = ()

    @property
    def tz(self) -> ZoneInfo:
        """The configured timezone."""
        return ZoneInfo(self.timezone)

    @property
    def window(self) -> SendWindow | None:
        """notifier.yaml's send window and blackouts (a consultation may have its own)."""
        if self.send_window is None and not self.blackouts:
            return None
        return (self.send_window or SendWindowSpec()).window(self.blackouts)

    def rate(self, channel: str) -> Rate | None:
        """The most ``channel`` may send, across every worker; None: as fast as it goes."""
        text = self.email.rate if channel == EMAIL_CHANNEL else getattr(self.accounts.get(channel), "rate", None)
        return Rate.parse(text) if text else None

    def limits(self, channel: str) -> Limits | None:
        """What ``channel`` keeps to (its rate; e-mail's daily cap, counted in local days and
        resuming at the send window's opening); None when it has neither."""
        daily = self.email.daily if channel == EMAIL_CHANNEL else None
        rate = self.rate(channel)
        if rate is None and daily is None:
            return None
        return Limits(rate=rate, daily=daily, tz=self.tz, window=self.window)

    @property
    def channels(self) -> tuple[str, ...]:
        """Every channel name: ``email`` and each account id."""
        return (EMAIL_CHANNEL, *self.accounts)

    def consultation(self, consultation_id: str) -> Consultation:
        """The consultation with this id, or a :class:`UsageError` listing the known ones."""
        try:
            return self.consultations[consultation_id]
        except KeyError:
            known = ", ".join(sorted(self.consultations)) or "none"
            raise UsageError(f"unknown consultation {consultation_id!r} (known: {known})") from None
