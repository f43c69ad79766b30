"""Resident memory per tracked pair: the DecisionCore alone, and an engine worker holding it.

Two shapes of state, side by side:

- ``minimal``: P/2 users x 2 bots, 5 inbound messages each, a due time each: the least a
  pair that can earn a follow-up holds.
- ``realistic``: users as the simulator makes them (``devstack/traffic.py``: sessions of
  1-8 messages every few hours to days, answered by the bot, re-sent and late webhooks,
  profiles, opt-outs, stop words, distress, kill switches), 21 days of it fed to a
  DecisionCore with the default rules, and each user's state taken at the end: recently
  active users and idle ones, follow-ups sent, every message the window still needs. A
  sample of users is made once and its states are repeated under new user ids up to P
  pairs.

- ``core``: a fresh Python process builds ``DecisionCore`` state for P pairs the way a
  worker restores it (``load_user(UserState.from_dict(orjson.loads(value)))``: restored
  users are idle, so packed); RSS delta / pair. For realistic state up to 100k pairs, also
  the same users unpacked into objects, as a user is while it changes.
- ``worker``: the same users' state is written to a fresh ``engine.state`` topic (what the
  engine keeps there), then ``relance worker --role engine`` starts, restores every
  partition's core from it, and its RSS is read once the four cores are restored, minus
  the RSS of the same worker with empty state; once per ``--stores``: ``memory`` (idle
  users packed in a dict) and ``rocksdb`` (packed in RocksDB on local disk; its folder's
  size is shown). The pairs the worker says it restored are shown beside those written.

Run: ``.venv/bin/python -m bench.memory_bench --pairs 100000,1000000 --stores memory,rocksdb``
(``--shapes minimal,realistic`` by default; ``--core-only`` for the in-process figures.)
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from devstack.localstack import redis_db_url
from devstack.processes import WorkerProcess, running
from bench.common import add_stack_flags, bench_stack, fresh_prefix, produce_items, result, rss_mb

START = 1_795_856_400_000
BOTS = ("maestro", "chef-lucie")


class StateMaker:
    """Users' state as the engine writes it (``to_dict`` of a fed DecisionCore), in whatever
    format domain/rules.py has today: 2 pairs per user, 5 inbound messages each."""

    def __init__(self) -> None:
        from domain.rules import DecisionCore
        from domain.safety import PhraseListClassifier
        from foundation.settings import Settings
        from schemas.records import format_ts, parse_message
        self.settings, self.classifier = Settings.from_mapping({"clock": "event"}), PhraseListClassifier()
        self.core_type, self.parse, self.format_ts = DecisionCore, parse_message, format_ts

    def __call__(self, n: int) -> tuple[bytes, int]:
        """User ``n``'s changelog value, and its pairs."""
        user = f"u{n:08d}"
        core = self.core_type(self.settings, classifier=self.classifier)  # nothing kept from user to user
        for b, bot in enumerate(BOTS):
            for k in range(5):
                core.feed(self.parse({
                    "event_id": f"wamid.{n:09d}{b}{k}", "app": "whatsapp", "user_id": user, "bot_id": bot,
                    "direction": "inbound", "ts": self.format_ts(START + k * 30_000 + b), "text": "hello"}))
        return orjson.dumps(core.users[user].to_dict()), len(BOTS)


