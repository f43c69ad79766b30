"""``relance settings``: every setting, its environment variable, default and meaning."""
from __future__ import annotations

import argparse

from foundation.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "settings",
        help="list every setting with its environment variable, default and meaning",
        description="List every setting Relance reads, from its one declaration in "
        "foundation/settings.py: name, environment variable, default and meaning. Values come "
        "from the defaults, a TOML file (RELANCE_CONFIG or --config), the environment and "
        "flags, in rising priority. --markdown prints the table the README carries.",
    )
    parser.add_argument("--markdown", action="store_true", help="a Markdown table, as in the README")
    parser.set_defaults(run=run)


def markdown_table() -> str:
    rows = ["| setting | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| `{name}` | `{env}` | `{default}` | {doc} |" for name, env, default, doc in Settings.describe()]
    return "\n".join(rows) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.markdown:
        print(markdown_table(), end="")
        return 0
    for name, env, default, doc in Settings.describe():
        print(f"{name:<22} {env:<32} {default:<18} {doc}")
    return 0
