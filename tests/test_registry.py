"""The bot registry: loading, refusing bad files, and following the file as it changes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from schemas.records import APPS
from schemas.registry import BotRegistry, RegistryError, RegistryFile

ROOT = Path(__file__).resolve().parent.parent

MAESTRO = """
[[bot]]
id = "maestro"
name = "Maestro of Movie Magic"
persona = "A warm film-music lover."
language = "en"
whatsapp = ["106540352242922"]
facebook = ["112233445566778"]
"""
LUCIE = """
[[bot]]
id = "chef-lucie"
name = "Chef Lucie"
persona = "Une cheffe lyonnaise."
language = "fr"
whatsapp = ["106540352242923"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bots.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> BotRegistry:
    return BotRegistry.load(write(tmp_path, text))


# -- the shipped registry ----------------------------------------------------------------

def test_shipped_registry_has_four_bots_in_four_languages_on_every_app():
    registry = BotRegistry.load(ROOT / "deploy" / "bots.toml")
    assert sorted(bot.language for bot in registry) == ["en", "es", "fr", "pt"]
    for bot in registry:
        for app in APPS:
            assert bot.accounts_on(app), f"{bot.id} has no {app} account"
            assert all(registry.bot_for(app, account) is bot for account in bot.accounts_on(app))


def test_bot_for_finds_the_owner_on_that_app_only(tmp_path):
    registry = load_text(tmp_path, MAESTRO + LUCIE)
    assert registry.bot_for("whatsapp", "106540352242923").id == "chef-lucie"
    assert registry.bot_for("facebook", "112233445566778").name == "Maestro of Movie Magic"
    assert registry.bot_for("instagram", "112233445566778") is None  # a page id is not an IG id
    assert registry.bot_for("whatsapp", "999") is None
    assert registry.get("maestro").persona == "A warm film-music lover."
    assert registry.get("nobody") is None
    assert registry.owners("whatsapp") == {"106540352242922": "maestro", "106540352242923": "chef-lucie"}


def test_the_same_id_on_two_different_apps_may_belong_to_two_bots(tmp_path):
    text = MAESTRO + LUCIE.replace('whatsapp = ["106540352242923"]', 'instagram = ["106540352242922"]')
    registry = load_text(tmp_path, text)
    assert registry.bot_for("whatsapp", "106540352242922").id == "maestro"
    assert registry.bot_for("instagram", "106540352242922").id == "chef-lucie"


# -- bad files ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, reason", [
    (MAESTRO + MAESTRO.replace('"106540352242922"', '"1"').replace('"112233445566778"', '"2"'),
     "bot id 'maestro' is used by more than one [[bot]]"),
    (MAESTRO + LUCIE.replace('"106540352242923"', '"106540352242922"'),
     "whatsapp phone_number_id 106540352242922 is claimed by both 'maestro' and 'chef-lucie'"),
    (MAESTRO.replace('whatsapp = ["106540352242922"]', 'whatsapp = ["1", "1"]'),
     "whatsapp phone_number_id 1 is listed twice by 'maestro'"),
    (MAESTRO.replace('persona = "A warm film-music lover."\n', ""), "bot #1 (maestro): missing field persona"),
    (MAESTRO.replace('id = "maestro"\n', ""), "bot #1: missing field id"),
    (MAESTRO.replace('name = "Maestro of Movie Magic"', 'name = ""'), "name must be a non-empty string"),
    (MAESTRO.replace("whatsapp =", "whatsap ="), "unknown field(s) whatsap"),
    (MAESTRO.replace("[[bot]]", "[[bots]]"), "unknown top-level key(s) bots"),
    ("", "no [[bot]] entries"),
    (MAESTRO.replace('["106540352242922"]', "[106540352242922]"), 'must be quoted, like "106540352242922"'),
    (MAESTRO.replace('["106540352242922"]', '"106540352242922"'), "whatsapp must be a list of ids"),
    (MAESTRO.replace('["106540352242922"]', '[""]'), "whatsapp ids must be non-empty strings"),
    (MAESTRO.replace('language = "en"', 'language = "English"'), "language 'English' is not a language tag"),
    (MAESTRO.replace('id = "maestro"', 'id = " maestro"'), "has spaces around it"),
    (MAESTRO + "\n[bot\n", "not valid TOML"),
])
def test_a_bad_registry_is_refused_with_a_reason_that_names_the_file(tmp_path, text, reason):
    with pytest.raises(RegistryError) as caught:
        load_text(tmp_path, text)
    message = str(caught.value)
    assert reason in message
    assert message.startswith(str(tmp_path / "bots.toml"))