class RealisticStates:
    """Users' state after 21 days of the simulator's traffic, fed to a DecisionCore with the
    default rules; user ``n`` is sample user ``n mod size``. Read from ``sample_file`` if
    given (``write_sample``): the process measured must not have fed the traffic itself,
    or the memory that feeding freed would be counted as room for the state."""

    SAMPLE_USERS, DAYS, SEED = 3000, 21, 7

    def __init__(self, sample_file: str | None = None) -> None:
        if sample_file is None:
            self.sample, self.messages_per_pair = self.simulated()
            return
        with open(sample_file, "rb") as lines:  # line by line: no garbage as large as the sample
            self.messages_per_pair = float(next(lines))
            self.sample = [(line[line.index(b" ") + 1:-1], int(line[:line.index(b" ")])) for line in lines]

    @classmethod
    def simulated(cls) -> tuple[list[tuple[bytes, int]], float]:
        """(changelog value, pairs) of each sample user that holds a pair, and the messages
        a pair keeps on average."""
        from devstack.traffic import TrafficShape, generate
        from domain.rules import DecisionCore
        from foundation.settings import Settings
        from schemas.records import parse_record
        core = DecisionCore(Settings.from_mapping({"clock": "event"}))
        for record in generate(TrafficShape(users=cls.SAMPLE_USERS, days=cls.DAYS), seed=cls.SEED):
            core.feed(parse_record(record))
            core.drain()
        users = [core.user(user_id) for user_id in sorted({*core.users, *core.idle})]
        users = [user for user in users if user.pairs]
        kept = [len(getattr(pair, name, ())) // 2 for user in users for pair in user.pairs.values()
                for name in ("inbound", "outbound")]
        sample = [(orjson.dumps(user.to_dict()), len(user.pairs)) for user in users]
        return sample, sum(kept) / sum(pairs for _, pairs in sample)

    def __call__(self, n: int) -> tuple[bytes, int]:
        return self.sample[n % len(self.sample)]


def write_sample(path: str) -> None:
    """The sample as ``RealisticStates`` reads it: the messages a pair keeps, then one
    ``<pairs> <value>`` line per user."""
    sample, messages_per_pair = RealisticStates.simulated()
    Path(path).write_bytes(b"\n".join([b"%f" % messages_per_pair] + [b"%d %s" % (p, v) for v, p in sample]) + b"\n")


def users_for(make, pairs: int):
    """(user_id, changelog value) of the first users that hold ``pairs`` pairs together."""
    n = held = 0
    while held < pairs:
        value, user_pairs = make(n)
        yield f"u{n:08d}", value
        held += user_pairs
        n += 1


def core_child(pairs: int, shape: str, sample_file: str | None) -> None:
    """In this (fresh) process: RSS before and after building the state, as one RESULT line."""
    from domain.rules import DecisionCore, UserState
    from foundation.settings import Settings
    core = DecisionCore(Settings.from_mapping({"clock": "event"}))
    make = RealisticStates(sample_file) if shape == "realistic" else StateMaker()
    make(0)
    gc.collect()
    before = _self_rss()
    started = time.perf_counter()
    for user_id, value in users_for(make, pairs):
        core.load_user(user_id, UserState.from_dict(orjson.loads(value)))
    seconds = time.perf_counter() - started
    gc.collect()
    after = _self_rss()
    as_objects = float("nan")
    if shape == "realistic" and pairs <= 100_000:
        for user_id in list(core.idle):
            core.user(user_id)   # unpacked, as while a user changes
        gc.collect()
        as_objects = _self_rss()
    per_pair_messages = getattr(make, "messages_per_pair", 5.0)
    print(f"CORE {core.pairs_tracked()} {before:.1f} {after:.1f} {seconds:.2f} {as_objects:.1f} {per_pair_messages:.1f}")


def _self_rss() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _on_code(source: str | None) -> tuple[list[str], dict, Path]:
    """How to run this script by path on the code of ``source`` (this checkout if None):
    only the measured code comes from there."""
    root = Path(source).resolve() if source else Path(__file__).resolve().parent.parent
    return [sys.executable, str(Path(__file__).resolve())], dict(os.environ, PYTHONPATH=str(root)), root


def sample_on(source: str | None, path: Path) -> Path:
    """A realistic sample made by the code of ``source``, in its own state format."""
    run, env, root = _on_code(source)
    subprocess.run(run + ["--write-sample", str(path)], check=True, env=env, cwd=root)
    return path


