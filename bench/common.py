"""What the Kafka benchmarks share: a stack they own, fast producing, group offsets, RSS.

Every benchmark starts its own Kafka and Redis (``LocalStack`` on free ports in a temp
folder) unless ``--bootstrap`` and ``--redis-url`` name running ones, and stops what it
started, by pid, on success, on errors and on Ctrl-C or SIGTERM. Worker processes it
starts are stopped the same way (their process group, by pid).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

from devstack.processes import WorkerProcess
import orjson

ROOT = Path(__file__).resolve().parent.parent
RELANCE = str(Path(sys.executable).with_name("relance"))


# -- the stack ---------------------------------------------------------------------------

def add_stack_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", help="use this running Kafka (host:port) instead of starting one")
    parser.add_argument("--redis-url", help="use this running Redis instead of starting one")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temp folder (logs) at the end")


def _raise_on_sigterm() -> None:
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def bench_stack(args: argparse.Namespace) -> Iterator[tuple[str, str, Path]]:
    """(bootstrap, redis_url, work dir): ours, stopped at the end, unless given."""
    _raise_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="relance-bench-"))
    stack = None
    try:
        bootstrap, redis_url = args.bootstrap, args.redis_url
        if not bootstrap or not redis_url:
            from devstack.localstack import LocalStack, free_port
            stack = LocalStack(work / "stack", kafka_port=free_port(), redis_port=free_port(),
                               controller_port=free_port())
            stack.start()
            bootstrap = bootstrap or stack.bootstrap
            redis_url = redis_url or stack.redis_url
        yield bootstrap, redis_url, work
    finally:
        if stack is not None:
            stack.stop()
        if args.keep_dir:
            print(f"# kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def fresh_prefix(tag: str) -> str:
    return f"bench-{tag}-{uuid.uuid4().hex[:8]}-"


# -- workers -----------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    """Resident set size of one process, in MB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS   # utime + stime


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat; idle and iowait
    are not busy)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / CLOCK_TICKS, sum(values) / CLOCK_TICKS


class CpuUse:
    """Cores used between ``start`` and ``stop``: by some processes and by the whole
    machine, to say what a run was short of: two workers cannot take 2 cores while the
    broker needs some of them."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def start(self) -> None:
        self._began = (time.monotonic(), self._processes(), machine_busy()[0])

    def stop(self) -> tuple[float, float]:
        """(cores used by the processes, cores used by the machine) on average, kept in ``used``."""
        began, processes, machine = self._began
        seconds = time.monotonic() - began
        self.used = (self._processes() - processes) / seconds, (machine_busy()[0] - machine) / seconds
        return self.used

    def _processes(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)


# -- Kafka -------------------------------------------------------------------------------

async def plain_consume(bootstrap: str, topic: str, partitions: int, expected: int) -> tuple[int, float]:
    """A plain aiokafka consumer, no group: read and orjson-decode ``expected`` records."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=4 * 1024 * 1024,
                                fetch_max_bytes=16 * 1024 * 1024, isolation_level="read_committed")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        loads = orjson.loads
        count = 0
        apps: dict = {}
        started = None
        deadline = time.monotonic() + 300
        while count < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            if started is None and batches:
                started = time.perf_counter()
            for messages in batches.values():
                for message in messages:
                    if message.value:
                        record = loads(message.value)
                        app = record.get("app")
                        apps[app] = apps.get(app, 0) + 1
                    count += 1
        return count, time.perf_counter() - (started or time.perf_counter())
    finally:
        await consumer.stop()


