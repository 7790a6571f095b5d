"""Config loading: the example loads; problems carry file and line; all are reported at once."""

from __future__ import annotations

import gc
import weakref
from datetime import datetime
from pathlib import Path

import pytest

from notifier import audience
from notifier.config import Member, Settings, load_config, load_partial, read_yaml, token_variable
from notifier.errors import ConfigError, Problem
from tests.conftest import Project


def test_the_example_loads_into_typed_frozen_models(project: Project) -> None:
    config = load_config(project.config)
    consultation = config.consultations["soc-strategy-2019"]
    assert consultation.opens == datetime.fromisoformat("2019-07-09T09:00:00+01:00")
    assert consultation.closes.isoformat() == "2019-08-15T23:59:00+01:00"
    assert config.lists["key-partners"].include
    assert config.lists["media"].members  # the CSV list
    with pytest.raises(Exception, match="frozen"):
        consultation.title = "changed"  # type: ignore[misc]


def test_every_problem_is_reported_in_one_pass(project: Project) -> None:
    project.write(
        "config/stakeholders/extra.yaml",
        ("lists:\n  extra:\n    members:\n      - {email: not-an-address}\n    colour: blue\n"),
    )
    project.write(
        "config/consultations/second.yaml",
        (
            "title: Second\nurl: https://x.example\nsummary: S\n"
            "opens: 2020-01-10 09:00\ncloses: 2020-01-01 09:00\n"
            "audience: [extra]\nchannels: [email]\n"
        ),
    )
    with pytest.raises(ConfigError) as caught:
        load_config(project.config)
    messages = [str(p) for p in caught.value.problems]
    assert any("extra.yaml:4:" in m and "not-an-address" in m for m in messages), messages
    assert any("extra.yaml:5:" in m and "unknown key" in m for m in messages), messages
    assert any("second.yaml:5:" in m and "closes must be after opens" in m for m in messages), messages


def test_iso_datetimes_with_an_offset_are_kept_as_given(project: Project) -> None:
    path = project.config / "consultations" / "soc-strategy-2019.yaml"
    path.write_text(path.read_text().replace("opens: 2019-07-09 09:00", "opens: 2019-07-09T08:00:00+00:00"))
    config = load_config(project.config)
    assert config.consultations["soc-strategy-2019"].opens.isoformat() == "2019-07-09T08:00:00+00:00"


def test_settings_come_from_the_environment_with_the_contract_defaults(tmp_path: Path) -> None:
    defaults = Settings.from_env({})
    assert (defaults.config_dir, defaults.data_dir, defaults.redis_url) == (Path("config"), Path("var"), None)
    assert defaults.public_url == "http://localhost:8080" and defaults.web_bind == "127.0.0.1:8080"
    custom = Settings.from_env({"NOTIFIER_REDIS_URL": "redis://h:1/3", "NOTIFIER_PCC_X_TOKEN": "t0k"})
    assert custom.redis_url == "redis://h:1/3" and custom.token("pcc-x") == "t0k"
    assert token_variable("pcc-facebook") == "NOTIFIER_PCC_FACEBOOK_TOKEN"


def test_only_upper_case_non_empty_variables_are_settings() -> None:
    settings = Settings.from_env(
        {
            "notifier_redis_url": "redis://h:1/3",
            "NOTIFIER_DATA_DIR": "",
            "NOTIFIER_WEB_BIND": "0.0.0.0:80",
            "NOTIFIER_ENV": "{}",
        }
    )
    assert (settings.redis_url, settings.data_dir, settings.web_bind) == (None, Path("var"), "0.0.0.0:80")
    assert Settings.from_env({"NOTIFIER_PUBLIC_URL": "https://notify.example/"}).public_url == "https://notify.example"


def test_settings_made_directly_ignore_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFIER_REDIS_URL", "redis://h:1/3")
    monkeypatch.setenv("NOTIFIER_PCC_X_TOKEN", "t0k")
    assert Settings(web_bind="127.0.0.1:0").redis_url is None and Settings().token("pcc-x") is None
    assert Settings.from_env().redis_url == "redis://h:1/3" and Settings.from_env().token("pcc-x") == "t0k"


def test_embedded_secret_key_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    settings = Settings.from_env({"NOTIFIER_DATA_DIR": str(tmp_path)})
    key = settings.secret_key()
    assert key == settings.secret_key() and len(key) >= 32
    assert (tmp_path / "secret.key").stat().st_mode & 0o077 == 0