def core_measure(pairs: int, shape: str, source: str | None = None) -> tuple[int, float, float, float, float, float]:
    """Run ``core_child`` in a fresh process, on the code of ``source`` if given."""
    run, env, root = _on_code(source)
    with tempfile.TemporaryDirectory(prefix="relance-sample-") as folder:
        sample = sample_on(source, Path(folder) / "sample") if shape == "realistic" else Path(folder) / "none"
        out = subprocess.run(run + ["--child-core", str(pairs), "--shape", shape, "--sample", str(sample)],
                             capture_output=True, text=True, check=True, env=env, cwd=root)
    line = next(line for line in out.stdout.splitlines() if line.startswith("CORE "))
    _, tracked, before, after, seconds, as_objects, messages = line.split()
    return int(tracked), float(before), float(after), float(seconds), float(as_objects), float(messages)


async def write_state(bootstrap: str, topic: str, shape: str, pairs: int, partitions: int, source: str | None) -> float:
    """The engine.state records of users holding ``pairs`` pairs, on their partitions, in
    the state format of the code of ``source``; seconds taken."""
    from streams.outbox import partition_for
    with tempfile.TemporaryDirectory(prefix="relance-sample-") as folder:
        make = RealisticStates(str(sample_on(source, Path(folder) / "sample"))) if shape == "realistic" else StateMaker()
    items = ((key.encode(), value, None, partition_for(key.encode(), partitions)) for key, value in users_for(make, pairs))
    _, seconds = await produce_items(bootstrap, topic, items)
    return seconds


async def worker_rss(bootstrap: str, redis_url: str, work: Path, shape: str, pairs: int, partitions: int,
                     timeout: float, store: str, source: str | None = None) -> tuple[float, float, int, float]:
    """(RSS MB once restored, seconds from start to restored, pairs it says it restored,
    MB of its data folder)."""
    from streams.admin import acreate_topics
    from streams.topics import CATALOG, ENGINE_STATE, topic_name
    prefix = fresh_prefix("mem")
    await acreate_topics(bootstrap, CATALOG, prefix, partitions)
    if pairs:
        await write_state(bootstrap, topic_name(ENGINE_STATE, prefix), shape, pairs, partitions, source)
    app_id = f"mem-{uuid.uuid4().hex[:6]}"
    data_dir = work / f"data-{app_id}"
    worker = WorkerProcess(work, ["engine"], pythonpath=source, clock="event", broker=bootstrap, redis_url=redis_url,
                           topic_prefix=prefix, partitions=partitions, app_id=app_id, data_dir=data_dir, store=store)
    with running([worker]):
        started = time.monotonic()
        while True:
            worker.check_alive()
            if worker.log_path.exists() and worker.log_path.read_text(errors="replace").count("decision core restored") >= partitions:
                break
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"worker not restored after {timeout}s:\n{worker.log_tail()}")
            await asyncio.sleep(0.5)
        restored = time.monotonic() - started
        # A restore that blocks the loop past the session timeout (10 s) costs the worker its
        # partitions: it is revoked and restores again. Wait until no restore has started
        # for 12 s, then read RSS; the rounds are reported.
        count, quiet_since, settling = -1, time.monotonic(), time.monotonic()
        while time.monotonic() - quiet_since < 12 and time.monotonic() - settling < 90:
            worker.check_alive()
            now_count = worker.log_path.read_text(errors="replace").count("decision core restored")
            if now_count != count:
                count, quiet_since = now_count, time.monotonic()
            await asyncio.sleep(1.0)
        text = worker.log_path.read_text(errors="replace")
        lines = re.findall(r"decision core restored with (\d+) pairs", text)
        restored_pairs = sum(int(n) for n in lines[-partitions:])
        rounds = len(lines) / partitions
        if rounds > 1:
            print(f"  note: the worker restored {rounds:g} times in {time.monotonic() - started:.0f}s (revoked while "
                  "restoring: the restore runs in the rebalance callback, past the 10 s session timeout)", flush=True)
        on_disk = sum(f.stat().st_size for f in data_dir.rglob("*") if f.is_file()) / 1024 / 1024
        return rss_mb(worker.pid), restored, restored_pairs, on_disk


