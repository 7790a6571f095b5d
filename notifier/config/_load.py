"""Loading ``config/`` whole: notifier.yaml, stakeholder lists, consultations, then cross-file checks.

Every problem carries the file and line it comes from, and all problems are collected in
one pass: :func:`load_config` raises one :class:`~notifier.errors.ConfigError` listing them
all, or returns a :class:`Config` whose ``warnings`` may still say something.
:func:`load_partial` returns the problems with a Config of whatever loaded, so that
``notifier validate`` can go on to check its templates.
"""

from __future__ import annotations

from collections.abc import Iterator
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from pydantic import ValidationError

from notifier.config._checks import Failed, check_references, count_errors, is_http_url, without_dangling
from notifier.config._consultations import load_consultations
from notifier.config._csv import list_from_csv
from notifier.config._models import (
    EMAIL_CHANNEL,
    ID,
    Account,
    BlackoutSpec,
    Config,
    EmailSettings,
    Lines,
    SendWindowSpec,
    StakeholderList,
    Where,
)
from notifier.config._yaml import pydantic_problems, read_yaml
from notifier.errors import ConfigError, Problem


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

    failed = Failed()
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
    consultations = load_consultations(root / "consultations", tz, problems)
    for item in consultations.values():
        item.with_window(settings.get("send_window"), settings.get("blackouts", ()))
    check_references(lists, consultations, accounts, failed, problems)
    if not count_errors(problems):
        return Config(
            root=root, lists=lists, consultations=consultations, accounts=accounts, warnings=tuple(problems), **settings
        ), []
    lists, consultations = without_dangling(lists, consultations, accounts)
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


def _load_main(  # noqa: PLR0913 - the file read (data, path, lines), its folder, and the two collectors
    main: dict[str, Any], path: Path, lines: Lines, root: Path, problems: list[Problem], failed: Failed
) -> tuple[dict[str, Any], dict[str, Account], ZoneInfo]:
    known = {"organisation", "timezone", "email", "accounts", "templates", "send_window", "blackouts"}
    for key in main:
        if key not in known:
            problems.append(Problem.at(path, lines.line((key,)), f"unknown key {key!r}"))
    tz = ZoneInfo("Europe/London")
    tz_name = main.get("timezone", "Europe/London")
    try:
        tz = ZoneInfo(str(tz_name))
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(
            Problem.at(path, lines.value_line(("timezone",)), f"unknown timezone {tz_name!r} (e.g. Europe/London)")
        )
    settings: dict[str, Any] = {"timezone": tz.key}
    if "organisation" not in main:
        problems.append(Problem.at(path, 1, "missing required key 'organisation'"))
    elif not isinstance(main["organisation"], str) or not main["organisation"].strip():
        problems.append(Problem.at(path, lines.line(("organisation",)), "organisation must be text"))
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
            problems.extend(pydantic_problems(exc, path, lines, ("email",)))
    settings.update(_window_settings(main, path, lines, problems))
    templates = main.get("templates")
    settings["templates"] = (root / str(templates)) if templates else root.parent / "templates"
    if not Path(settings["templates"]).is_dir():
        problems.append(
            Problem.at(
                path, lines.value_line(("templates",)) or 1, f"templates directory {settings['templates']} not found"
            )
        )

    accounts: dict[str, Account] = {}
    raw_accounts = main.get("accounts") or {}
    if not isinstance(raw_accounts, dict):
        problems.append(Problem.at(path, lines.line(("accounts",)), "accounts must be a mapping of id: settings"))
        failed.any_account = True
        raw_accounts = {}
    for account_id, raw in raw_accounts.items():
        account = _account(account_id, raw, path, lines, problems)
        if account is None:
            failed.accounts.add(str(account_id))
        else:
            accounts[account_id] = account
    return settings, accounts, tz


