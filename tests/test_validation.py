"""Validation: posts are measured as posted, and every problem is reported once, all at once."""

from __future__ import annotations

import pytest

from notifier.channels import limits, registry
from notifier.config import Settings
from notifier.validation import load_and_check
from tests.conftest import Project

URL = "https://www.pcc.example/consultations/soc-strategy"  # the example consultation's url
CHANNELS = "channels: [email, pcc-x, pcc-facebook, pcc-website, police-website]"


def _errors(project: Project) -> list[str]:
    """Every error ``notifier validate`` would print, paths relative to the project."""
    _, problems = load_and_check(Settings.from_env(project.settings_env()))
    return [str(p).replace(f"{project.root}/", "") for p in problems if p.severity == "error"]


def _with_accounts(project: Project) -> None:
    """The example, with a Mastodon and a Bluesky account on the consultation too."""
    main = project.config / "notifier.yaml"
    main.write_text(
        main.read_text().replace(
            "accounts:\n",
            "accounts:\n"
            "  pcc-mastodon: {platform: mastodon, instance: 'https://mastodon.example'}\n"
            "  pcc-bluesky: {platform: bluesky, handle: pcc.example}\n",
        )
    )
    consultation = project.config / "consultations" / "soc-strategy-2019.yaml"
    text = consultation.read_text()
    assert CHANNELS in text
    consultation.write_text(text.replace(CHANNELS, CHANNELS[:-1] + ", pcc-mastodon, pcc-bluesky]"))


@pytest.mark.parametrize("platform", ["x", "mastodon", "bluesky"])
def test_a_post_is_measured_with_the_link_the_platform_adds(project: Project, platform: str) -> None:
    _with_accounts(project)
    rules = registry.rules(platform)
    most = rules.max_length
    assert most is not None
    text = "y" * (most - 10)
    assert limits.length(rules, text) <= most < limits.length(rules, f"{text}\n\n{URL}")
    project.write(f"templates/opened/{platform}.j2", text)
    errors = _errors(project)
    posted = f"{text}\n\n{URL}"
    assert [e for e in errors if e.startswith(f"templates/opened/{platform}.j2")] == [
        f"templates/opened/{platform}.j2: the opened post for pcc-{platform} is {limits.overflow(rules, posted)}"
    ], errors


@pytest.mark.parametrize("platform", ["x", "mastodon", "bluesky"])
def test_a_post_that_has_the_link_already_is_measured_as_written(project: Project, platform: str) -> None:
    _with_accounts(project)
    most = registry.rules(platform).max_length
    assert most is not None
    text = "y" * (most - 60) + " {{ consultation.url }}"
    project.write(f"templates/opened/{platform}.j2", text)
    errors = _errors(project)
    assert not [e for e in errors if e.startswith(f"templates/opened/{platform}.j2")], errors


def test_an_unknown_name_is_reported_once_not_again_when_rendering(project: Project) -> None:
    project.write(
        "templates/opened/email.j2",
        "{% block subject %}Hi{% endblock %}\n{% block text %}\n{{ consultaton.title }}\n{% endblock %}\n",
    )
    errors = _errors(project)
    assert len([e for e in errors if "consultaton" in e]) == 1, errors
    assert any(e.startswith("templates/opened/email.j2:3: unknown name 'consultaton'") for e in errors), errors


def test_load_problems_do_not_hide_template_problems(project: Project) -> None:
    police = project.config / "stakeholders" / "police.yaml"
    police.write_text(police.read_text().replace("mark.ellery@westmercia-police.example", "mark.ellery@"))
    project.write("templates/reminder/email.j2", "{% block subject %}Hi{% endblock %}\n{% block text %}{{ x }\n")
    errors = _errors(project)
    assert any(e.startswith("config/stakeholders/police.yaml:15:") for e in errors), errors
    assert any(e.startswith("templates/reminder/email.j2:2: template syntax error") for e in errors), errors


def test_a_missing_templates_folder_is_one_problem_not_one_per_template(project: Project) -> None:
    main = project.config / "notifier.yaml"
    main.write_text(main.read_text() + "templates: ../wording\n")
    errors = _errors(project)
    assert len(errors) == 1 and "templates directory" in errors[0], errors


def test_samples_are_the_first_recipient_of_each_shape_once_per_audience() -> None:
    """``_samples`` picks the first recipient of each shape (extra keys in any order, name
    or none, organisation or none), and scans an audience's recipients only once."""
    from types import MappingProxyType

    from notifier.audience import Recipient
    from notifier.memo import ByIdentity
    from notifier.validation import _samples

    first = Recipient("a@x.example", "A", None, MappingProxyType({"role": "r", "team": "t"}))
    same_shape = Recipient("b@x.example", "B", None, MappingProxyType({"team": "t", "role": "r"}))
    nameless = Recipient("c@x.example", None, None, MappingProxyType({"role": "r", "team": "t"}))
    plain = Recipient("d@x.example", "D", "Org")
    recipients = (first, same_shape, nameless, plain)
    memo: ByIdentity[list[Recipient]] = ByIdentity()
    chosen = _samples(recipients, memo)
    assert chosen == [first, nameless, plain]
    assert _samples(recipients, memo) is chosen  # the same audience: not scanned again
    assert _samples(recipients[1:], memo) == [same_shape, nameless, plain]  # another audience


def test_recipients_resolve_builds_are_the_dataclass_s_own(project: Project) -> None:
    """``resolve`` sets a Recipient's slots directly: the result equals, field for field,
    the Recipient its constructor makes, and every field of the dataclass is set."""
    import dataclasses

    from notifier.audience import Recipient, _recipient, resolve
    from notifier.config import load_config

    assert [f.name for f in dataclasses.fields(Recipient)] == ["email", "name", "organisation", "extra", "lists"]
    config = load_config(project.config)
    audience = resolve(config.lists, list(config.lists))
    assert audience.recipients
    names = [f.name for f in dataclasses.fields(Recipient)]
    for recipient in audience.recipients:
        assert recipient == Recipient(*(getattr(recipient, name) for name in names))
        assert type(recipient) is Recipient
    built = _recipient("a@x.example", None, "Org", {}, ("media",))
    assert built == Recipient("a@x.example", None, "Org", {}, ("media",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.name = "changed"  # type: ignore[misc]
