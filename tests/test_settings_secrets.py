"""Secrets in settings: from the environment or a file, never in a repr or an error message."""
from __future__ import annotations

import pytest

from foundation.settings import SettingError, Settings

SECRET, NEXT, TOKEN = "5ecret-current-a1b2", "5ecret-next-c3d4", "verify-tok-e5f6"


def test_app_secret_is_one_secret_or_two_separated_by_a_comma():
    assert Settings.load(env={"RELANCE_APP_SECRET": SECRET}).app_secret == (SECRET,)
    assert Settings.load(env={"RELANCE_APP_SECRET": f"{SECRET}, {NEXT}"}).app_secret == (SECRET, NEXT)
    assert Settings.load(env={}).app_secret == ()


def test_three_secrets_are_refused_without_quoting_any():
    with pytest.raises(SettingError) as refused:
        Settings.load(env={"RELANCE_APP_SECRET": f"{SECRET},{NEXT},third-one"})
    assert "RELANCE_APP_SECRET" in str(refused.value)
    assert SECRET not in str(refused.value) and "third-one" not in str(refused.value)


def test_secrets_are_read_from_the_files_the_FILE_variables_name(tmp_path):
    (tmp_path / "app-secret").write_text(f"{SECRET},{NEXT}\n")   # a trailing newline, as editors write
    (tmp_path / "verify-token").write_text(TOKEN)
    settings = Settings.load(env={"RELANCE_APP_SECRET_FILE": str(tmp_path / "app-secret"),
                                  "RELANCE_VERIFY_TOKEN_FILE": str(tmp_path / "verify-token")})
    assert settings.app_secret == (SECRET, NEXT) and settings.verify_token == TOKEN


def test_a_secret_given_twice_or_in_a_missing_file_is_refused_clearly(tmp_path):
    (tmp_path / "s").write_text(SECRET)
    with pytest.raises(SettingError, match="both RELANCE_APP_SECRET and RELANCE_APP_SECRET_FILE"):
        Settings.load(env={"RELANCE_APP_SECRET": NEXT, "RELANCE_APP_SECRET_FILE": str(tmp_path / "s")})
    with pytest.raises(SettingError, match="RELANCE_VERIFY_TOKEN_FILE.*cannot read"):
        Settings.load(env={"RELANCE_VERIFY_TOKEN_FILE": str(tmp_path / "absent")})


def test_no_secret_shows_in_the_settings_repr_or_str():
    settings = Settings.load(env={"RELANCE_APP_SECRET": f"{SECRET},{NEXT}", "RELANCE_VERIFY_TOKEN": TOKEN,
                                  "RELANCE_LLM_API_KEY": "sk-llm-g7h8"})
    shown = repr(settings) + str(settings) + repr(Settings.describe())
    for secret in (SECRET, NEXT, TOKEN, "sk-llm-g7h8"):
        assert secret not in shown
    assert "broker=" in repr(settings)  # the other settings still show