class GroupWatch:
    """Committed offsets of a consumer group against the end offsets of its topics."""

    def __init__(self, bootstrap: str, group: str, topics: dict[str, int]) -> None:
        self.bootstrap, self.group, self.topics = bootstrap, group, topics
        self.admin = self.consumer = None

    async def __aenter__(self) -> "GroupWatch":
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await self.admin.start()
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.consumer.stop()
        await self.admin.close()

    def _tps(self):
        from aiokafka import TopicPartition
        return [TopicPartition(t, p) for t, n in self.topics.items() for p in range(n)]

    async def ends(self) -> int:
        ends = await self.consumer.end_offsets(self._tps())
        return sum(ends.values())

    async def committed(self) -> int | None:
        """Sum of committed offsets over the topics (None: nothing committed yet)."""
        offsets = await self.admin.list_consumer_group_offsets(self.group)
        tps = [tp for tp in self._tps() if tp in offsets]
        if not tps:
            return None
        return sum(offsets[tp].offset for tp in tps)

    async def members(self) -> tuple[str, int]:
        described = await self.admin.describe_consumer_groups([self.group])
        group = described[0]
        # aiokafka returns the raw response: groups -> (error, id, state, protocol_type, protocol, members)
        for entry in group.groups:
            return entry[2], len(entry[5])
        return "Unknown", 0

    async def wait_stable(self, members: int, timeout: float, workers: list[WorkerProcess]) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for worker in workers:
                worker.check_alive()
            with contextlib.suppress(Exception):
                state, count = await self.members()
                if state == "Stable" and count == members:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"group {self.group} not stable with {members} members after {timeout}s")
            await asyncio.sleep(0.25)

    async def wait_committed(self, end: int, timeout: float, workers: list[WorkerProcess], poll: float = 0.05) -> float:
        """Wait until the group has committed ``end`` offsets in all; the moment it saw them."""
        from aiokafka.errors import KafkaError
        deadline = time.monotonic() + timeout
        while True:
            for worker in workers:
                worker.check_alive()
            try:
                committed = await self.committed()
            except KafkaError:  # no coordinator yet (a group that never committed): none
                committed = None
            if committed is not None and committed >= end:
                return time.perf_counter()
            if time.monotonic() > deadline:
                raise RuntimeError(f"group {self.group}: {end - (committed or 0)} of {end} records not committed "
                                   f"after {timeout}s")
            await asyncio.sleep(poll)


async def timed_run(bootstrap: str, items, watch: GroupWatch, workers: list[WorkerProcess], timeout: float,
                    counter: tuple[str, float] | None = None,
                    cpu: CpuUse | None = None) -> tuple[float, float | None]:
    """Seconds from the moment every record can be read to the last offset committed: a
    whole run, the tail included, so no partial run can print a rate.

    The workers must be waiting on empty topics, their group stable, reading committed
    records only (as the stages do). ``items`` are (topic, key, value, headers, partition);
    the bench's producer writes them all in one transaction, and the clock starts when it
    commits it: every record becomes readable at once, nothing is read before the clock
    starts, and the bench's producer does not share the machine's cores with the workers
    during the timed run (until the sixth session it produced while they read: on two
    cores a second or two of the run).

    Returns the seconds to the last commit and, given ``counter`` (a metric of the workers
    and its final total), the seconds until their counter reached it: the work done, and
    the tail after it (the commit interval, the last checkpoint), polled every 0.2 s so
    that the polling costs the workers little."""
    from aiokafka import AIOKafkaProducer
    from streams.outbox import Outbox
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, max_batch_size=1024 * 1024,
                                max_request_size=4 * 1024 * 1024, request_timeout_ms=60_000,
                                transactional_id=f"bench-{uuid.uuid4().hex[:8]}", transaction_timeout_ms=300_000)
    await producer.start()
    try:
        outbox = Outbox(producer)
        await outbox.know(*{item[0] for item in items})
        for topic, key, value, headers, partition in items:
            outbox.add(topic, value, key, partition, headers)
        await producer.begin_transaction()
        await outbox.flush()
        if cpu is not None:  # over the timed run only, as the rate is
            cpu.start()
        # The commit's own round trip is inside the run: the clock starts before it.
        started = time.perf_counter()
        await producer.commit_transaction()
    finally:
        await producer.stop()
    counted = asyncio.ensure_future(_reached(workers, *counter)) if counter else None
    try:
        committed = await watch.wait_committed(len(items), timeout, workers)
        if cpu is not None:
            cpu.stop()
        # Commits follow the work: the counter is there already, if seen a poll later.
        worked = min(await asyncio.wait_for(counted, 10), committed) - started if counted else None
    finally:
        if counted is not None:
            counted.cancel()
    return committed - started, worked


