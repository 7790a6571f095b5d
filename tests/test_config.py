"""Config loading: the example loads; problems carry file and line; all are reported at once."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from notifier.config import Settings, load_config, token_variable
from notifier.errors import ConfigError

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
    project.write("config/stakeholders/extra.yaml", (
        "lists:\n"
        "  extra:\n"
        "    members:\n"
        "      - {email: not-an-address}\n"
        "    colour: blue\n"
    ))
    project.write("config/consultations/second.yaml", (
        "title: Second\nurl: https://x.example\nsummary: S\n"
        "opens: 2020-01-10 09:00\ncloses: 2020-01-01 09:00\n"
        "audience: [extra]\nchannels: [email]\n"
    ))
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


def test_embedded_secret_key_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    settings = Settings.from_env({"NOTIFIER_DATA_DIR": str(tmp_path)})
    key = settings.secret_key()
    assert key == settings.secret_key() and len(key) >= 32
    assert (tmp_path / "secret.key").stat().st_mode & 0o077 == 0


def test_production_needs_an_explicit_secret_key() -> None:
    with pytest.raises(ConfigError, match="NOTIFIER_SECRET_KEY"):
        Settings.from_env({"NOTIFIER_REDIS_URL": "redis://localhost:6379/0"}).secret_key()