async def main_async(args: argparse.Namespace) -> None:
    sizes = [int(p) for p in args.pairs.split(",") if p]
    shapes = [shape for shape in args.shapes.split(",") if shape]
    print(f"pairs {sizes}, shapes {shapes}, {args.partitions} partitions")
    print(f"\n{'DecisionCore in a fresh process':<40} {'pairs':>10} {'RSS delta MB':>13} {'bytes/pair':>11} "
          f"{'build s':>8} {'msgs/pair':>10} {'as objects B/pair':>18}")
    for shape in shapes if not args.workers_only else ():
        for pairs in sizes:
            tracked, before, after, seconds, as_objects, messages = core_measure(pairs, shape, args.source)
            per_pair = (after - before) * 1024 * 1024 / tracked
            objects = (as_objects - before) * 1024 * 1024 / tracked
            shown = "-" if objects != objects else f"{objects:,.0f}"  # nan: not measured
            print(f"{shape + ', load_user(from_dict(json))':<40} {tracked:>10,} {after - before:>13,.1f} {per_pair:>11,.0f} "
                  f"{seconds:>8.1f} {messages:>10.1f} {shown:>18}", flush=True)
            result(f"core_{shape}_bytes_per_pair_{pairs}", per_pair, "bytes", rss_delta_mb=f"{after - before:.0f}",
                   messages_per_pair=f"{messages:.1f}")
    if args.core_only:
        return
    print(f"\n{'engine worker (restored from engine.state)':<40} {'pairs':>10} {'RSS MB':>9} {'over empty':>11} "
          f"{'bytes/pair':>11} {'restore s':>10} {'disk MB':>8}")
    with bench_stack(args) as (bootstrap, redis_url, work):
        url = redis_db_url(redis_url, 14, flush=not args.redis_url)
        for store in [name for name in args.stores.split(",") if name]:
            empty, _, _, _ = await worker_rss(bootstrap, url, work, "minimal", 0, args.partitions, args.timeout, store, args.source)
            name = f"engine worker, store {store}"
            print(f"{name:<40} {0:>10,} {empty:>9,.0f} {0:>11,.0f} {'-':>11} {'-':>10}", flush=True)
            for shape in shapes:
                for pairs in sizes:
                    rss, seconds, restored, disk = await worker_rss(bootstrap, url, work, shape, pairs, args.partitions,
                                                                    args.timeout, store, args.source)
                    per_pair = (rss - empty) * 1024 * 1024 / restored
                    print(f"{name + ', ' + shape:<40} {restored:>10,} {rss:>9,.0f} {rss - empty:>11,.0f} {per_pair:>11,.0f} "
                          f"{seconds:>10.1f} {disk:>8,.0f}", flush=True)
                    result(f"worker_{store}_{shape}_rss_mb_{pairs}", rss, "MB", over_empty=f"{rss - empty:.0f}",
                           bytes_per_pair=f"{per_pair:.0f}", restore_s=f"{seconds:.1f}", disk_mb=f"{disk:.0f}",
                           restored_pairs=restored)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="100000,1000000", help="pair counts, comma-separated")
    parser.add_argument("--shapes", default="minimal,realistic", help="state shapes, comma-separated: minimal, realistic")
    parser.add_argument("--shape", default="minimal", help=argparse.SUPPRESS)  # of --child-core
    parser.add_argument("--sample", help=argparse.SUPPRESS)                    # of --child-core
    parser.add_argument("--write-sample", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--stores", default="memory,rocksdb", help="engine stores to measure, comma-separated")
    parser.add_argument("--core-only", action="store_true", help="only the in-process DecisionCore figures")
    parser.add_argument("--workers-only", action="store_true", help="only the engine worker figures")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--source", help="run the workers from this copy of the code (a worktree with a patch)")
    parser.add_argument("--child-core", type=int, help=argparse.SUPPRESS)
    add_stack_flags(parser)
    args = parser.parse_args(argv)
    if args.write_sample:
        write_sample(args.write_sample)
        return
    if args.child_core:
        core_child(args.child_core, args.shape, args.sample)
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
