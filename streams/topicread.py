"""Reading topics over a time range, with no consumer group (``relance report``, ``explain``).

A range is found by the records' Kafka timestamps: each partition is read from the
earliest offset whose timestamp is at or after the start (``offsets_for_times``) up to,
not including, the first offset whose timestamp is after the end; without a start, from
the beginning, without an end, to the partition's end when reading starts. Records
written meanwhile are not waited for, so a read always ends.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import AsyncIterator

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from streams.kafkaclient import PLAINTEXT, KafkaSecurity, start
from streams.outbox import partition_for

BATCH_RECORDS = 10_000
STALL_SECONDS = 30.0  # no record for this long, though the range is not read: the broker is gone


class ReadStalled(RuntimeError):
    """The broker stopped handing out records before the range was read."""


@dataclass(frozen=True, slots=True)
class Span:
    """Offsets ``[start, end)`` of one partition."""

    partition: TopicPartition
    start: int
    end: int


class RangeReader:
    """``async with RangeReader(...) as reader``: ``reader.total`` records to read in
    ``reader.spans``; ``reader.missing`` the topics the broker does not have;
    ``async for topic, records in reader.batches()`` reads them. With ``key``, only the
    partition of each topic that holds that key (a user's records)."""

    def __init__(self, bootstrap: str, topics: list[str], start_ms: int | None = None,
                 end_ms: int | None = None, key: bytes | None = None,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        self.bootstrap, self.topics, self.security = bootstrap, topics, security
        self.start_ms, self.end_ms, self.key = start_ms, end_ms, key
        self.spans: list[Span] = []
        self.missing: list[str] = []
        self._consumer: AIOKafkaConsumer | None = None

    @property
    def total(self) -> int:
        return sum(span.end - span.start for span in self.spans)

    async def __aenter__(self) -> "RangeReader":
        # read_committed: the engine writes in transactions; an aborted one was never written.
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                          auto_offset_reset="earliest", request_timeout_ms=15_000,
                                          isolation_level="read_committed", **self.security.options())
        try:
            await start(self._consumer, self.bootstrap, self.security)
            self.spans = await self._plan()
        except BaseException:
            await self._consumer.stop()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self._consumer.stop()

    async def _plan(self) -> list[Span]:
        consumer = self._consumer
        # The consumer's public topics() fetches this too, but keeps only the names.
        cluster = await consumer._client.fetch_all_metadata()
        partitions = []
        for topic in self.topics:
            if topic not in cluster.topics():
                self.missing.append(topic)
                continue
            numbers = sorted(cluster.partitions_for_topic(topic) or ())
            if self.key is not None and numbers:  # only where the default partitioner puts that key
                numbers = [partition_for(self.key, len(numbers))]
            partitions += [TopicPartition(topic, n) for n in numbers]
        if not partitions:
            return []
        consumer.assign(partitions)  # and so the consumer tracks their leaders
        firsts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        starts = await self._offsets_at(partitions, self.start_ms, firsts, ends)
        stops = await self._offsets_at(partitions, None if self.end_ms is None else self.end_ms + 1, ends, ends)
        return [Span(tp, starts[tp], stops[tp]) for tp in partitions if starts[tp] < stops[tp]]

    async def _offsets_at(self, partitions: list[TopicPartition], ms: int | None,
                          default: dict[TopicPartition, int], ends: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """The first offset with a timestamp at or after ``ms`` (the end when none is)."""
        if ms is None:
            return dict(default)
        found = await self._consumer.offsets_for_times({tp: ms for tp in partitions})
        return {tp: ends[tp] if found.get(tp) is None else found[tp].offset for tp in partitions}

    async def batches(self) -> AsyncIterator[tuple[str, list[ConsumerRecord]]]:
        consumer = self._consumer
        ends = {span.partition: span.end for span in self.spans}
        for tp in set(consumer.assignment()) - set(ends):
            consumer.pause(tp)  # nothing to read there in the range
        for span in self.spans:
            consumer.seek(span.partition, span.start)
        waiting = set(ends)
        last_record = time.monotonic()
        while waiting:
            fetched = await consumer.getmany(*waiting, timeout_ms=500, max_records=BATCH_RECORDS)
            for tp, records in fetched.items():
                kept = [record for record in records if record.offset < ends[tp]]
                if kept:
                    last_record = time.monotonic()
                    yield tp.topic, kept
            for tp in list(waiting):
                if await consumer.position(tp) >= ends[tp]:
                    waiting.discard(tp)
                    consumer.pause(tp)
            if waiting and time.monotonic() - last_record > STALL_SECONDS:
                raise ReadStalled(f"no record for {STALL_SECONDS:g}s from {sorted(str(tp) for tp in waiting)}")
