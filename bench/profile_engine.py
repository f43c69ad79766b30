"""Where an engine (or ingest) worker's time goes per event: py-spy on a real worker, stacks bucketed.

Produces N records (as ``pipeline_bench``), starts one ``relance worker --role engine``
(event mode, memory store), attaches ``py-spy record --threads --idle`` to it while it
drains the topic, then sorts every sample of the worker's main thread (the event loop
that runs the agent) into buckets. With ``--role ingest`` it produces N native webhooks
instead (as ``ingest_bench``) to ``relance worker --role ingest``, and the buckets of our
code are the ingest stage's (normalise, encode, outbox, receipts, glue).

The engine's buckets:

- our code (``agents/engine.py`` on ``streams/kafkaloop.py``): parse, the DecisionCore
  (advance, feed, drain), decision records, follow-up requests, the checkpoint before
  each commit (users' and meta state to ``engine.state``, written in the background),
  engine glue;
- aiokafka (getmany in the loop, and its background fetcher/sender tasks), the commit;
- Faust/mode/asyncio other, and idle (the loop waiting in select/epoll).

Other threads are shown apart.
Needs ``py-spy`` (``pip install py-spy``; root or ptrace rights).

Run: ``.venv/bin/python -m bench.profile_engine --events 100000`` (``--role ingest``)
"""
from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

from devstack.localstack import redis_db_url
from devstack.processes import WorkerProcess, running
from bench.common import (
    GroupWatch, ROOT, add_stack_flags, bench_stack, canonical_lines, feeder_items, fresh_prefix, result,
    timed_run,
)
from bench.pipeline_bench import RULES

FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


PARSE = ("decode_record", "_producers_ts", "parse_record", "parse_message", "_common_message", "_checked_message",
         "parse_control", "loads", "parse_ts", "_parse_rfc3339", "_identifier", "_one_of", "_object")


def bucket(frames: list[tuple[str, str, int]], role: str) -> str:
    """The bucket of one main-thread stack (root first)."""
    frames = [(f.rsplit(".", 1)[-1], path, line) for f, path, line in frames]  # Engine.process -> process

    def has(func: str, file: str) -> bool:
        return any(f == func and path.endswith(file) for f, path, _ in frames)

    ours = (_ingest_bucket if role == "ingest" else _engine_bucket)(frames, has)
    if ours:
        return ours
    if has("_run", "streams/kafkaloop.py") and any("aiokafka" in path for _, path, _ in frames):
        return "aiokafka getmany (fetch + record unpacking)"
    if has("_commit", "streams/kafkaloop.py"):
        return "commit"
    if any(("/agents/" in path or "/streams/" in path or "/relance/" in path) for _, path, _ in frames):
        return "our: other (timers, metrics, web)"
    leaf = frames[-1] if frames else ("", "", 0)
    if any(f == "fetched_records" for f, _, _ in frames):
        return "aiokafka getmany (fetch + record unpacking)"
    if leaf[0] in ("select", "poll") or (len(frames) > 1 and frames[-2][0] == "select" and "selectors" in frames[-2][1]):
        return "idle: event loop waiting"
    if any("aiokafka" in path for _, path, _ in frames):
        return "aiokafka background (fetcher, sender, coordinator)"
    return "faust/mode/asyncio other"


def _ingest_bucket(frames: list[tuple[str, str, int]], has) -> str | None:
    """The ingest stage's own buckets (``agents/ingest.py``), or None."""
    if not has("process", "agents/ingest.py"):
        return None
    if has("_settle_receipts", "agents/ingest.py"):
        return "our: receipts (ledger in Redis, outcome steps)"
    if has("batch_dead_letter", "streams/wiring.py"):
        return "our: dead letters"
    if any(f in ("to_json", "to_dict", "_canonical", "format_ts", "_minute_prefix") for f, _, _ in frames):
        return "our: encode (canonical event to JSON)"
    if any(path.endswith("domain/normalize.py") for _, path, _ in frames):
        return "our: normalise (decode + walk + checks)"
    if has("add", "streams/outbox.py"):
        return "our: outbox add (partitioner, batch append)"
    if has("send", "streams/outbox.py") or has("flush", "streams/outbox.py"):
        return "our: outbox send (batches to the producer)"
    return "our: ingest glue (loop over records, counters)"


def _engine_bucket(frames: list[tuple[str, str, int]], has) -> str | None:
    """The engine stage's own buckets (``agents/engine.py``), or None."""
    if has("checkpoint", "agents/engine.py") or has("write", "agents/engine.py"):
        return "our: checkpoint (users' + meta state encoded, written)"
    if has("_publish_requests", "agents/engine.py"):
        return "our: follow-up requests (Redis + Kafka)"
    if has("_record_decisions", "agents/engine.py"):
        return "our: decision records (to_json, send, metrics)"
    if has("_dead_letter", "agents/engine.py"):
        return "our: dead letters"
    if any(path.endswith("schemas/records.py") and f in PARSE for f, path, _ in frames):
        return "our: parse (decode_record: msgspec, else orjson + parse_record)"
    if any(path.endswith("domain/rules.py") or path.endswith("domain/safety.py") for _, path, _ in frames):
        return "our: DecisionCore (advance, feed, drain)"
    if has("process", "agents/engine.py"):
        return "our: engine glue (headers, kills, counters)"
    return None


def parse_collapsed(path: Path) -> dict[str, Counter]:
    """thread name -> Counter of stacks (tuple of frames) from py-spy's raw output."""
    threads: dict[str, Counter] = {}
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack:
            continue
        parts = stack.split(";")
        thread, frames = parts[0], []
        for part in parts[1:]:
            match = FRAME.match(part)
            if match:
                frames.append((match["func"], match["file"], int(match["line"] or 0)))
            else:
                frames.append((part, "", 0))
        threads.setdefault(thread, Counter())[tuple(frames)] += int(count)
    return threads


