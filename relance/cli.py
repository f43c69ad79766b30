"""``relance``: one command, with a sub-command per job (see ``relance --help``).

Each module in ``relance/commands/`` adds one sub-command through ``register``; ``COMMANDS``
names them all, so the import graph shows every one.
"""
from __future__ import annotations

import argparse
import sys

from relance.commands import (
    broker, control, demo, explain, gateway, normalize, replay, report, settings, simulate, topics, worker,
)
from foundation.settings import SettingError

COMMANDS = (broker, control, demo, explain, gateway, normalize, replay, report, settings, simulate, topics, worker)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relance",
        description="Relance decides when a chatbot persona may write to a user first, "
        "writes that message honestly, and delivers it.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(subparsers)
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
