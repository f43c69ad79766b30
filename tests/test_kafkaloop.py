"""The consume-process-commit loop itself, on the real broker: what it reads ahead of its
stage is never processed by a worker that no longer owns it."""
from __future__ import annotations

import asyncio
import collections
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from streams.admin import acreate_topics
from streams.kafkaloop import KafkaLoop
from streams.topics import TopicSpec
from tests.kafkaread import group_lag
from tests.waiting import async_wait_for

pytestmark = pytest.mark.kafka

PARTITIONS = 4
PER_PARTITION = 6_000


class SlowRecordingStage:
    """Notes every record it processes, and takes its time, so that the loop reads ahead."""

    def __init__(self, name: str, seen: list[tuple[str, int, int]]) -> None:
        self.name, self.seen = name, seen

    async def on_assigned(self, partitions: list[int]) -> None:
        pass

    async def on_revoked(self, partitions: list[int]) -> None:
        pass

    async def process(self, batch) -> None:
        for tp, records in batch.items():
            self.seen.extend((self.name, tp.partition, record.offset) for record in records)
        await asyncio.sleep(0.02)  # a slow stage (about 5,000 records a second), not a wait for anything

    async def idle(self) -> None:
        pass

    def checkpoint(self):
        return None


class WatchedLoop(KafkaLoop):
    """Notes how many records were read ahead each time its partitions are revoked."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ahead_at_revoke: list[int] = []

    async def revoke(self, revoked) -> None:
        if revoked:  # a first join revokes nothing
            self.ahead_at_revoke.append(self._ahead_records)
        await super().revoke(revoked)


async def test_records_read_ahead_are_dropped_at_a_rebalance_and_each_is_processed_once(stack):
    topic = f"loop-{uuid.uuid4().hex[:8]}"
    await acreate_topics(stack.bootstrap, [TopicSpec(topic, "a test's input")], "", PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, linger_ms=20)
    await producer.start()
    try:
        for partition in range(PARTITIONS):
            for n in range(PER_PARTITION):
                await producer.send(topic, b"%d" % n, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()

    group = f"loop-{uuid.uuid4().hex[:8]}"
    seen: list[tuple[str, int, int]] = []
    first = WatchedLoop(bootstrap=stack.bootstrap, topics=[topic], group=group, stage=SlowRecordingStage("first", seen),
                      max_records=100, read_ahead=4_000, commit_interval=0.2)
    second = KafkaLoop(bootstrap=stack.bootstrap, topics=[topic], group=group, stage=SlowRecordingStage("second", seen),
                       max_records=100, read_ahead=4_000, commit_interval=0.2)
    await first.start()
    try:
        await async_wait_for(lambda: len(seen) >= 2_000 and first._ahead_records > 0, timeout=60,
                             what="the first loop to have processed some records and read others ahead")
        await second.start()
        total = PARTITIONS * PER_PARTITION
        await async_wait_for(lambda: len({(p, o) for _, p, o in seen}) == total, timeout=120,
                             what="every record processed")

        async def committed_all() -> bool:
            return await group_lag(stack.bootstrap, group, topic, PARTITIONS) == 0
        await async_wait_for(committed_all, timeout=60, what="the group to commit every record")
    finally:
        await second.stop()
        await first.stop()

    assert any(name == "second" for name, _, _ in seen), "the second loop never got a partition: no rebalance was tested"
    assert first.ahead_at_revoke and first.ahead_at_revoke[0] > 0, "nothing was read ahead when the rebalance came"
    counts = collections.Counter((partition, offset) for _, partition, offset in seen)
    twice = [key for key, count in counts.items() if count > 1]
    assert twice == [], f"{len(twice)} records processed twice, e.g. {twice[:3]}"