def is_main(thread: str) -> bool:
    return "MainThread" in thread or thread.startswith("process") and "MainThread" in thread


def report(path: Path, root: Path, events: int, seconds: float, role: str) -> dict[str, float]:
    threads = parse_collapsed(path)
    totals = {thread: sum(c.values()) for thread, c in threads.items()}
    main = next((t for t in threads if "MainThread" in t), max(totals, key=totals.get))
    buckets: Counter = Counter()
    for frames, count in threads[main].items():
        buckets[bucket(list(frames), role)] += count
    total = sum(buckets.values())
    per_event_us = seconds * 1e6 / max(events, 1)
    print(f"\nmain thread ({main}): {total} samples over {seconds:.1f}s, {events:,} events, "
          f"{per_event_us:.0f} us of wall time per event")
    print(f"{'bucket':<48} {'share':>6} {'us/event':>9}")
    shares = {}
    for name, count in buckets.most_common():
        share = count / total
        shares[name] = share
        print(f"{name:<48} {share:>6.1%} {share * per_event_us:>9.1f}")
    others = {t: n for t, n in totals.items() if t != main}
    if others:
        print("other threads (samples, incl. idle): " + ", ".join(f"{t}: {n}" for t, n in others.items()))
    return shares


def engine_items(args: argparse.Namespace, prefix: str) -> tuple[list, dict[str, int]]:
    """Realistic canonical records on ``messages`` (as ``pipeline_bench``), and the topics read."""
    from streams.topics import MESSAGES, topic_name
    topic = topic_name(MESSAGES, prefix)
    lines = canonical_lines(max(4, args.events // 98), 14.0, args.seed, limit=args.events)
    items = [(topic, key, value, headers, partition)
             for key, value, headers, partition in feeder_items(lines, args.partitions)]
    return items, {topic: args.partitions}


def ingest_items(args: argparse.Namespace, prefix: str) -> tuple[list, dict[str, int]]:
    """Native webhooks on ``raw.<app>`` (as ``ingest_bench``), and the topics read."""
    from bench.ingest_bench import webhooks
    from streams.topics import RAW_BY_APP, topic_name
    items = [(topic_name(RAW_BY_APP[app], prefix), None, body, None, 0) for app, body in webhooks(args.events, args.seed)]
    return items, {topic_name(spec, prefix): 1 for spec in RAW_BY_APP.values()}


async def main_async(args: argparse.Namespace) -> None:
    from streams.admin import acreate_topics
    from streams.topics import CATALOG

    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    root = Path(args.source).resolve() if args.source else ROOT
    out = Path(args.out).resolve()
    with bench_stack(args) as (bootstrap, redis_url, work):
        prefix = fresh_prefix("prof")
        await acreate_topics(bootstrap, CATALOG, prefix, args.partitions)
        items, read = (ingest_items if args.role == "ingest" else engine_items)(args, prefix)
        app_id = f"{args.role}-{uuid.uuid4().hex[:6]}"
        rules = RULES if args.role == "engine" else {}
        worker = WorkerProcess(work, [args.role], pythonpath=args.source, **dict(
            rules, broker=bootstrap, redis_url=redis_db_url(redis_url, 9, flush=not args.redis_url),
            topic_prefix=prefix, partitions=args.partitions, app_id=app_id,
            data_dir=work / "data"))
        with running([worker]):
            async with GroupWatch(bootstrap, f"{prefix}{app_id}.{args.role}", read) as watch:
                await watch.wait_stable(1, 120, [worker])
                spy = subprocess.Popen([pyspy, "record", "--pid", str(worker.pid), "--threads", "--idle",
                                        "--rate", str(args.rate), "--format", "raw", "--output", str(out),
                                        "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                try:
                    # The whole run, as pipeline_bench times it: first record produced to last commit.
                    seconds, _ = await timed_run(bootstrap, items, watch, [worker], args.timeout)
                    records = len(items)
                finally:
                    spy.send_signal(2)  # SIGINT: py-spy writes what it has and exits
                    try:
                        _, err = spy.communicate(timeout=60)
                    except subprocess.TimeoutExpired:
                        spy.kill()
                        _, err = spy.communicate()
    print(f"{args.role} x1 under py-spy ({args.rate} Hz, nonblocking): {records:,} records in {seconds:.1f}s "
          f"({records / seconds:,.0f}/s); code from {root}")
    if not out.exists() or out.stat().st_size == 0:
        print(f"py-spy wrote nothing: {err.decode(errors='replace')[-800:]}")
        return
    shares = report(out, root, records, seconds, args.role)
    result(f"profiled_{args.role}_x1", records / seconds, "events/s" if args.role == "engine" else "webhooks/s")
    for name, share in shares.items():
        key = re.sub(r"[^a-z]+", "_", name.lower()).strip("_")
        result(f"profile_{key}", share, "share")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("engine", "ingest"), default="engine",
                        help="engine: canonical records to an engine worker; ingest: native webhooks to an ingest worker")
    parser.add_argument("--events", type=int, default=100_000, help="records produced (webhooks with --role ingest)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--out", default="/tmp/relance-worker-profile.txt", help="py-spy raw (collapsed) output")
    parser.add_argument("--source", help="run the worker from this copy of the code (e.g. a worktree with a patch)")
    parser.add_argument("--timeout", type=float, default=900)
    add_stack_flags(parser)
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
