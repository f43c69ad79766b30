"""Read whole topics in tests, from the beginning, with no consumer group."""
from __future__ import annotations

import asyncio
import time
from typing import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafkaloop import read_partition


class TopicReader:
    """Keeps reading a topic in the background; ``records`` grows as messages arrive."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.records: list = []
        self._task: asyncio.Task | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> "TopicReader":
        # read_committed: what every reader downstream sees (aborted transactions never are).
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                          isolation_level="read_committed")
        await self._consumer.start()
        self._consumer.assign([TopicPartition(self.topic, p) for p in range(self.partitions)])
        await self._consumer.seek_to_beginning()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                self.records.extend(messages)

    async def wait_for(self, predicate: Callable[[list], bool], timeout: float, what: str) -> list:
        deadline = time.monotonic() + timeout
        while not predicate(self.records):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; have {len(self.records)} records on {self.topic}")
            await asyncio.sleep(0.05)
        return self.records

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._consumer:
            await self._consumer.stop()


async def group_lag(bootstrap: str, group: str, topic: str, partitions: int) -> int | None:
    """Records of ``topic`` the consumer group has not committed yet (None: nothing committed)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import GroupCoordinatorNotAvailableError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        try:
            committed = await admin.list_consumer_group_offsets(group)
        except GroupCoordinatorNotAvailableError:  # the group has not formed yet
            return None
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        if not any(tp in committed for tp in tps):
            return None
        return sum(ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in tps)
    finally:
        await consumer.stop()
        await admin.close()


async def partition_records(bootstrap: str, topic: str, partition: int) -> list:
    """Every record of one partition, from the beginning to its end now, in one list,
    read the way the engine restores (``streams.kafkaloop.read_partition``)."""
    return [record async for batch in read_partition(bootstrap, topic, partition) for record in batch]