def _window_settings(main: dict[str, Any], path: Path, lines: Lines, problems: list[Problem]) -> dict[str, Any]:
    """``send_window`` and ``blackouts`` of notifier.yaml, as far as they are valid."""
    found: dict[str, Any] = {}
    if main.get("send_window") is not None:
        try:
            found["send_window"] = SendWindowSpec.model_validate(main["send_window"])
        except ValidationError as exc:
            problems.extend(pydantic_problems(exc, path, lines, ("send_window",)))
    raw = main.get("blackouts") or []
    if not isinstance(raw, list):
        problems.append(Problem.at(path, lines.line(("blackouts",)), "blackouts must be a list of {from, to, reason}"))
        return found
    blackouts = []
    for i, item in enumerate(raw):
        try:
            blackouts.append(BlackoutSpec.model_validate(item))
        except ValidationError as exc:
            problems.extend(pydantic_problems(exc, path, lines, ("blackouts", i)))
    found["blackouts"] = tuple(blackouts)
    return found


def _account(account_id: Any, raw: Any, path: Path, lines: Lines, problems: list[Problem]) -> Account | None:
    """One entry of ``accounts``, or None when it has a problem (added to ``problems``)."""
    where = Where(str(path), lines.line(("accounts", account_id)))
    if not ID.match(str(account_id)) or account_id == EMAIL_CHANNEL:
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
        problems.extend(pydantic_problems(exc, path, lines, ("accounts", account_id)))
        return None
    needs = {"facebook": "page_id", "mastodon": "instance", "bluesky": "handle", "webhook": "url"}
    need = needs.get(account.platform)
    if need and not getattr(account, need) and not (need == "instance" and account.api_base):
        problems.append(where.problem(f"account {account_id!r} ({account.platform}) needs {need!r}"))
        return None
    before = len(problems)
    for key in ("url", "instance", "api_base"):
        value = getattr(account, key)
        if value is not None and not is_http_url(value):
            line = lines.value_line(("accounts", account_id, key))
            problems.append(
                Problem.at(path, line, f"{key} must be an http(s) URL like https://example.org/…, not {value!r}")
            )
    return account if len(problems) == before else None


def _check_sender(email: EmailSettings, path: Path, lines: Lines, problems: list[Problem]) -> None:
    """``email.from`` and ``email.reply_to``: one line each, with a valid address."""
    for key, value in (("from", email.from_), ("reply_to", email.reply_to)):
        if value is None:
            continue
        line = lines.line(("email", key))
        if "\r" in value or "\n" in value:
            problems.append(Problem.at(path, line, f"email.{key} must be one line"))
            continue
        _, address = parseaddr(value)
        try:
            validate_email(address, check_deliverability=False)
        except EmailNotValidError as exc:
            problems.append(Problem.at(path, line, f"email.{key}: invalid address {value!r}: {exc}"))


def _load_lists(folder: Path, problems: list[Problem], failed: Failed) -> dict[str, StakeholderList]:
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
            from_csv = list_from_csv(path, problems)
            if from_csv is None:
                failed.lists.add(path.stem)
            else:
                add(from_csv)
    return lists


def _lists_from_yaml(path: Path, problems: list[Problem], failed: Failed) -> Iterator[StakeholderList]:
    data, lines = read_yaml(path, problems)
    if not isinstance(data, dict) or set(data) - {"lists"}:
        failed.any_list = True
        if data is None:
            return  # read_yaml said why
        extra = sorted(set(data) - {"lists"}) if isinstance(data, dict) else []
        what = f"unknown key {extra[0]!r}" if extra else "a stakeholders file is a mapping with one key, 'lists'"
        problems.append(Problem.at(path, lines.line((extra[0],)) if extra else 1, what))
        return
    raw_lists = data.get("lists") or {}
    if not isinstance(raw_lists, dict):
        failed.any_list = True
        problems.append(Problem.at(path, lines.line(("lists",)), "'lists' must map list ids to lists"))
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
    where = Where(str(path), lines.line(("lists", list_id)))
    if not ID.match(str(list_id)):
        problems.append(where.problem(f"list id {list_id!r} must be lower-case letters, digits, - or _"))
        return None
    if not isinstance(raw, dict):
        problems.append(where.problem(f"list {list_id!r} must be a mapping with members and/or include"))
        return None
    try:
        item = StakeholderList.model_validate(raw).model_copy(update={"id": list_id, "where": where})
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, path, lines, ("lists", list_id)))
        return None
    item._lines = lines
    return item