async def _reached(workers: list[WorkerProcess], name: str, total: float, poll: float = 0.2) -> float:
    """The moment the workers' counter ``name`` summed to ``total``."""
    while await metric_total(workers, name) < total:
        await asyncio.sleep(poll)
    return time.perf_counter()


async def metric_sum(session, port: int, name: str, le: str | None = None) -> float:
    """A counter of one worker's /metrics, summed over its labels (a histogram's bucket:
    ``le``)."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    bucket = f'le="{le}"'
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and (line[len(name)] in " {") and (le is None or bucket in line))


async def metric_total(workers: list[WorkerProcess], name: str, le: str | None = None) -> float:
    """A counter summed over the workers' /metrics and their labels."""
    import aiohttp
    async with aiohttp.ClientSession() as session:
        return sum([await metric_sum(session, worker.web_port, name, le) for worker in workers])


# -- output ------------------------------------------------------------------------------

def spread(values: list[float]) -> str:
    """``median (min-max)`` of repeated measurements."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:,.0f}"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def from_tree(source: str | None) -> str:
    """How a run from another copy of the code (``--before TREE``) is named; this tree's has no name."""
    return "" if source is None else f" (from {source})"


def result(name: str, value: float, unit: str, **extra: object) -> None:
    """One machine-readable line for run_all: RESULT name value unit k=v..."""
    tail = " ".join(f"{k}={v}" for k, v in extra.items())
    print(f"RESULT {name} {value:.6g} {unit} {tail}".rstrip(), flush=True)


def canonical_lines(users: int, days: float, seed: int, limit: int | None = None) -> list[bytes]:
    """Realistic canonical records (messages, controls, ticks) as JSON lines, in arrival order."""
    from devstack.traffic import TrafficShape, generate
    records = generate(TrafficShape(users=users, days=days), seed=seed)
    if limit is not None:
        records = records[:limit]
    return [orjson.dumps(record) for record in records]


def feeder_items(lines: list[bytes], partitions: int) -> list[tuple[bytes | None, bytes, list, int | None]]:
    """The feeder's records (devstack/feeder.py), precomputed: (key, value, headers, partition)."""
    from schemas.records import Kill, MessageEvent, Tick, control_to_dict, loads, parse_record
    from streams.topics import CLOCK_HEADER
    clock = -1
    out = []
    for line in lines:
        record = parse_record(loads(line))
        if isinstance(record, (MessageEvent, Tick)):
            clock = max(clock, record.ts)
        headers = [(CLOCK_HEADER, str(clock).encode())]
        if isinstance(record, MessageEvent):
            out.append((record.user_id.encode(), record.to_json(), headers, None))
        elif isinstance(record, (Kill, Tick)):
            body = orjson.dumps(control_to_dict(record))
            out.extend((None, body, headers, p) for p in range(partitions))
        else:
            out.append((record.user_id.encode(), orjson.dumps(control_to_dict(record)), headers, None))
    out.extend((None, b"", [(CLOCK_HEADER, str(clock).encode())], p) for p in range(partitions))
    return out


async def produce_items(bootstrap: str, topic: str, items) -> tuple[int, float]:
    """Like ``produce`` for (key, value, headers, partition) tuples, from any iterable."""
    from aiokafka import AIOKafkaProducer
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024,
                                max_request_size=4 * 1024 * 1024, acks=1, request_timeout_ms=60_000)
    await producer.start()
    started = time.perf_counter()
    try:
        pending, sent = [], 0
        for key, value, headers, partition in items:
            pending.append(await producer.send(topic, value, key=key, headers=headers, partition=partition))
            sent += 1
            if len(pending) >= 50_000:
                await asyncio.gather(*pending)
                pending.clear()
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent, time.perf_counter() - started
