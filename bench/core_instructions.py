"""Instructions a record costs in our own per-record code, counted by callgrind: repeatable
where timings on a shared machine are not.

Runs itself under ``valgrind --tool=callgrind`` twice per stage, each time generating N
of the simulator's records (``pipeline_bench``'s): once feeding them, once not; the
difference over N is the instructions per record, start-up and generation subtracted.
Stages:

- ``parse``: ``decode_record(line)`` (``parse_record(loads(line))`` in code before it);
- ``parse+feed``: that, fed to one ``DecisionCore`` per partition (event mode, the
  pipeline's rules), outputs drained every 5,000 records;
- ``parse+feed+encode``: that plus what the engine encodes at a checkpoint (decision and
  request JSON, ``changelog_value`` of the users changed, each core's meta), every 5,000
  records.

``--source TREE`` counts another copy of the code (a git worktree of an earlier commit).
Run: ``.venv/bin/python -m bench.core_instructions --records 20000``
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from bench.common import ROOT, result

STAGES = ("parse", "parse+feed", "parse+feed+encode")


def feed(records: int, stage: str, run: bool) -> None:
    """In the child, under callgrind: generate the records (always), then, if ``run``, run
    ``stage`` on them."""
    from bench.common import canonical_lines, feeder_items
    from bench.pipeline_bench import RULES
    from domain.rules import DecisionCore
    from foundation.settings import Settings
    from schemas.records import loads, parse_record
    from streams.outbox import partition_for
    try:
        from domain.state import changelog_value
    except ImportError:  # code before the packed changelog: what its engine encoded
        def changelog_value(user):
            return orjson.dumps(user.to_dict())
    try:
        from schemas.records import decode_record
    except ImportError:  # code before the compiled decoder: what its engine parsed with
        def decode_record(data):
            return parse_record(loads(data))
    items = feeder_items(canonical_lines(max(4, records // 98), 14.0, 1, limit=records), 4)
    keyed = [(value, int(headers[0][1]), partition if partition is not None else partition_for(key, 4))
             for key, value, headers, partition in items]
    if not run:
        keyed = []
    cores = {p: DecisionCore(Settings.from_mapping(RULES)) for p in range(4)}
    for first in range(0, len(keyed), 5000):
        for value, clock, partition in keyed[first:first + 5000]:
            if not value:
                continue
            record = decode_record(value)
            if stage == "parse":
                continue
            core = cores[partition]
            core.advance(clock, inclusive=False)
            core.feed(record, None)
        if stage == "parse":
            continue
        for core in cores.values():
            requests, decisions, _, dirty = core.drain()
            if stage == "parse+feed+encode":
                encode_drained(core, requests, decisions, dirty, python_state_of(core, changelog_value))


def encode_drained(core, requests, decisions, dirty, state_of) -> None:
    """What the engine encodes of a core's drained outputs: decision and request JSON, and
    at a checkpoint the changed users' changelog values (``state_of(user_id)``) and the
    core's meta."""
    for decision in decisions:
        decision.to_json()
    for request in requests:
        request.to_json()
    for user_id in dirty:
        state_of(user_id)
    orjson.dumps(core.export_meta())


def python_state_of(core, changelog_value):
    """``state_of`` for a Python ``DecisionCore`` of any tree (earlier ones have no
    ``DecisionCore.changelog_value``): the changelog value of a user it holds as objects."""
    return lambda user_id: changelog_value(core.users[user_id]) if user_id in core.users else None


def instructions(records: int, stage: str, source: str | None, run: bool) -> int:
    """Instructions callgrind counts for one child run."""
    with tempfile.TemporaryDirectory(prefix="relance-callgrind-") as folder:
        out = Path(folder) / "callgrind.out"
        env = dict(os.environ, PYTHONPATH=str(Path(source).resolve()) if source else str(ROOT), PYTHONHASHSEED="0")
        # By path, so that a --source tree without this script runs it on its own code.
        done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                               __file__, "--child", stage, "--records", str(records)] + ([] if run else ["--no-run"]),
                              env=env, capture_output=True, text=True, cwd=source or ROOT)
        match = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode != 0 or match is None:
            raise RuntimeError(f"callgrind failed ({done.returncode}): {done.stderr[-1500:]}")
        return int(match[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated: " + ", ".join(STAGES))
    parser.add_argument("--source", help="count the code of this tree instead (a git worktree)")
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--no-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        feed(args.records, args.child, run=not args.no_run)
        return
    print(f"callgrind, {args.records} records, code from {args.source or ROOT}")
    for stage in args.stages.split(","):
        per_record = (instructions(args.records, stage, args.source, run=True)
                      - instructions(args.records, stage, args.source, run=False)) / args.records
        print(f"  {stage:<20} {per_record:>10,.0f} instructions a record", flush=True)
        result(f"instructions_{stage.replace('+', '_')}", per_record, "instr/record")


if __name__ == "__main__":
    main()