def test_production_needs_an_explicit_secret_key() -> None:
    with pytest.raises(ConfigError, match="NOTIFIER_SECRET_KEY"):
        Settings.from_env({"NOTIFIER_REDIS_URL": "redis://localhost:6379/0"}).secret_key()


def test_an_entry_is_at_its_key_line_and_a_scalar_value_at_its_own(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("police:\n  name: West Mercia Police\n  include:\n    - csp\n    - socjag\ntitle:\n  Strategy\n")
    problems: list[Problem] = []
    data, lines = read_yaml(path, problems)
    assert data and not problems
    assert lines.entries[("police",)] == 1  # not 2, where the block under it starts
    assert lines.entries[("police", "include")] == 3
    assert lines.entries[("police", "include", 1)] == 5
    assert lines.values[("police", "name")] == 2
    assert (lines.entries[("title",)], lines.values[("title",)]) == (6, 7)


def test_a_list_that_fails_is_left_out_and_everything_else_is_still_checked(project: Project) -> None:
    police = project.config / "stakeholders" / "police.yaml"
    police.write_text(police.read_text().replace("mark.ellery@westmercia-police.example", "mark.ellery@"))
    consultation = project.config / "consultations" / "soc-strategy-2019.yaml"
    consultation.write_text(
        consultation.read_text().replace(
            "channels: [email, pcc-x, pcc-facebook, pcc-website, police-website]",
            "channels: [email, pcc-x, pcc-facebok, pcc-website, police-website]",
            1,
        )
    )

    config, problems = load_partial(project.config)

    messages = [str(p) for p in problems]
    assert any("police.yaml:15:" in m and "mark.ellery@" in m for m in messages), messages
    assert any("soc-strategy-2019.yaml:25:" in m and "unknown channel 'pcc-facebok'" in m for m in messages), messages
    # key-partners includes west-mercia-police, which exists but failed: not "unknown" as well
    assert not any("unknown list" in m for m in messages), messages
    assert len(problems) == 2, messages
    assert "west-mercia-police" not in config.lists and "csp" in config.lists
    assert "west-mercia-police" not in config.lists["key-partners"].include
    assert "pcc-facebok" not in config.consultations["soc-strategy-2019"].channels
    with pytest.raises(ConfigError) as caught:
        load_config(project.config)
    assert [str(p) for p in caught.value.problems] == messages


@pytest.mark.parametrize(
    "relative",
    ["notifier.yaml", "stakeholders/police.yaml", "stakeholders/media.csv", "consultations/soc-strategy-2019.yaml"],
)
def test_an_empty_file_is_an_error_not_nothing(project: Project, relative: str) -> None:
    (project.config / relative).write_text("# to do\n" if relative.endswith(".yaml") else "")
    _, problems = load_partial(project.config)
    assert any(p.path == str(project.config / relative) and p.message.startswith("empty file") for p in problems), [
        str(p) for p in problems
    ]


def test_a_csv_row_is_reported_where_it_starts(project: Project) -> None:
    (project.config / "stakeholders" / "media.csv").write_text(
        'email,name,role\n\nok@gazette.example,Tom,"Crime\nreporter"\nbad@gazette,Zoe,"Courts\nand\npolice"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(project.config)
    assert [(p.line, "bad@gazette" in p.message) for p in caught.value.problems] == [(5, True)]


def test_a_csv_that_is_not_utf8_names_the_line_and_the_fix(project: Project) -> None:
    (project.config / "stakeholders" / "media.csv").write_bytes(
        "email,name\na@gazette.example,Zoe\nb@gazette.example,Zoë\n".encode("cp1252")
    )
    with pytest.raises(ConfigError) as caught:
        load_config(project.config)
    (problem,) = caught.value.problems
    assert problem.line == 3 and '"CSV UTF-8"' in problem.message


@pytest.mark.parametrize(
    ("account", "key"),
    [
        ("{platform: webhook, url: www.pcc.example/hooks}", "url"),
        ("{platform: mastodon, instance: mastodon.example}", "instance"),
        ("{platform: x, api_base: 'ftp://api.example'}", "api_base"),
    ],
)
def test_account_addresses_must_be_http_urls(project: Project, account: str, key: str) -> None:
    main = project.config / "notifier.yaml"
    main.write_text(main.read_text().replace("  pcc-x:          {platform: x}", f"  pcc-x: {account}"))
    with pytest.raises(ConfigError) as caught:
        load_config(project.config)
    (problem,) = caught.value.problems
    assert problem.message.startswith(f"{key} must be an http(s) URL")
    assert main.read_text().splitlines()[(problem.line or 0) - 1].startswith("  pcc-x:")


# The fast path for plain ASCII addresses must agree with email_validator on everything
# it accepts, and leave everything else (to be accepted or rejected) to it.
TRICKY_ADDRESSES = [
    "jane.smith@org1.example",
    "Tom.Baxter.12@ORG12.Example",
    "a@b.co",
    "A@X.Example",
    "o'connor+tag@sub.domain.co.uk",
    "a!#$%&'*+/=?^`{|}~-@x.org",
    "x_y-z@xn--bcher-kva.example",
    "Info@x.example",
    "POSTMASTER@x.example",
    "webmaster@x.example",  # RFC 2142: lower-cased
    "a@localhost",
    "a@x.local",
    "a@x.onion",
    "a@x.test",
    "a@x.invalid",
    "a@x.arpa",
    "a@example",
    "a@x.123",
    "a@1.2.3.4",
    "a@[1.2.3.4]",
    "a@[IPv6:::1]",
    "a@ab--cd.example",
    "a@xn--a.example",
    "a@-a.example",
    "a@a-.example",
    "a@x..example",
    "a@x.example.",
    "a@.x.example",
    "a@x-.example",
    ".a@x.example",
    "a.@x.example",
    "a..b@x.example",
    '"a b"@x.example',
    '"a"@x.example',
    "a@@x.example",
    "a@b@x.example",
    "@x.example",
    "a@",
    "a",
    "",
    " a@x.example",
    "a @x.example",
    "Jane <a@x.example>",
    "<a@x.example>",
    "a(b)@x.example",
    "a,b@x.example",
    "a;b@x.example",
    "a\\b@x.example",
    "a[b]@x.example",
    "a:b@x.example",
    "a\t@x.example",
    "a\n@x.example",
    "siân@x.example",
    "a@bücher.example",
    "a@BÜCHER.example",
    "a@ｘ.example",
    "a＠x.example",
    "a\u200b@x.example",
    "a@x\u200b.example",
    "a\u0338@x.example",
    "a@x.exampl\u0338e",
    "İ@x.example",
    "a@x_y.example",
    "a@x.ex_ample",
    "a@" + "b" * 63 + ".example",
    "a@" + "b" * 64 + ".example",
    "a" * 64 + "@x.example",
    "a" * 65 + "@x.example",
    "a" * 240 + "@" + "b" * 9 + ".com",
    "a" * 241 + "@" + "b" * 9 + ".com",
    "x@" + ("a" * 63 + ".") * 3 + "a" * 61,
    "x@" + ("a" * 63 + ".") * 3 + "a" * 62,
    "a@xn--bcher-kva.XN--P1AI",
    "a@xn--p1ai.example",
]


def _mutations(count: int) -> list[str]:
    """``count`` near-miss addresses: valid ones with characters inserted, dropped or re-cased."""
    import random

    rng = random.Random(2019)
    bases = [
        "jane.smith@org1.example",
        "o'connor+tag@sub.domain.co.uk",
        "a@b.co",
        "Tom.B@ORG12.Example",
        "x_y-z@xn--bcher-kva.example",
        "a!#$%&'*+/=?^`{|}~-@x.org",
    ]
    risky = [
        *"aZ9.-_+@!#$%&'*/=?^`{|}~\"(),:;<>[]\\ \t",
        "é",
        "\u0338",
        "Ａ",
        "\u200b",
        "ß",
        "İ",
        "\u212a",
        "\u00a0",
        "xn--",
        "--",
        "postmaster",
        "localhost",
        ".test",
        ".local",
        "123",
        "a" * 70,
        "ab--",
    ]
    found = []
    for _ in range(count):
        text = rng.choice(bases)
        for _ in range(rng.randint(1, 3)):
            i, op = rng.randint(0, len(text)), rng.random()
            if op < 0.5:
                text = text[:i] + rng.choice(risky) + text[i:]
            elif op < 0.8:
                text = text[:i] + text[i + 1 :]
            else:
                text = text.upper() if rng.random() < 0.5 else text.lower()
        found.append(text)
    return found


def test_the_fast_address_check_agrees_with_email_validator() -> None:
    from notifier.config._email import check_email, fast_email, slow_email

    fast_hits = 0
    for address in [*TRICKY_ADDRESSES, *_mutations(4000)]:
        try:
            expected: str | None = slow_email(address)
        except ValueError:
            expected = None
        fast = fast_email(address)
        if fast is not None:
            fast_hits += 1
            assert fast == expected, address  # never accepts what email_validator rejects, same form
        if expected is None:
            with pytest.raises(ValueError):
                check_email(address)
        else:
            assert check_email(address) == expected, address
    assert fast_hits > 1000  # the fast path is exercised, not just skipped


def test_an_audience_is_remembered_only_for_the_very_lists_it_came_from(project: Project) -> None:
    names = ["key-partners", "media", "police-crime-panel"]
    config = load_config(project.config)
    first = audience.resolve(config.lists, names)
    assert audience.resolve(config.lists, names) is first  # the same frozen lists: the same answer
    assert audience.resolve(config.lists, names, suppressed={first.recipients[0].key: "bounced"}) is not first
    assert audience.resolve(config.lists, ["media"]) is not first
    media = project.config / "stakeholders" / "media.csv"
    media.write_text(media.read_text() + "new.reporter@gazette.example,New Reporter\n")
    reloaded = load_config(project.config)  # other list objects: resolved afresh
    again = audience.resolve(reloaded.lists, names)
    assert again is not first and len(again.recipients) == len(first.recipients) + 1
    assert "new.reporter@gazette.example" in {r.key for r in again.recipients}
    # Once its config is dropped, nothing keeps the audience alive. (The memo's size is not a
    # measure: it also holds what earlier tests resolved, dropped when the collector gets to
    # their configs, and it is emptied when full; asserting on it raced with both.)
    dropped = weakref.ref(first)
    del config, first
    gc.collect()
    assert dropped() is None, "a dropped config's audience was kept alive"


def test_members_given_the_same_fields_still_say_which_they_were_given_after_one_is_copied() -> None:
    a = Member.model_validate({"email": "a@police.example", "organisation": "West Mercia Police", "role": "Chief"})
    b = Member.model_validate({"email": "b@police.example", "organisation": "West Mercia Police", "role": "Chief"})
    c = a.model_copy(update={"name": "Ann Jones"})
    assert c.model_fields_set == {"email", "organisation", "role", "name"}
    assert a.model_fields_set == b.model_fields_set == {"email", "organisation", "role"}
    assert a.name is None and b.model_dump(exclude_unset=True) == {
        "email": "b@police.example",
        "organisation": "West Mercia Police",
        "role": "Chief",
    }
    assert (a.organisation, a.extra) == ("West Mercia Police", {"role": "Chief"}) and a != b


def test_csv_rows_give_members_and_problems_at_their_lines(project: Project) -> None:
    """Each CSV row is stripped, a blank name or organisation is none, ``subscribed`` is a
    yes/no word (blank: yes), other columns are kept as extra keys, and every bad row is
    reported at its line with why."""
    good = (
        "email,name,organisation,subscribed,role\n"
        "  Ann.Lee@Gazette.EXAMPLE ,  Ann Lee ,, yes ,Editor\n"
        "bob@gazette.example,,Gazette,,\n"
        "carl@gazette.example,Carl,,No,\n"
        ",,,,\n"
        "dan@gazette.example\n"
    )
    (project.config / "stakeholders" / "media.csv").write_text(
        good + "josé@gazette.example,José,,,\n"
        ",Nameless,,,\n"
        "eve@gazette.example,Eve,,maybe,\n"
        "fay@gazette.example,Fay,,,,extra\n"
    )
    _, problems = load_partial(project.config)
    assert [(p.line, p.message.split(":")[0]) for p in problems if p.path.endswith("media.csv")] == [
        (7, "email"),
        (8, "email"),
        (9, "subscribed must be true or false, not 'maybe'"),
        (10, "row has more cells than the header (5)"),
    ]
    (project.config / "stakeholders" / "media.csv").write_text(good)
    ann, bob, carl, dan = load_config(project.config).lists["media"].members
    assert (ann.email, ann.name, ann.organisation, ann.subscribed, ann.extra) == (
        "Ann.Lee@gazette.example",
        "Ann Lee",
        None,
        True,
        {"role": "Editor"},
    )
    assert (bob.name, bob.organisation, bob.subscribed, bob.extra) == (None, "Gazette", True, {"role": ""})
    assert carl.subscribed is False and dan.extra == {"role": ""}


def _chain(depth: int, *, back_to_start: bool) -> str:
    """A stakeholders file of ``depth`` lists, each including the next (and the last the first)."""
    lines = ["lists:"]
    for i in range(depth):
        last = i == depth - 1
        include = ("chain-0" if back_to_start else None) if last else f"chain-{i + 1}"
        lines.append(f"  chain-{i}:")
        if include:
            lines.append(f"    include: [{include}]")
        lines.append(f"    members: [{{email: person{i}@chain.example}}]")
    return "\n".join(lines) + "\n"


def test_an_include_chain_a_thousand_lists_deep_validates(project: Project) -> None:
    project.write("config/stakeholders/chain.yaml", _chain(1000, back_to_start=False))
    result = project.run("validate")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr


def test_an_include_cycle_a_thousand_lists_round_is_reported_with_its_file_and_line(project: Project) -> None:
    project.write("config/stakeholders/chain.yaml", _chain(1000, back_to_start=True))
    result = project.run("validate")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    assert "chain.yaml:2: include cycle: chain-0 -> chain-1 -> " in result.stderr, result.stderr


def test_validate_warns_of_local_times_the_clocks_skip_or_repeat_and_says_which_moment_is_used(
    project: Project,
) -> None:
    path = project.config / "consultations" / "soc-strategy-2019.yaml"
    text = path.read_text()
    text = text.replace("opens: 2019-07-09 09:00", "opens: 2027-03-28 01:30")  # line 19: skipped (spring)
    text = text.replace("closes: 2019-08-15 23:59", "closes: 2027-10-31 01:30")  # line 20: twice (autumn)
    text = text.replace("at: 2019-09-12 10:00", "at: 2028-03-26 01:15")  # line 66: skipped
    path.write_text(text)
    result = project.run("validate")
    assert result.returncode == 0, result.stderr  # warnings: the times are usable, just surprising
    file = str(path)
    assert (
        f"{file}:19: warning: opens: 2027-03-28 01:30 does not exist in Europe/London (the clocks go forward "
        "then): it is read as 2027-03-28 02:30 BST (+01:00)"
    ) in result.stderr, result.stderr
    assert (
        f"{file}:20: warning: closes: 2027-10-31 01:30 happens twice in Europe/London (the clocks go back "
        "then): the first is used, 2027-10-31 01:30 BST (+01:00); write 2027-10-31T01:30+00:00 for the second"
    ) in result.stderr, result.stderr
    assert f"{file}:66: warning: at: 2028-03-26 01:15 does not exist" in result.stderr
    assert "2028-03-26 02:15 BST (+01:00)" in result.stderr


def test_a_day_offset_that_lands_on_a_repeated_hour_is_a_warning_at_the_event(project: Project) -> None:
    path = project.config / "consultations" / "soc-strategy-2019.yaml"
    text = path.read_text()
    text = text.replace("opens: 2019-07-09 09:00", "opens: 2027-10-01 09:00")
    text = text.replace("closes: 2019-08-15 23:59", "closes: 2027-11-07 01:30")  # closes - 7d: 31 Oct 01:30
    text = text.replace("at: 2019-09-12 10:00", "at: 2027-11-20 10:00")
    path.write_text(text)
    result = project.run("validate")
    assert result.returncode == 0, result.stderr
    assert (
        f"{path}:56: warning: at: closes - 7d is 2027-10-31 01:30, which happens twice in Europe/London"
    ) in result.stderr, result.stderr
    assert "2027-11-07" not in result.stderr.replace("closes - 7d", ""), "closes itself is an ordinary time"


def test_times_with_an_offset_or_on_ordinary_days_are_not_warned_about(project: Project) -> None:
    path = project.config / "consultations" / "soc-strategy-2019.yaml"
    path.write_text(path.read_text().replace("closes: 2019-08-15 23:59", "closes: 2027-10-31T01:30+00:00"))
    result = project.run("validate")
    assert result.returncode == 0 and "happens twice" not in result.stderr, result.stderr
