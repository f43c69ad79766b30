"""``relance replay FILE``: the live decision code, in one process, in event mode."""
from __future__ import annotations

import argparse
import sys
from typing import IO, Callable, Iterable

from domain.rules import DecisionCore
from foundation.settings import Settings
from schemas.records import DecisionRecord, FollowupRequest, InvalidRecord, loads, parse_record


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="run the decision rules over a file of records, with no Kafka and no Redis",
        description="Read canonical message events, control events and ticks (one JSON a "
        "line, in arrival order) and print the follow-up requests the rules emit, one JSON "
        "a line. Runs in event mode: the clock is the largest ts seen and ticks move it. "
        "Settings come from RELANCE_* environment variables.",
    )
    parser.add_argument("file", help="the records file, or - for standard input")
    parser.add_argument("--decisions", metavar="PATH", help="also write every decision record there")
    parser.add_argument("--config", metavar="TOML", help="a settings file")
    parser.set_defaults(run=run)


def replay(
    lines: Iterable[bytes | str],
    settings: Settings,
    on_request: Callable[[FollowupRequest], None],
    on_decision: Callable[[DecisionRecord], None] = lambda _: None,
    on_error: Callable[[int, str], None] = lambda _n, _r: None,
) -> DecisionCore:
    """Feed every line to one decision core in event mode; invalid lines are reported."""
    core = DecisionCore(settings.replace(clock="event"))
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            core.feed(parse_record(loads(line)))
        except InvalidRecord as exc:
            on_error(number, str(exc))
            continue
        requests, decisions, _erased, _dirty = core.drain()
        for decision in decisions:
            on_decision(decision)
        for request in requests:
            on_request(request)
    return core


def run(args: argparse.Namespace) -> int:
    settings = Settings.load(config_file=args.config)
    source: IO[bytes] = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")
    decisions_out = open(args.decisions, "wb") if args.decisions else None
    out = sys.stdout.buffer
    try:
        replay(
            source, settings,
            on_request=lambda request: out.write(request.to_json() + b"\n"),
            on_decision=(lambda d: decisions_out.write(d.to_json() + b"\n")) if decisions_out else (lambda _: None),
            on_error=lambda number, reason: print(f"line {number}: {reason}", file=sys.stderr),
        )
    finally:
        out.flush()
        if decisions_out:
            decisions_out.close()
        if source is not sys.stdin.buffer:
            source.close()
    return 0