def test_a_missing_file_is_a_registry_error(tmp_path):
    with pytest.raises(RegistryError, match="no such registry file"):
        BotRegistry.load(tmp_path / "absent.toml")


# -- following the file --------------------------------------------------------------------

class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rewrite(path: Path, text: str, mtime_ns: int) -> None:
    # Two writes inside one mtime tick look alike to a stat check; a distinct mtime
    # stands for the real gap between an operator's edits.
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_registry_file_reloads_after_a_change_once_the_check_interval_passed(tmp_path):
    path = write(tmp_path, MAESTRO)
    clock = ManualClock()
    registry_file = RegistryFile(path, check_every=1.0, clock=clock)
    assert len(registry_file.current()) == 1

    rewrite(path, MAESTRO + LUCIE, 2_000_000_000_000_000_000)
    clock.now = 0.5
    assert len(registry_file.current()) == 1  # not looked at before the interval
    clock.now = 1.0
    assert registry_file.current().get("chef-lucie") is not None
    assert registry_file.reloads == 1 and registry_file.last_error is None


def test_registry_file_keeps_the_last_good_registry_when_the_new_file_is_bad(tmp_path):
    path = write(tmp_path, MAESTRO + LUCIE)
    clock = ManualClock()
    registry_file = RegistryFile(path, check_every=1.0, clock=clock)

    rewrite(path, MAESTRO + MAESTRO, 2_000_000_000_000_000_000)
    clock.now = 1.0
    assert registry_file.current().get("chef-lucie") is not None
    assert "used by more than one" in registry_file.last_error

    path.unlink()
    clock.now = 2.0
    assert registry_file.current().get("chef-lucie") is not None
    assert "no such registry file" in registry_file.last_error

    rewrite(path, MAESTRO, 2_000_000_001_000_000_000)
    clock.now = 3.0
    assert registry_file.current().get("chef-lucie") is None  # the fixed file wins
    assert registry_file.last_error is None


def test_registry_file_does_not_reparse_an_unchanged_file(tmp_path):
    path = write(tmp_path, MAESTRO)
    clock = ManualClock()
    registry_file = RegistryFile(path, check_every=1.0, clock=clock)
    first = registry_file.current()
    clock.now = 10.0
    assert registry_file.current() is first
    assert registry_file.reloads == 0


def test_registry_file_refuses_to_start_without_a_good_registry(tmp_path):
    with pytest.raises(RegistryError):
        RegistryFile(write(tmp_path, "[[bot]]\nid = 1\n"))


# -- token references (spec section 9) ----------------------------------------------------

def test_tokens_are_named_by_reference_per_app(tmp_path):
    registry = load_text(tmp_path, MAESTRO + 'tokens = { whatsapp = "env:MAESTRO_WA_TOKEN", facebook = "file:/run/secrets/maestro-page" }\n')
    bot = registry.get("maestro")
    assert {app: str(ref) for app, ref in bot.tokens.items()} == {
        "whatsapp": "env:MAESTRO_WA_TOKEN", "facebook": "file:/run/secrets/maestro-page"}
    assert bot.sending_account("whatsapp") == "106540352242922" and bot.sending_account("instagram") is None


@pytest.mark.parametrize("tokens, problem", [
    ('tokens = { whatsapp = "EAAGm0PX4ZCpsBA..." }', "env:NAME or file:/path"),  # a token itself
    ('tokens = { whatsapp = "env:" }', "env:NAME or file:/path"),
    ('tokens = { whatsapp = "env:MY-TOKEN" }', "not an environment variable name"),
    ('tokens = { whatsapp = "file:secrets/wa" }', "absolute path"),
    ('tokens = { telegram = "env:T" }', "unknown app"),
    ('tokens = { instagram = "env:IG" }', "no instagram account"),
    ('tokens = { whatsapp = 42 }', "must be a string"),
    ('tokens = "env:T"', "tokens must be a table"),
])
def test_a_bad_token_reference_refuses_the_file(tmp_path, tokens, problem):
    with pytest.raises(RegistryError, match=problem):
        load_text(tmp_path, MAESTRO + tokens + "\n")


def test_the_shipped_registry_names_a_token_for_every_account():
    registry = BotRegistry.load(ROOT / "deploy" / "bots.toml")
    for bot in registry:
        assert set(bot.tokens) == set(APPS), bot.id
        assert all(ref.source == "env" for ref in bot.tokens.values())
