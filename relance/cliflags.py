"""CLI flags for settings: each flag's help is the setting's own docstring."""
from __future__ import annotations

import argparse
from typing import Any

from foundation.settings import ENV_PREFIX, Settings

_DOCS = {name: (env, default, doc) for name, env, default, doc in Settings.describe()}


def add_setting_flags(parser: argparse.ArgumentParser, *names: str) -> None:
    group = parser.add_argument_group("settings (flag > environment > --config file > default)")
    group.add_argument("--config", metavar="TOML", help=f"a settings file (or {ENV_PREFIX}CONFIG)")
    for name in names:
        env, default, doc = _DOCS[name]
        group.add_argument(
            f"--{name.replace('_', '-')}", dest=f"setting_{name}", metavar=name.upper(),
            help=f"{doc} [{env}; default {default}]",
        )


def load_settings(args: argparse.Namespace, **forced: Any) -> Settings:
    overrides = {
        key.removeprefix("setting_"): value for key, value in vars(args).items()
        if key.startswith("setting_") and value is not None
    }
    overrides.update(forced)
    return Settings.load(overrides=overrides, config_file=getattr(args, "config", None))
