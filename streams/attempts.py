"""Every send-API call, kept by Kafka on ``followups.attempts``: what the sender asks when
Redis lost a follow-up's ledger field.

Before each call goes out, the sender writes a ``SendStarted`` record and waits for all
in-sync replicas to acknowledge it (spec section 9: a send that the platform may have
received is never repeated). The ledger's ``sending`` mark says the same, but a Redis
restarted empty forgets it; Kafka does not. So when the ledger finds a follow-up's field
lost (missing, and no erasure since), the sender asks here for the calls already made for
that follow-up: its user's partition read with ``read_committed`` from the beginning to
its end offset now. A wipe makes many such lookups at once, so each partition's read is
shared by the lookups of the next ``CACHE_S`` seconds, and the calls this process writes
meanwhile are added to it. What that leaves open is said in the README ("Redis restarted
without its data").
"""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from foundation.clock import wall_ms
from foundation.metrics import Metrics
from schemas.records import FollowupRequest, InvalidRecord, SendStarted, loads, parse_send_started
from streams.kafkaclient import KafkaSecurity
from streams.kafkaloop import read_partition

CACHE_S = 10.0  # a partition's read answers the lookups of this long: a wipe's burst reads it once
STAGE = "sender"


class AttemptLog:
    """Writes each call before it goes out; answers how many calls a follow-up had."""

    def __init__(self, bootstrap: str, topic: str, security: KafkaSecurity,
                 producer: Callable[[], Awaitable[AIOKafkaProducer]], metrics: Metrics) -> None:
        self.bootstrap, self.topic, self.security = bootstrap, topic, security
        self._producer = producer
        self.metrics = metrics
        # partition -> (when its read began, monotonic s; followup_id -> highest call; the read)
        self._reads: dict[int, tuple[float, dict[str, int], asyncio.Task]] = {}

    async def record(self, request: FollowupRequest, attempt: int) -> None:
        """Call ``attempt`` of the follow-up is about to go out: returns once Kafka has it."""
        producer = await self._producer()
        partition = await self._partition(producer, request.user_id)
        if partition in self._reads:  # this process's lookups see it at once
            calls = self._reads[partition][1]
            calls[request.followup_id] = max(calls.get(request.followup_id, 0), attempt)
        started = SendStarted(request.followup_id, request.user_id, request.app, attempt, wall_ms())
        await producer.send_and_wait(self.topic, started.to_json(), key=request.user_id.encode(), partition=partition)

    async def calls_made(self, request: FollowupRequest) -> int:
        """The highest call number written for the follow-up; 0 when none went out."""
        partition = await self._partition(await self._producer(), request.user_id)
        made = (await self._calls_on(partition)).get(request.followup_id, 0)
        self.metrics.send_attempt_lookups.labels(result="found" if made else "none").inc()
        return made

    async def _partition(self, producer: AIOKafkaProducer, user_id: str) -> int:
        """The user's partition, as the producer's own partitioner picks it for the key."""
        partitions = sorted(await producer.partitions_for(self.topic))
        return DefaultPartitioner()(user_id.encode(), partitions, partitions)

    async def _calls_on(self, partition: int) -> dict[str, int]:
        now = time.monotonic()
        cached = self._reads.get(partition)
        if cached is None or now - cached[0] > CACHE_S or _failed(cached[2]):
            # Reads past their time are dropped: a partition's calls of two days are not kept.
            self._reads = {p: read for p, read in self._reads.items() if now - read[0] <= CACHE_S}
            calls: dict[str, int] = {}
            cached = (now, calls, asyncio.ensure_future(self._read(partition, calls)))
            self._reads[partition] = cached
        await asyncio.shield(cached[2])  # one lookup cancelled does not cancel the others' read
        return cached[1]

    async def _read(self, partition: int, calls: dict[str, int]) -> None:
        with self.metrics.send_attempt_read.time():
            async for records in read_partition(self.bootstrap, self.topic, partition, self.security):
                for record in records:
                    try:
                        started = parse_send_started(loads(record.value))
                    except InvalidRecord as exc:  # only the sender writes it: counted, skipped
                        self.metrics.records_dropped.labels(stage=STAGE, reason=exc.kind).inc()
                        continue
                    calls[started.followup_id] = max(calls.get(started.followup_id, 0), started.attempt)


def _failed(read: asyncio.Task) -> bool:
    return read.done() and (read.cancelled() or read.exception() is not None)
