"""``relance normalize --app APP``: native webhooks on stdin, canonical events on stdout.

One webhook document a line in, one canonical event (``MessageEvent.to_json()``) a line
out (spec section 8). A line that cannot be used, or a message inside it, is reported on
standard error with its line number and reason, and the command goes on: other programs
pipe whole captures through it, and one bad line must not hide the rest. Exit status 0
unless the registry itself cannot be loaded (2).
"""
from __future__ import annotations

import argparse
import sys
from typing import BinaryIO, TextIO

from domain.normalize import normalize_webhook
from schemas.records import APPS, InvalidRecord
from schemas.registry import BotRegistry, RegistryError
from foundation.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "normalize",
        help="turn native webhooks (one JSON a line, stdin) into canonical events (stdout)",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--app", required=True, choices=APPS, help="the app that posted the webhooks")
    parser.add_argument("--registry", metavar="PATH", help="bot registry TOML (default: setting registry)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.load(overrides={"registry": args.registry})
    try:
        registry = BotRegistry.load(settings.registry)
    except RegistryError as exc:
        print(f"relance normalize: {exc}", file=sys.stderr)
        return 2
    normalize_stream(args.app, registry, sys.stdin.buffer, sys.stdout.buffer, sys.stderr)
    return 0


def normalize_stream(app: str, registry: BotRegistry, lines: BinaryIO, out: BinaryIO, err: TextIO) -> tuple[int, int]:
    """Normalise every line; returns (events written, problems reported)."""
    written = problems = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines between documents are not documents
        try:
            result = normalize_webhook(app, line, registry)
        except InvalidRecord as exc:
            print(f"line {number}: {exc}", file=err)
            problems += 1
            continue
        for event in result.events:
            out.write(event.to_json() + b"\n")
        for error in result.errors:
            print(f"line {number}: {error}", file=err)
        written += len(result.events)
        problems += len(result.errors)
    out.flush()
    return written, problems
