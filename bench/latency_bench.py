"""Decision latency in wall mode: from a pair's due time to its request on Kafka.

One ``relance worker --role engine`` in wall mode with a short idle delay (D, default
5 s), quiet hours off, no caps, min_inbound 1. The bench writes one inbound message
stamped now for each of P pairs, spread over a few seconds; each pair is due at
L + D (``due_ts`` of its request). ``followups.requested`` is set to LogAppendTime, so a
request's Kafka timestamp is when the broker appended it; latency = that - due_ts.

Run: ``.venv/bin/python -m bench.latency_bench --pairs 2000 --repeat 2``
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
    GroupWatch, add_stack_flags, bench_stack, fresh_prefix, result, 
)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def one_run(bootstrap: str, redis_url: str, work, args, index: int) -> list[float]:
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
                    min_inbound=1)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
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
            deadline = time.monotonic() + args.delay + args.spread + 60
            while len(latencies) < args.pairs and time.monotonic() < deadline:
                worker.check_alive()
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    for message in messages:
                        due = parse_ts(orjson.loads(message.value)["due_ts"])
                        latencies.append(message.timestamp - due)
        finally:
            await consumer.stop()
    if len(latencies) < args.pairs:
        print(f"  run {index}: only {len(latencies)} of {args.pairs} follow-ups arrived")
    return latencies


async def main_async(args: argparse.Namespace) -> None:
    print(f"{args.pairs} pairs, messages spread over {args.spread}s, D={args.delay}s, "
          f"{args.repeat} run(s); latency = append time - due time")
    p50s, p99s, maxes, everything = [], [], [], []
    with bench_stack(args) as (bootstrap, redis_url, work):
        for index in range(1, args.repeat + 1):
            url = redis_db_url(redis_url, 10 + index, flush=not args.redis_url)
            latencies = await one_run(bootstrap, url, work, args, index)
            if not latencies:
                raise SystemExit("no follow-up arrived")
            p50s.append(percentile(latencies, 0.5))
            p99s.append(percentile(latencies, 0.99))
            maxes.append(max(latencies))
            everything += latencies
            print(f"  run {index}: {len(latencies)} follow-ups, p50 {p50s[-1]:.0f} ms, p99 {p99s[-1]:.0f} ms, "
                  f"max {maxes[-1]:.0f} ms, min {min(latencies):.0f} ms", flush=True)
    print(f"\n{'run':<8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for index, (p50, p99, most) in enumerate(zip(p50s, p99s, maxes), start=1):
        print(f"{index:<8} {p50:>8.0f} {p99:>8.0f} {most:>8.0f}")
    result("latency_p50", statistics.median(p50s), "ms", runs="/".join(f"{v:.0f}" for v in p50s))
    result("latency_p99", statistics.median(p99s), "ms", runs="/".join(f"{v:.0f}" for v in p99s))
    result("latency_max", max(maxes), "ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=4.0, help="seconds over which the messages are sent")
    parser.add_argument("--delay", type=float, default=5.0, help="idle delay D in seconds")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    add_stack_flags(parser)
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
