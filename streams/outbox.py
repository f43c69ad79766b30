"""Records on their way to Kafka, packed into one batch per partition by the caller.

``AIOKafkaProducer.send`` costs a coroutine, a future, a partitioner call and a metadata
check for every record: at tens of thousands of records a second that is a large share
of a worker. A stage that writes many records per batch adds them here instead; they are
appended straight into the producer's batch format and handed over one batch per
partition, in the order they were added. ``flush`` waits until Kafka has acknowledged
every one of them.
"""
from __future__ import annotations

import asyncio
import itertools
from functools import lru_cache

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2


@lru_cache(maxsize=1 << 17)
def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), cached: the same users write again and again."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


_NO_HEADERS: list = []  # the record batch builder takes a list; never changed


class Outbox:
    """Batches per (topic, partition) for one producer; nothing is sent until ``send``."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._partitions: dict[str, int] = {}
        self._open: dict[tuple[str, int], object] = {}         # the batch being filled
        self._ready: list[tuple[tuple[str, int], object]] = []  # in the order to send
        self._sent: list[asyncio.Future] = []
        self._spread = itertools.count()  # records without a key take turns
        self._handing_over = asyncio.Lock()  # send() awaits: two at once could swap batches

    async def know(self, *topics: str) -> None:
        """Look up how many partitions each topic has, for records added with a key only."""
        for topic in topics:
            self._partitions[topic] = len(await self.producer.partitions_for(topic))

    def add(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int | None = None,
            headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one record; without ``partition`` it goes where the key's hash sends it."""
        headers = _NO_HEADERS if headers is None else headers
        if partition is None:
            count = self._partitions[topic]
            partition = partition_for(key, count) if key is not None else next(self._spread) % count
        where = (topic, partition)
        batch = self._open.get(where)
        if batch is None:
            batch = self._open[where] = self.producer.create_batch()
            self._ready.append((where, batch))
        if batch.append(timestamp=None, key=key, value=value, headers=headers) is not None:
            return
        batch = self._open[where] = self.producer.create_batch()  # full: the next one
        self._ready.append((where, batch))
        if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
            raise ValueError(f"a record of {len(value)} bytes is larger than a producer batch")

    async def send(self) -> None:
        """Hand every batch filled so far to the producer, in order per partition."""
        sent = await self._hand(self.take())
        self._sent.extend(sent)  # after the await: ``flush`` may have taken the list meanwhile

    def take(self) -> list:
        """Every batch filled so far, out of the outbox, for ``hand_over``: a transaction's
        records, captured at its checkpoint, whatever is added after."""
        taken, self._ready = self._ready, []
        self._open.clear()
        return taken

    async def hand_over(self, taken: list) -> None:
        """Send what ``take`` returned, in order per partition; wait until Kafka acknowledged it all."""
        await asyncio.gather(*await self._hand(taken))

    async def _hand(self, taken: list) -> list[asyncio.Future]:
        """Batches to the producer, partitions side by side, each in order; their acknowledgements.

        The producer takes a partition's next batch only once its last one left in a
        request, so handing batches over one after another made a request of each (a
        checkpoint of 10 MB waited for dozens of round trips, each a turn of a busy loop)."""
        by_partition: dict[tuple[str, int], list] = {}
        for where, batch in taken:
            by_partition.setdefault(where, []).append(batch)
        async with self._handing_over:
            sent = await asyncio.gather(*(self._send_in_order(where, batches) for where, batches in by_partition.items()))
        return list(itertools.chain.from_iterable(sent))

    async def _send_in_order(self, where: tuple[str, int], batches: list) -> list[asyncio.Future]:
        topic, partition = where
        return [await self.producer.send_batch(batch, topic, partition=partition) for batch in batches]

    async def flush(self) -> None:
        """Send, then wait until Kafka has acknowledged everything added so far."""
        await self.send()
        sent, self._sent = self._sent, []
        await asyncio.gather(*sent)
