"""The engine pipeline against its limits, side by side, on the same records.

N realistic canonical records (``devstack.traffic.generate``, event mode: the feeder's
``relance-clock`` header on each) go to a fresh ``messages`` topic with a fast producer,
then, per repetition:

- ``plain``: a plain aiokafka consumer (no group) reads and orjson-decodes them: the limit;
- ``core``: the pure ``DecisionCore`` on the same records in this process, no Kafka:
  parse only, feed only (pre-parsed), parse + feed, and that plus what the engine encodes
  per batch (decision and request JSON, ``changelog_value`` of the users changed in the
  batch, each partition's meta), batches of 5000 records;
- ``engine xK``: K ``relance worker --role engine`` processes (event mode) in a fresh
  consumer group with a fresh changelog, waiting on an empty topic until the group is
  stable with all K; then every record is produced at once (prebuilt batches) and the run
  is timed from the first record produced to the last offset committed, tail included.
  A run whose workers did not count every message event fails instead of printing a rate.

Run: ``.venv/bin/python -m bench.pipeline_bench --events 200000 --repeat 2 --workers 1,2``
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

import orjson

from devstack.localstack import redis_db_url
from devstack.processes import WorkerProcess, running
from bench.common import (
    CpuUse, GroupWatch, add_stack_flags, bench_stack, canonical_lines, feeder_items, fresh_prefix, from_tree, metric_total,
    plain_consume, result, spread, timed_run,
)

RULES = {"clock": "event", "quiet_hours": "22:00-08:00", "user_cap_day": 1, "user_cap_week": 3,
         "unknown_age": "allow"}


CORE_MEASURES = ("parse", "feed", "parse+feed", "parse+feed+encode", "native parse+feed", "native parse+feed+encode")


# -- the pure core -------------------------------------------------------------------------

def core_rates(lines: list[bytes], partitions: int) -> dict[str, float]:
    """Events/s of our own per-event code, in this process, no Kafka, no Faust."""
    from streams.outbox import partition_for
    from domain.native import NativeDecisionCore
    from domain.rules import DecisionCore
    from bench.core_instructions import encode_drained
    from foundation.settings import Settings
    from schemas.records import decode_record

    settings = Settings.from_mapping(RULES)
    items = feeder_items(lines, partitions)
    keyed = [(key, value, headers, partition if partition is not None else partition_for(key, partitions))
             for key, value, headers, partition in items]
    n = len(keyed)
    rates = {}

    started = time.perf_counter()
    parsed = [decode_record(value) if value else None for _, value, _, _ in keyed]
    rates["parse"] = n / (time.perf_counter() - started)

    def run(make_core, parse: bool, encode: bool, batch: int = 5000) -> float:
        # As the engine does: records fed one by one (each value read by the core's
        # feed_encoded, or pre-parsed records when ``parse`` is off), outputs drained per
        # batch (decisions encoded as they are drained), dirty users and each partition's
        # meta encoded once per batch (a flush).
        cores = {p: make_core(settings) for p in range(partitions)}
        started = time.perf_counter()
        for first in range(0, n, batch):
            for (key, value, headers, partition), record in zip(keyed[first:first + batch], parsed[first:first + batch]):
                core, clock = cores[partition], int(headers[0][1])
                if not value:
                    core.advance(clock, inclusive=False)
                elif parse:
                    core.feed_encoded(value, clock, None)
                else:
                    core.advance(clock, inclusive=False)
                    core.feed(record, None)
            for core in cores.values():
                if not encode:
                    core.drain()
                    continue
                # As the engine drains: decisions encoded by the core (by Python for DecisionCore).
                requests, _decisions, _erased, dirty = core.drain_encoded()
                encode_drained(core, requests, (), dirty, core.changelog_value)
        return n / (time.perf_counter() - started)

    rates["feed"] = run(DecisionCore, parse=False, encode=False)
    rates["parse+feed"] = run(DecisionCore, parse=True, encode=False)
    rates["parse+feed+encode"] = run(DecisionCore, parse=True, encode=True)
    rates["native parse+feed"] = run(NativeDecisionCore, parse=True, encode=False)
    rates["native parse+feed+encode"] = run(NativeDecisionCore, parse=True, encode=True)
    return rates


# -- through Kafka -------------------------------------------------------------------------

async def engine_run(bootstrap: str, redis_url: str, work, items, workers: int, partitions: int,
                     timeout: float, pythonpath=None) -> tuple[str, int, float, float | None, str]:
    """K engine workers in a fresh consumer group, waiting on an empty ``messages`` of a
    fresh prefix until the group is stable with all K; then every record produced at once
    and the run timed to the last offset committed (``timed_run``). Fails unless the
    workers' own ``relance_events_in_total`` counted every message event."""
    from streams.admin import acreate_topics
    from streams.topics import CATALOG, MESSAGES, topic_name
    prefix = fresh_prefix("pipe")
    await acreate_topics(bootstrap, CATALOG, prefix, partitions)
    topic = topic_name(MESSAGES, prefix)
    app_id = f"engine-{uuid.uuid4().hex[:6]}"
    settings = dict(RULES, broker=bootstrap, redis_url=redis_url, topic_prefix=prefix, partitions=partitions,
                    app_id=app_id, data_dir=work / f"data-{app_id}")
    procs = [WorkerProcess(work, ["engine"], pythonpath=pythonpath, **settings) for _ in range(workers)]
    for index, proc in enumerate(procs):
        proc.env["RELANCE_DATA_DIR"] = str(work / f"data-{app_id}-{index}")
    events = sum(1 for _, value, _, _ in items if value and "type" not in orjson.loads(value))
    with running(procs):
        async with GroupWatch(bootstrap, f"{prefix}{app_id}.engine", {topic: partitions}) as watch:
            await watch.wait_stable(workers, 120, procs)
            records = [(topic, key, value, headers, partition) for key, value, headers, partition in items]
            cpu = CpuUse([proc.pid for proc in procs])
            seconds, worked = await timed_run(bootstrap, records, watch, procs, timeout,
                                              counter=("relance_events_in_total", events), cpu=cpu)
            worker_cores, machine_cores = cpu.used
            counted = await metric_total(procs, "relance_events_in_total")
            # What exactly once cost: checkpoints (transactions) and state written (trees
            # before these metrics report none).
            checkpoints = await metric_total(procs, "relance_checkpoint_seconds_count")
            state_mb = await metric_total(procs, "relance_state_written_bytes_total") / 1e6
    if counted < events:
        raise RuntimeError(f"engine x{workers}: the workers counted {counted:,.0f} of {events:,} message events; "
                           "the run did not measure the whole topic")
    return topic, len(items), seconds, worked, (f"{checkpoints:.0f} checkpoints, {state_mb:.0f} MB of state; "
                                                f"cores used: workers {worker_cores:.2f}, "
                                                f"machine {machine_cores:.2f} of {os.cpu_count()}")


