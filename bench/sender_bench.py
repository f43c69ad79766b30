"""Sends a second of one sender process, against the fake Graph API, beside the fake's own limit.

One ``relance worker --role sender``; the bench plays the generator: it writes N delivery
records (ledger ``generated``, then the record on ``delivery.whatsapp``) spread over several
WhatsApp numbers of bots whose tokens are files, and the fake Graph API
(``devstack/fake_graph.py``) counts what it accepts. Two phases, each with a fresh worker:

- ``limit``: the fake keeps the platforms' own limit, 80 messages a second per number,
  and the sender its default rates: it should send at that limit, never over it;
- ``unlimited``: both limits lifted, so the sender's own ceiling shows.

Rates are measured at the fake, from its first accepted message to its last. The bench
fails if the fake accepted fewer messages than were written, or any follow-up twice.

Run: ``.venv/bin/python -m bench.sender_bench --records 4000 --numbers 4``
"""
from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from bench.common import add_stack_flags, bench_stack, fresh_prefix, result
from devstack.fake_graph import FakeGraph, accounts_from_registry
from devstack.localstack import redis_db_url
from devstack.processes import WorkerProcess, running
from schemas.registry import BotRegistry

PLATFORM_LIMIT = 80   # WhatsApp Cloud API, per business number (spec section 9)
UNLIMITED = 1_000_000


def registry(work: Path, numbers: int) -> Path:
    """One bot per WhatsApp number, its token in a file."""
    token = work / "wa-token"
    token.write_text("EAAG-bench\n")
    path = work / "bench-bots.toml"
    path.write_text("".join(
        f'[[bot]]\nid = "bench-{n}"\nname = "Bench {n}"\npersona = "A bench bot."\nlanguage = "en"\n'
        f'whatsapp = ["10654035224{n:04d}"]\ntokens = {{ whatsapp = "file:{token}" }}\n\n' for n in range(numbers)))
    return path


async def write_deliveries(bootstrap: str, redis_url: str, prefix: str, records: int, numbers: int) -> None:
    import redis.asyncio as aioredis
    from aiokafka import AIOKafkaProducer

    from domain.delivery import delivery_record
    from domain.honesty import finalize
    from foundation.clock import wall_ms
    from schemas.records import FollowupRequest
    from streams.ledger import ledger_key
    from streams.topics import DELIVERY_WHATSAPP, topic_name

    now = wall_ms()
    text = finalize("Two more film scores for you?", "en")
    deliveries = [delivery_record(FollowupRequest(f"bench-{n:07d}", f"1650555{n:07d}", f"bench-{n % numbers}", "whatsapp",
                                                  now - 60_000, now - 3_600_000, 5), text, now) for n in range(records)]
    redis = aioredis.Redis.from_url(redis_url)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for delivery in deliveries:
                pipe.hset(ledger_key(delivery.user_id), delivery.followup_id, "generated")
            await pipe.execute()
        topic = topic_name(DELIVERY_WHATSAPP, prefix)
        for delivery in deliveries:
            await producer.send(topic, delivery.to_json(), key=delivery.user_id.encode())
        await producer.flush()
    finally:
        await producer.stop()
        await redis.aclose()


async def one_phase(name: str, bootstrap: str, redis_url: str, work: Path, args, limit: int) -> tuple[float, FakeGraph]:
    from streams.admin import acreate_topics
    from streams.topics import CATALOG

    prefix = fresh_prefix(f"send-{name}")
    await acreate_topics(bootstrap, CATALOG, prefix, args.partitions)
    # Written before the worker starts: the fake runs on this process's event loop and
    # timestamps a request when the loop reaches it, so writing while the sender sends
    # would bunch the fake's own seconds (a loaded run once counted 94 in one).
    await write_deliveries(bootstrap, redis_url, prefix, args.records, args.numbers)
    bots = registry(work, args.numbers)
    fake = FakeGraph(accounts_from_registry(BotRegistry.load(bots)), limits={"whatsapp": limit})
    await fake.start()
    worker = WorkerProcess(work, ["sender"], clock="wall", broker=bootstrap, redis_url=redis_url, topic_prefix=prefix,
                           partitions=args.partitions, app_id=f"{prefix}bench", data_dir=work / f"data-{prefix}",
                           registry=bots, graph_base_url=fake.base_url, whatsapp_send_rate=limit,
                           send_concurrency=args.concurrency, send_rate_slack=args.rate_slack)
    try:
        with running([worker]):
            await asyncio.get_running_loop().run_in_executor(None, worker.wait_ready, 120)
            deadline = time.monotonic() + args.records / (limit * args.numbers) + 120
            while sum(fake.accepted.values()) < args.records and time.monotonic() < deadline:
                worker.check_alive()
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # anything sent twice would show now
    finally:
        await fake.stop()
    accepted = sum(fake.accepted.values())
    twice = [fid for fid, sends in fake.accepted.items() if sends > 1]
    if accepted < args.records or twice:
        raise SystemExit(f"{name}: the fake accepted {accepted} of {args.records} follow-ups, {len(twice)} twice")
    return fake.accepted_per_second(), fake


async def main_async(args: argparse.Namespace) -> None:
    print(f"{args.records} follow-ups over {args.numbers} WhatsApp numbers, one sender worker "
          f"(send_concurrency {args.concurrency}), measured at the fake Graph API")
    with bench_stack(args) as (bootstrap, redis_url, work):
        rows = []
        for index, (name, limit) in enumerate((("limit", PLATFORM_LIMIT), ("unlimited", UNLIMITED)), start=1):
            url = redis_db_url(redis_url, 12 + index, flush=not args.redis_url)
            rate, fake = await one_phase(name, bootstrap, url, work, args, limit)
            busiest = max(fake.per_second.values())
            ceiling = limit * args.numbers
            rows.append((name, rate, ceiling, busiest, limit))
            print(f"  {name}: {rate:,.0f} sends/s; the fake's limit {ceiling:,} /s "
                  f"({limit if limit < UNLIMITED else 'none'} per number); busiest number-second {busiest}", flush=True)
            if limit < UNLIMITED and busiest > limit:
                raise SystemExit(f"{name}: a number got {busiest} requests in one second, over its {limit}")
    print(f"\n{'phase':<10} {'sends/s':>10} {'fake limit/s':>13} {'busiest number-second':>22}")
    for name, rate, ceiling, busiest, limit in rows:
        shown = f"{ceiling:,}" if limit < UNLIMITED else "none"
        print(f"{name:<10} {rate:>10,.0f} {shown:>13} {busiest:>22}")
    result("sender_sends_at_limit", rows[0][1], "sends/s", limit=rows[0][2], busiest_second=rows[0][3])
    result("sender_limit", rows[0][2], "sends/s")
    result("sender_busiest_number_second", rows[0][3], "sends", limit=PLATFORM_LIMIT)
    result("sender_sends_unlimited", rows[1][1], "sends/s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--numbers", type=int, default=4, help="WhatsApp numbers the follow-ups leave from")
    parser.add_argument("--concurrency", type=int, default=64, help="the sender's send_concurrency")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rate-slack", default="100ms",
                        help="the sender's send_rate_slack: half for the steps between a slot and its call "
                             "(an older slot is taken again), half for the request's way to the platform")
    add_stack_flags(parser)
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
