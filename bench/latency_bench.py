"""Decision latency in wall mode: from a pair's due time to its request on Kafka.

One ``relance worker --role engine`` in wall mode with a short idle delay (D, default
5 s), quiet hours off, no caps, min_inbound 1. The bench writes one inbound message
stamped now for each of P pairs, spread over a few seconds; each pair is due at
L + D (``due_ts`` of its request). ``followups.requested`` is set to LogAppendTime, so a
request's Kafka timestamp is when the broker appended it; latency = that - due_ts. The
requests are read as every stage reads them (``read_committed``): ``seen`` is when the
reader got each one (this machine's clock) - due_ts, which for a transactional engine
includes the wait for the checkpoint's commit.

Run: ``.venv/bin/python -m bench.latency_bench --pairs 2000 --repeat 2 [--before TREE]``
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import orjson

from devstack.localstack import redis_db_url
from devstack.processes import WorkerProcess, running
from bench.common import (
    GroupWatch, add_stack_flags, bench_stack, fresh_prefix, from_tree, result,
)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def one_run(bootstrap: str, redis_url: str, work, args, index: int,
                  pythonpath: str | None = None) -> tuple[list[float], list[float]]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from streams.admin import acreate_topics
    from schemas.records import format_ts, parse_ts
    from streams.topics import CATALOG, FOLLOWUPS_REQUESTED, MESSAGES, topic_name

    prefix = fresh_prefix("lat")
    requests_topic = topic_name(FOLLOWUPS_REQUESTED, prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:  # created first, with the broker's clock on every record; the rest as the catalog says
        config = dict(FOLLOWUPS_REQUESTED.config(), **{"message.timestamp.type": "LogAppendTime"})
        await admin.create_topics([NewTopic(requests_topic, args.partitions, 1, topic_configs=config)])
    finally:
        await admin.close()
    await acreate_topics(bootstrap, CATALOG, prefix, args.partitions)
    app_id = f"lat-{uuid.uuid4().hex[:6]}"
    worker = WorkerProcess(work, ["engine"], clock="wall", broker=bootstrap, redis_url=redis_url, topic_prefix=prefix,
                    partitions=args.partitions, app_id=app_id, data_dir=work / f"data-{app_id}",
                    idle_delay=f"{args.delay}s", quiet_hours="off", user_cap_day=0, user_cap_week=0,
                    min_inbound=1, pythonpath=pythonpath)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                isolation_level="read_committed")
    with running([worker]):
        async with GroupWatch(bootstrap, f"{prefix}{app_id}.engine", {topic_name(MESSAGES, prefix): args.partitions}) as watch:
            await watch.wait_stable(1, 120, [worker])
        await asyncio.sleep(1.0)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        try:
            run = uuid.uuid4().hex[:6]
            gap = args.spread / args.pairs
            for n in range(args.pairs):
                now = time.time_ns() // 1_000_000
                user = f"lat{run}-{n:06d}"
                record = {"event_id": f"wamid.{run}{n:08d}", "app": "whatsapp", "user_id": user,
                          "bot_id": "maestro", "direction": "inbound", "ts": format_ts(now), "text": "hello"}
                await producer.send(topic_name(MESSAGES, prefix), orjson.dumps(record), key=user.encode())
                if n % 50 == 49:
                    await asyncio.sleep(gap * 50)
            await producer.flush()
        finally:
            await producer.stop()
        await consumer.start()
        try:
            tps = [TopicPartition(requests_topic, p) for p in range(args.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning()
            latencies: list[float] = []
            seen: list[float] = []
            deadline = time.monotonic() + args.delay + args.spread + 60
            while len(latencies) < args.pairs and time.monotonic() < deadline:
                worker.check_alive()
                for messages in (await consumer.getmany(timeout_ms=100)).values():
                    now = time.time_ns() // 1_000_000
                    for message in messages:
                        due = parse_ts(orjson.loads(message.value)["due_ts"])
                        latencies.append(message.timestamp - due)
                        seen.append(now - due)
        finally:
            await consumer.stop()
    if len(latencies) < args.pairs:
        print(f"  run {index}: only {len(latencies)} of {args.pairs} follow-ups arrived")
    return latencies, seen


async def main_async(args: argparse.Namespace) -> None:
    print(f"{args.pairs} pairs, messages spread over {args.spread}s, D={args.delay}s, "
          f"{args.repeat} run(s); latency = append time - due time; seen = read (read_committed) - due time")
    sources = [None] + ([args.before] if args.before else [])
    runs: dict[str | None, dict[str, list[float]]] = {source: {"p50": [], "p99": [], "seen50": [], "seen99": [],
                                                                "max": []} for source in sources}
    with bench_stack(args) as (bootstrap, redis_url, work):
        index = 0
        for _ in range(args.repeat):
            for source in sources:  # alternating, so both see the same machine
                index += 1
                url = redis_db_url(redis_url, 10 + index, flush=not args.redis_url)
                latencies, seen = await one_run(bootstrap, url, work, args, index, pythonpath=source)
                if not latencies:
                    raise SystemExit("no follow-up arrived")
                got = runs[source]
                got["p50"].append(percentile(latencies, 0.5))
                got["p99"].append(percentile(latencies, 0.99))
                got["seen50"].append(percentile(seen, 0.5))
                got["seen99"].append(percentile(seen, 0.99))
                got["max"].append(max(seen))
                print(f"  run {index}{from_tree(source)}: {len(latencies)} follow-ups, appended p50 {got['p50'][-1]:.0f} ms, "
                      f"p99 {got['p99'][-1]:.0f} ms; seen p50 {got['seen50'][-1]:.0f} ms, p99 {got['seen99'][-1]:.0f} ms, "
                      f"max {got['max'][-1]:.0f} ms", flush=True)
    print(f"\n{'engine':<24} {'appended p50':>13} {'p99':>6} {'seen p50':>9} {'p99':>6} {'max':>6}  (ms, medians of runs)")
    for source in sources:
        got = runs[source]
        print(f"{'this tree' + from_tree(source):<24} {statistics.median(got['p50']):>13.0f} {statistics.median(got['p99']):>6.0f} "
              f"{statistics.median(got['seen50']):>9.0f} {statistics.median(got['seen99']):>6.0f} {max(got['max']):>6.0f}")
    got = runs[None]
    result("latency_p50", statistics.median(got["p50"]), "ms", runs="/".join(f"{v:.0f}" for v in got["p50"]))
    result("latency_p99", statistics.median(got["p99"]), "ms", runs="/".join(f"{v:.0f}" for v in got["p99"]))
    result("latency_seen_p50", statistics.median(got["seen50"]), "ms", runs="/".join(f"{v:.0f}" for v in got["seen50"]))
    result("latency_seen_p99", statistics.median(got["seen99"]), "ms", runs="/".join(f"{v:.0f}" for v in got["seen99"]))
    result("latency_max", max(got["max"]), "ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=4.0, help="seconds over which the messages are sent")
    parser.add_argument("--delay", type=float, default=5.0, help="idle delay D in seconds")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--before", metavar="TREE", help="also run the engine from this copy of the code (a git "
                        "worktree of an earlier commit), alternating with this one")
    add_stack_flags(parser)
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
