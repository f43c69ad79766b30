"""Settings (spec section 2): where a value comes from, and how durations are written."""
from __future__ import annotations

import os

import pytest

from foundation.settings import Settings, SettingError
from relance.cli import build_parser
from relance.cliflags import load_settings


@pytest.fixture
def environment(monkeypatch):
    """The process environment with no RELANCE_* variable but those a test sets."""
    for name in [name for name in os.environ if name.startswith("RELANCE_")]:
        monkeypatch.delenv(name)
    return monkeypatch.setenv


def worker_settings(*flags: str) -> Settings:
    return load_settings(build_parser().parse_args(["worker", *flags]))


def test_a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default(tmp_path, environment):
    config = tmp_path / "relance.toml"
    config.write_text('topic_prefix = "file-"\nbroker = "file:9092"\napp_id = "file-app"\n')
    environment("RELANCE_CONFIG", str(config))
    environment("RELANCE_TOPIC_PREFIX", "env-")
    environment("RELANCE_BROKER", "env:9092")
    settings = worker_settings("--topic-prefix", "flag-")
    assert settings.topic_prefix == "flag-"             # flag > environment > file
    assert settings.broker == "env:9092"                # environment > file
    assert settings.app_id == "file-app"                # file > default
    assert settings.data_dir == Settings().data_dir     # the default when nothing says otherwise


def test_the_config_flag_names_the_file_too(tmp_path, environment):
    config = tmp_path / "other.toml"
    config.write_text('clock = "event"\n')
    assert worker_settings("--config", str(config)).clock == "event"
    assert worker_settings().clock == "wall"


@pytest.mark.parametrize("written, ms", [
    ("30s", 30_000), ("15m", 900_000), ("12h", 43_200_000), ("14d", 1_209_600_000),
    ("90", 90_000), ("1.5", 1_500), (45, 45_000), (2.5, 2_500),
])
def test_durations_are_written_with_a_unit_or_as_a_number_of_seconds(written, ms):
    assert Settings.from_mapping({"idle_delay": written}).idle_delay == ms


def test_durations_in_seconds_from_every_source(tmp_path, environment):
    config = tmp_path / "relance.toml"
    config.write_text("idle_delay = 30\nwindow = 3600\nmessaging_window = \"2h\"\n")
    environment("RELANCE_WINDOW", "600")
    settings = Settings.load(overrides={"messaging_window": "120"}, config_file=str(config))
    assert (settings.idle_delay, settings.window, settings.messaging_window) == (30_000, 600_000, 120_000)


def test_an_unusable_value_names_its_setting_and_variable(environment):
    environment("RELANCE_IDLE_DELAY", "soon")
    with pytest.raises(SettingError, match="idle_delay .RELANCE_IDLE_DELAY.: not a duration"):
        Settings.load()
