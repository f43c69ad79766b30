"""Decision latency in wall mode, under load: from a pair's due time to its request on Kafka.

One ``relance worker --role engine`` in wall mode with a short idle delay (D, default
5 s), quiet hours off, no caps, min_inbound 1. While a load of realistic message events
(the simulator's, stamped now as they are sent) runs at ``--load-rate`` records a second
(``run_all`` passes half the engine's measured maximum), the bench writes one inbound
message stamped now for each of P probe pairs, spread over a few seconds; each probe is
due at L + D (``due_ts`` of its request). ``followups.requested`` is set to
LogAppendTime, so a request's Kafka timestamp is when the broker appended it; latency =
that - due_ts; requests are read as every stage reads them (``read_committed``), so one
whose transaction never committed is missing. The wait from append to commit is not in
the figure (the engine commits at once when a batch decided a request; README "Exactly
once: the measurement" gives it). A probe whose follow-up has not arrived 30 s after the
last one was due counts as a failure: its latency is infinite, and the percentiles include it.

Run: ``.venv/bin/python -m bench.latency_bench --pairs 2000 --repeat 3 --load-rate 20000``
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
    GroupWatch, add_stack_flags, bench_stack, canonical_lines, fresh_prefix, metric_total, result, spread,
)

MISSING = float("inf")  # the latency of a follow-up that never arrived


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def load_bodies(records: int, seed: int) -> list[dict]:
    """The simulator's message events (no controls: a kill switch would stop the probes),
    as dicts whose ``ts`` and ``event_id`` the load rewrites as it sends them."""
    lines = canonical_lines(max(4, records // 98), 14.0, seed, limit=records)
    return [body for body in map(orjson.loads, lines) if "type" not in body]


async def produce_load(bootstrap: str, topic: str, bodies: list[dict], rate: float, stop: asyncio.Event) -> tuple[int, float]:
    """Send ``bodies`` round and round at ``rate`` a second, each stamped now (and made a new
    message on every round) until ``stop``; (records sent, seconds)."""
    from aiokafka import AIOKafkaProducer
    from schemas.records import format_ts
    from streams.outbox import Outbox
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=512 * 1024, acks=1)
    await producer.start()
    sent, started = 0, time.perf_counter()
    try:
        outbox = Outbox(producer)
        await outbox.know(topic)
        while not stop.is_set():
            owed = int((time.perf_counter() - started) * rate) - sent
            ts = format_ts(time.time_ns() // 1_000_000)
            for n in range(sent, sent + owed):
                body = dict(bodies[n % len(bodies)], ts=ts)
                if n >= len(bodies):
                    body["event_id"] = f"{body['event_id']}.{n // len(bodies)}"
                outbox.add(topic, orjson.dumps(body), key=body["user_id"].encode())
            sent += max(owed, 0)
            await outbox.send()
            await asyncio.sleep(0.01)
        await outbox.flush()
    finally:
        await producer.stop()
    return sent, time.perf_counter() - started


async def one_run(bootstrap: str, redis_url: str, work, args, index: int, bodies: list[dict]) -> tuple[list[float], float]:
    """The probes' latencies (``MISSING`` for each that never arrived), and the load's rate
    as the worker counted it."""
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
    # read_committed, as every stage reads: a request counts once its transaction committed.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                isolation_level="read_committed")
    with running([worker]):
        async with GroupWatch(bootstrap, f"{prefix}{app_id}.engine", {topic_name(MESSAGES, prefix): args.partitions}) as watch:
            await watch.wait_stable(1, 120, [worker])
        stop_load = asyncio.Event()
        load = asyncio.ensure_future(produce_load(bootstrap, topic_name(MESSAGES, prefix), bodies, args.load_rate,
                                                  stop_load)) if args.load_rate else None
        await asyncio.sleep(1.0)  # the load running before the first probe
        counted_before = await metric_total([worker], "relance_events_in_total")
        load_started = time.perf_counter()
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
            deadline = time.monotonic() + args.delay + 30  # after the last probe was sent
            while len(latencies) < args.pairs and time.monotonic() < deadline:
                worker.check_alive()
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    for message in messages:
                        request = orjson.loads(message.value)
                        if request["user_id"].startswith("lat"):  # a probe, not a pair of the load
                            latencies.append(message.timestamp - parse_ts(request["due_ts"]))
        finally:
            await consumer.stop()
            load_rate = (await metric_total([worker], "relance_events_in_total") - counted_before) / (
                time.perf_counter() - load_started)
            # What a probe's request waits for after its decision: the checkpoint's transaction.
            checkpoints = await metric_total([worker], "relance_checkpoint_seconds_count")
            slow = checkpoints - await metric_total([worker], "relance_checkpoint_seconds_bucket", le="0.5")
            print(f"  run {index}: {checkpoints:.0f} checkpoints, mean "
                  f"{await metric_total([worker], 'relance_checkpoint_seconds_sum') / max(checkpoints, 1):.3f}s, "
                  f"{slow:.0f} over 0.5 s", flush=True)
            stop_load.set()
            if load is not None:
                await load
    if len(latencies) < args.pairs:
        print(f"  run {index}: only {len(latencies)} of {args.pairs} follow-ups arrived; each missing one counts "
              "as a failure")
    return latencies + [MISSING] * (args.pairs - len(latencies)), load_rate


async def main_async(args: argparse.Namespace) -> None:
    bodies = load_bodies(args.load_records, args.seed) if args.load_rate else []
    print(f"{args.pairs} probe pairs, messages spread over {args.spread}s, D={args.delay}s, load "
          f"{args.load_rate:,.0f} records/s, {args.repeat} run(s); latency = append time - due time")
    p50s, p99s, maxes, missing, loads = [], [], [], [], []
    with bench_stack(args) as (bootstrap, redis_url, work):
        for index in range(1, args.repeat + 1):
            url = redis_db_url(redis_url, 10 + index, flush=not args.redis_url)
            latencies, load_rate = await one_run(bootstrap, url, work, args, index, bodies)
            p50s.append(percentile(latencies, 0.5))
            p99s.append(percentile(latencies, 0.99))
            maxes.append(max(latencies))
            missing.append(latencies.count(MISSING))
            loads.append(load_rate)
            print(f"  run {index}: {args.pairs - missing[-1]} of {args.pairs} follow-ups, p50 {p50s[-1]:.0f} ms, "
                  f"p99 {p99s[-1]:.0f} ms, max {maxes[-1]:.0f} ms; the worker took {load_rate:,.0f} events/s",
                  flush=True)
    print(f"\n{'run':<8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'missing':>8} {'events/s':>9}")
    for index, row in enumerate(zip(p50s, p99s, maxes, missing, loads), start=1):
        print(f"{index:<8} {row[0]:>8.0f} {row[1]:>8.0f} {row[2]:>8.0f} {row[3]:>8} {row[4]:>9,.0f}")
    result("latency_p50", statistics.median(p50s), "ms", runs="/".join(f"{v:.0f}" for v in p50s))
    result("latency_p99", statistics.median(p99s), "ms", runs="/".join(f"{v:.0f}" for v in p99s))
    result("latency_max", max(maxes), "ms")
    result("latency_missing", sum(missing), "followups", runs="/".join(map(str, missing)))
    result("latency_load_rate", statistics.median(loads), "events/s", spread=spread(loads).replace(" ", ""),
           asked=f"{args.load_rate:.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=4.0, help="seconds over which the messages are sent")
    parser.add_argument("--delay", type=float, default=5.0, help="idle delay D in seconds")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--load-rate", type=float, default=0,
                        help="realistic records a second sent beside the probes (run_all: half the engine's maximum)")
    parser.add_argument("--load-records", type=int, default=300_000, help="distinct records the load cycles through")
    parser.add_argument("--seed", type=int, default=1)
    add_stack_flags(parser)
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
