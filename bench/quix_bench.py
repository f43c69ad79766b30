"""A peer beside ours: the same records through a Quix Streams application, on the same broker.

Quix Streams (``quixstreams``, on confluent-kafka/librdkafka, state in RocksDB with a
changelog topic) is the Python stream processor a user would compare Relance with. The
application here does the stateful per-pair work of our engine as closely as its API
allows: for every message event (controls and the feeder's clock-only records are
skipped), it keeps in its RocksDB state, per (user, bot) (state is scoped by the record's
key, ``user_id``; the bot is the state key), every message of the last 14 days as
``[ts, event_id, inbound]``, drops a re-sent one, prunes the older ones and counts the
inbound messages of the window. It has no timers, so it decides nothing and writes no
output: it does less than our engine. Commits and state flushes every second, as ours.

Per repetition, on a fresh topic: the application in its own process, waiting in a fresh
group on the empty topic until the group is stable; every record produced at once and
the run timed to the last offset committed (``timed_run``, as ``pipeline_bench``); then
its own plain consumer (confluent-kafka, orjson) and ours (aiokafka, orjson) read the
same records.

Needs the ``bench`` extra (``pip install -e '.[bench]'``, done by ``deploy/dev setup``).
Run: ``.venv/bin/python -m bench.quix_bench --events 300000 --repeat 3``
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import datetime

import orjson

from devstack.processes import ChildProcess, running
from bench.common import (
    GroupWatch, add_stack_flags, bench_stack, canonical_lines, feeder_items, fresh_prefix, plain_consume, result,
    spread, timed_run,
)

WINDOW_MS = 14 * 86_400_000


# -- the application (in its own process) -------------------------------------------------

def keep_window(value: bytes, state) -> bool:
    """One record through the pair's window in state; never passed on (no output)."""
    if not value:
        return False
    record = orjson.loads(value)
    if "type" in record:
        return False
    ts = int(datetime.fromisoformat(record["ts"]).timestamp() * 1000)
    window = state.get(record["bot_id"]) or []
    event_id = record["event_id"]
    if any(kept[1] == event_id for kept in window):
        return False  # a re-sent message
    window = [kept for kept in window if kept[0] > ts - WINDOW_MS]
    window.append([ts, event_id, record["direction"] == "inbound"])
    window.sort()
    state.set(record["bot_id"], window)
    state.set("inbound_in_window", sum(1 for kept in window if kept[2]))
    return False


def run_application(broker: str, topic: str, group: str, state_dir: str) -> None:
    from quixstreams import Application
    app = Application(broker_address=broker, consumer_group=group, auto_offset_reset="earliest",
                      commit_interval=1.0, state_dir=state_dir, loglevel="WARNING")
    sdf = app.dataframe(app.topic(topic, key_deserializer="bytes", value_deserializer="bytes"))
    sdf.filter(keep_window, stateful=True)
    app.run()


# -- the plain consumer on confluent-kafka ---------------------------------------------------

def confluent_plain(bootstrap: str, topic: str, partitions: int, expected: int) -> tuple[int, float]:
    """Quix's own client, no group, no state: read and orjson-decode ``expected`` records."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"plain-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        count, started, deadline = 0, None, time.monotonic() + 300
        loads = orjson.loads
        while count < expected and time.monotonic() < deadline:
            messages = consumer.consume(num_messages=10_000, timeout=0.5)
            if started is None and messages:
                started = time.perf_counter()
            for message in messages:
                if message.error() is None:
                    value = message.value()
                    if value:
                        loads(value)
                    count += 1
        return count, time.perf_counter() - (started or time.perf_counter())
    finally:
        consumer.close()


# -- the bench -------------------------------------------------------------------------------

async def one_run(bootstrap: str, work, items, partitions: int, timeout: float) -> tuple[float, float, float]:
    """(peer records/s, its plain consumer's, ours) on a fresh topic."""
    from streams.admin import acreate_topics
    from streams.topics import MESSAGES, topic_name
    prefix = fresh_prefix("quix")
    await acreate_topics(bootstrap, [MESSAGES], prefix, partitions)
    topic = topic_name(MESSAGES, prefix)
    group = f"{prefix}quix"
    app = ChildProcess("quix peer", [sys.executable, "-m", "bench.quix_bench", "--application", "--bootstrap",
                                     bootstrap, "--topic", topic, "--group", group,
                                     "--state-dir", str(work / f"state-{group}")],
                       env=dict(os.environ), log_path=work / f"{group}.log")
    with running([app]):
        async with GroupWatch(bootstrap, group, {topic: partitions}) as watch:
            await watch.wait_stable(1, 120, [app])
            records = [(topic, key, value, headers, partition) for key, value, headers, partition in items]
            seconds, _ = await timed_run(bootstrap, records, watch, [app], timeout)
    count, plain_seconds = confluent_plain(bootstrap, topic, partitions, len(items))
    ours, ours_seconds = await plain_consume(bootstrap, topic, partitions, len(items))
    if count < len(items) or ours < len(items):
        raise RuntimeError(f"the plain consumers read {count:,} and {ours:,} of {len(items):,} records")
    return len(items) / seconds, count / plain_seconds, ours / ours_seconds


async def main_async(args: argparse.Namespace) -> None:
    users = max(4, args.events // 98)
    lines = canonical_lines(users, 14.0, args.seed, limit=args.events)
    items = feeder_items(lines, args.partitions)
    print(f"{len(items)} records ({users} users, 14 days, seed {args.seed}), {args.partitions} partitions, "
          f"{args.repeat} repetition(s)")
    peer, plain, ours = [], [], []
    with bench_stack(args) as (bootstrap, _, work):
        for repetition in range(1, args.repeat + 1):
            rates = await one_run(bootstrap, work, items, args.partitions, args.timeout)
            for values, rate in zip((peer, plain, ours), rates):
                values.append(rate)
            print(f"  rep {repetition}: quix peer {rates[0]:,.0f}/s, its plain consumer (confluent-kafka) "
                  f"{rates[1]:,.0f}/s, plain aiokafka {rates[2]:,.0f}/s", flush=True)
    print(f"\n{'what':<44} {'records/s median (min-max)':>30} {'vs its plain':>13}")
    for name, values in (("plain confluent-kafka consumer + orjson", plain),
                         ("Quix Streams peer (window per pair, RocksDB)", peer),
                         ("plain aiokafka consumer + orjson", ours)):
        print(f"{name:<44} {spread(values):>30} {statistics.median(values) / statistics.median(plain):>12.3f}x")
    result("quix_plain_consumer", statistics.median(plain), "events/s", spread=spread(plain).replace(" ", ""))
    result("quix_peer", statistics.median(peer), "events/s", spread=spread(peer).replace(" ", ""),
           ratio_plain=f"{statistics.median(peer) / statistics.median(plain):.4f}")
    result("quix_aiokafka_plain_consumer", statistics.median(ours), "events/s", spread=spread(ours).replace(" ", ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="records on the topic (default 200000)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; the spread is shown")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed for one run")
    parser.add_argument("--application", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    add_stack_flags(parser)
    args = parser.parse_args(argv)
    if args.application:
        run_application(args.bootstrap, args.topic, args.group, args.state_dir)
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
