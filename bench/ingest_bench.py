"""The ingest pipeline: native webhooks on raw.<app> through ``relance worker --role ingest``.

Canonical messages from ``devstack.traffic.generate`` become each platform's webhook
(``webhook_of``, receiving ids from deploy/bots.toml, as ``relance simulate --format
webhooks`` posts them). One ingest worker (its batch loop, group
``<prefix><app_id>.ingest``) waits in a fresh group on empty raw topics; then every
webhook is produced at once and the run is timed to the last offset committed, tail
included; a run whose worker did not count every webhook fails. Events/s are the
canonical events it wrote to ``messages`` over the same time (WhatsApp has no webhook for
a bot's reply, only a status receipt, which is dropped).
A plain aiokafka consumer reading and decoding the same raw topics gives the limit.
``--before TREE`` also runs the worker from another copy of the code (a git worktree of
an earlier commit), alternating with this one on the same stack, for a before/after.

Run: ``.venv/bin/python -m bench.ingest_bench --webhooks 50000 --repeat 2``
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
    ROOT, GroupWatch, add_stack_flags, bench_stack, fresh_prefix, from_tree, metric_total, result, spread, timed_run,
)


def webhooks(count: int, seed: int) -> list[tuple[str, bytes]]:
    from devstack.traffic import TrafficShape, bot_accounts, generate, webhook_of
    from schemas.registry import BotRegistry
    accounts = bot_accounts(BotRegistry.load(ROOT / "deploy" / "bots.toml"))
    users = max(4, count // 90)
    out = []
    for record in generate(TrafficShape(users=users, days=14.0, controls=False), seed=seed):
        if "type" in record:
            continue
        posted = webhook_of(record, accounts)
        if posted is not None:
            out.append((posted[0], orjson.dumps(posted[1])))
        if len(out) >= count:
            break
    return out


def in_process(documents: list[tuple[str, bytes]], repeat: int = 3) -> dict[str, float]:
    """CPU microseconds per webhook of the ingest stage's own work on these documents, in
    this process (``normalize_bench``'s measures): the general path (``normalize_webhook``,
    then ``to_json`` per event, as before the compiled path) and ``normalize_encoded``."""
    from bench.normalize_bench import make_encoded, make_normalize, time_best
    from schemas.registry import BotRegistry
    registry = BotRegistry.load(ROOT / "deploy" / "bots.toml")
    by_app: dict[str, list[bytes]] = {}
    for app, data in documents:
        by_app.setdefault(app, []).append(data)
    measures = {"normalize_webhook + to_json": lambda app: make_normalize(app, registry, serialize=True),
                "normalize_encoded": lambda app: make_encoded(app, registry)}
    return {name: sum(time_best(make(app), docs, repeat, timer=time.process_time) for app, docs in by_app.items())
            * 1e6 / len(documents) for name, make in measures.items()}


async def plain_raw(bootstrap: str, topics: list[str], expected: int) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=32 * 1024 * 1024)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(t, 0) for t in topics])
        await consumer.seek_to_beginning()
        count, started = 0, None
        while count < expected:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            started = started or time.perf_counter()
            for messages in batches.values():
                for message in messages:
                    orjson.loads(message.value)
                    count += 1
        return count / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def one_run(bootstrap: str, redis_url: str, work, documents, partitions: int, timeout: float,
                  pythonpath: str | None = None, plain: bool = True):
    from streams.admin import acreate_topics
    from streams.topics import CATALOG, MESSAGES, RAW_BY_APP, topic_name
    prefix = fresh_prefix("ing")
    await acreate_topics(bootstrap, CATALOG, prefix, partitions)
    app_id = f"ingest-{uuid.uuid4().hex[:6]}"
    raw = {topic_name(spec, prefix): 1 for spec in RAW_BY_APP.values()}
    worker = WorkerProcess(work, ["ingest"], pythonpath=pythonpath, broker=bootstrap, redis_url=redis_url, topic_prefix=prefix,
                    partitions=partitions, app_id=app_id, data_dir=work / f"data-{app_id}")
    with running([worker]):
        async with GroupWatch(bootstrap, prefix + app_id + ".ingest", raw) as watch, \
                GroupWatch(bootstrap, prefix + app_id, {topic_name(MESSAGES, prefix): partitions}) as out:
            await watch.wait_stable(1, 120, [worker])
            items = [(topic_name(RAW_BY_APP[app], prefix), None, body, None, 0) for app, body in documents]
            seconds, _ = await timed_run(bootstrap, items, watch, [worker], timeout)
            counted = await metric_total([worker], "relance_webhooks_in_total")
            events = await out.ends()  # committed only after its events were acknowledged
    if counted < len(documents):
        raise RuntimeError(f"the ingest worker counted {counted:,.0f} of {len(documents):,} webhooks; "
                           "the run did not measure the whole topic")
    limit = await plain_raw(bootstrap, list(raw), len(documents)) if plain else None
    return len(documents) / seconds, events / seconds, limit


async def main_async(args: argparse.Namespace) -> None:
    documents = webhooks(args.webhooks, args.seed)
    by_app = {app: sum(1 for a, _ in documents if a == app) for app in ("whatsapp", "facebook", "instagram")}
    print(f"{len(documents)} webhooks ({', '.join(f'{a} {n}' for a, n in by_app.items())}), "
          f"{args.repeat} run(s), one ingest worker")
    for name, micros in in_process(documents).items():
        print(f"  in-process, CPU per webhook: {name} {micros:.2f} us", flush=True)
        result(f"ingest_cpu_{name.split()[0]}", micros, "us/webhook")
    sources = [None] + ([args.before] if args.before else [])  # None: this tree
    rates = {source: [] for source in sources}
    event_rates = {source: [] for source in sources}
    limits = []
    with bench_stack(args) as (bootstrap, redis_url, work):
        run = 0
        for index in range(1, args.repeat + 1):
            for source in sources:  # alternating, so both see the same machine
                run += 1
                url = redis_db_url(redis_url, 5 + run % 10, flush=not args.redis_url)
                rate, event_rate, limit = await one_run(bootstrap, url, work, documents, args.partitions, args.timeout,
                                                        pythonpath=source, plain=source is None)
                rates[source].append(rate)
                event_rates[source].append(event_rate)
                plain = ""
                if limit is not None:
                    limits.append(limit)
                    plain = f"; plain consumer {limit:,.0f}/s"
                print(f"  run {index}{from_tree(source)}: {rate:,.0f} webhooks/s, {event_rate:,.0f} events/s{plain}",
                      flush=True)
    print(f"\n{'what':<40} {'per second median (min-max)':>30} {'vs plain':>9}")
    rows = [("plain aiokafka consumer, raw webhooks", limits)]
    for source in sources:
        rows += [(f"ingest worker: webhooks{from_tree(source)}", rates[source]),
                 (f"ingest worker: canonical events out{from_tree(source)}", event_rates[source])]
    for name, values in rows:
        print(f"{name:<40} {spread(values):>30} {statistics.median(values) / statistics.median(limits):>8.3f}x")
    result("ingest_plain_consumer", statistics.median(limits), "webhooks/s", spread=spread(limits).replace(" ", ""))
    for source in sources:
        suffix = "_before" if source else ""
        result(f"ingest_webhooks{suffix}", statistics.median(rates[source]), "webhooks/s",
               spread=spread(rates[source]).replace(" ", ""))
        result(f"ingest_events{suffix}", statistics.median(event_rates[source]), "events/s",
               spread=spread(event_rates[source]).replace(" ", ""))
    if args.before:
        result("ingest_events_over_before",
               statistics.median(event_rates[None]) / statistics.median(event_rates[args.before]), "ratio")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webhooks", type=int, default=50_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--before", metavar="TREE", help="also run the ingest worker from this copy of the code "
                        "(a git worktree of an earlier commit), alternating with this one, and print the ratio")
    add_stack_flags(parser)
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