async def main_async(args: argparse.Namespace) -> None:
    users = max(4, args.events // 98)  # about 98 records per user over 14 days
    lines = canonical_lines(users, 14.0, args.seed, limit=args.events)
    worker_counts = [int(k) for k in args.workers.split(",") if k]
    print(f"{len(lines)} records ({users} users, 14 days, seed {args.seed}), {args.partitions} partitions, "
          f"{args.repeat} repetition(s)")

    core = [core_rates(lines, args.partitions) for _ in range(args.repeat)]
    plain: list[float] = []
    # (workers, source): source None is this tree; --before runs another tree beside it.
    sources = [None] + ([args.before] if args.before else [])
    engine: dict[tuple[int, str | None], list[float]] = {(k, source): [] for k in worker_counts for source in sources}
    with bench_stack(args) as (bootstrap, redis_url, work):
        own_redis = not args.redis_url
        run = 0
        items = feeder_items(lines, args.partitions)
        for repetition in range(args.repeat):
            topic = None
            for k in worker_counts:
                for source in sources:  # alternating, so both see the same machine
                    run += 1
                    url = redis_db_url(redis_url, run, flush=own_redis)
                    topic, records, seconds, worked, cost = await engine_run(bootstrap, url, work, items, k, args.partitions,
                                                                       args.timeout, pythonpath=source)
                    engine[k, source].append(records / seconds)
                    print(f"  rep {repetition + 1}: engine x{k}{from_tree(source)}: {records:,} records committed in "
                          f"{seconds:.2f}s ({records / seconds:,.0f}/s); every event counted at {worked or 0:.2f}s, "
                          f"the tail {seconds - (worked or 0):.2f}s; {cost}", flush=True)
            count, seconds = await plain_consume(bootstrap, topic, args.partitions, len(items))
            plain.append(count / seconds)
            print(f"  rep {repetition + 1}: plain consumer {count:,} in {seconds:.2f}s ({count / seconds:,.0f}/s)",
                  flush=True)

    print()
    limit = statistics.median(plain)  # the baseline of every ratio recorded
    print(f"{'what':<40} {'events/s median (min-max)':>30} {'vs plain':>9}")
    rows = [("plain aiokafka consumer + orjson", plain)]
    for name in CORE_MEASURES:
        rows.append((f"core in-process: {name}", [c[name] for c in core]))
    for k in worker_counts:
        for source in sources:
            rows.append((f"engine worker x{k}{from_tree(source)}", engine[k, source]))
    for name, values in rows:
        median = sorted(values)[len(values) // 2]
        print(f"{name:<40} {spread(values):>30} {median / limit:>8.3f}x")
    result("plain_consumer", statistics.median(plain), "events/s", spread=spread(plain).replace(" ", ""))
    for name in CORE_MEASURES:
        values = [c[name] for c in core]
        result(f"core_{name.replace('+', '_').replace(' ', '_')}", statistics.median(values), "events/s", spread=spread(values).replace(" ", ""))
    for k in worker_counts:
        rates = engine[k, None]
        result(f"engine_x{k}", statistics.median(rates), "events/s", spread=spread(rates).replace(" ", ""),
               ratio_plain=f"{statistics.median(rates) / statistics.median(plain):.4f}")
        if args.before:
            before = engine[k, args.before]
            result(f"engine_x{k}_before", statistics.median(before), "events/s", spread=spread(before).replace(" ", ""),
                   ratio_plain=f"{statistics.median(before) / statistics.median(plain):.4f}")
            result(f"engine_x{k}_over_before", statistics.median(rates) / statistics.median(before), "ratio")
    if 1 in worker_counts and 2 in worker_counts:
        result("engine_x2_over_x1", statistics.median(engine[2, None]) / statistics.median(engine[1, None]), "ratio")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="records on messages (default 200000)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2, help="repetitions; the spread is shown")
    parser.add_argument("--workers", default="1,2", help="engine worker counts to run, comma-separated")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed for one engine run")
    parser.add_argument("--before", metavar="TREE", help="also run the engine from this copy of the code (a git "
                        "worktree of an earlier commit), alternating with this one, and print the ratio")
    add_stack_flags(parser)
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
