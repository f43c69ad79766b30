"""``relance``: one command, with a sub-command per job (see ``relance --help``).

Each module in ``relance/commands/`` adds one sub-command through ``register``.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from relance import commands
from relance.settings import SettingError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relance",
        description="Relance decides when a chatbot persona may write to a user first, "
        "writes that message honestly, and delivers it.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"relance.commands.{module_info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except SettingError as exc:
        print(f"relance: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
