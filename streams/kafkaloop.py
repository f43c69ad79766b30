"""A partitioned consume-process-commit loop on aiokafka, hosted by the Faust worker.

Faust hands each record to its agents through a per-message future (``wait_first``),
which caps an agent at a few thousand records a second here. Hot stages instead run
this loop inside the worker (a Faust service: same process, lifecycle, web server and
metrics): records arrive in batches, and a stage's ``process`` sees a whole batch.

At-least-once, exactly like Faust's own commits: before offsets are committed, the
stage's checkpoint has written its outputs and state and the producer has had them all
acknowledged. A crash can make a stage see records again, never skip them.

Commits are pipelined: a checkpoint is captured between two batches (cheap, in memory),
and made durable in the background while the next batches are processed; its offsets
are committed once it is. Waiting for the broker's acknowledgements then costs no
processing time. One checkpoint is in flight at a time; a rebalance or a stop waits for
it, then makes a last one before giving partitions up.

Records are read ahead: aiokafka fetches from a broker again only once its buffer for
every partition that broker leads is empty, so a loop that took from it only what it
processed waited a whole fetch (a round trip and megabytes read) after each response:
10-30% of an engine run on a busy machine. The loop takes up to twice a batch from the
buffer per round, up to ``read_ahead`` records in its own queue, so that the buffer runs
dry, and the next fetch is in flight, while what was taken is processed.

Exactly once, for a stage given a transactional producer: its outputs wait in its outbox
(never sent between checkpoints), and each checkpoint is one Kafka transaction holding
them, the stage's state and the input offsets; readers see them only once committed
(``read_committed``, as every consumer here reads). A crash aborts what the transaction
held, and the restarted stage makes it again from the committed offsets: nothing twice,
whatever Redis remembers. The checkpoint takes its records out of the outbox when it is
captured, so those of later batches wait for the next transaction (one at a time per
producer, as checkpoints are anyway). aiokafka commits offsets in a
transaction by group id only (no KIP-447 generation), so a worker that lost its
partitions without noticing could still commit; the loop commits before it gives
partitions up in a rebalance, and a stage's producer has its own transactional id.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import AsyncIterator, Awaitable, Callable, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from mode import Service

from streams.kafkaclient import PLAINTEXT, KafkaSecurity

log = logging.getLogger("relance.loop")


class Stage(Protocol):
    """What the loop drives: one stage of the pipeline over some partitions."""

    async def on_assigned(self, partitions: list[int]) -> None: ...
    async def on_revoked(self, partitions: list[int]) -> None: ...
    async def process(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None: ...
    async def idle(self) -> None: ...

    def checkpoint(self) -> Callable[[], Awaitable[None]] | None:
        """Capture, between two batches, what must be durable before the offsets of every
        batch so far are committed; return what makes it durable (run in the background),
        or None when there is nothing."""


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, loop: "KafkaLoop") -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked) -> None:
        await self.loop.revoke(revoked)

    async def on_partitions_assigned(self, assigned) -> None:
        await self.loop.assign(assigned)


class KafkaLoop(Service):
    """Consume ``topics`` as group ``group``, feed batches to ``stage``, commit after each checkpoint.

    The stage's partition callbacks speak of the first topic's partitions (its state, if
    it keeps any, is partitioned like it).
    """

    def __init__(self, *, bootstrap: str, topics: list[str], group: str, stage: Stage,
                 commit_interval: float = 1.0, max_records: int = 2_000, read_ahead: int = 16_000,
                 transactions: AIOKafkaProducer | None = None,
                 settled: Callable[[dict[TopicPartition, int]], dict[TopicPartition, int]] | None = None,
                 security: KafkaSecurity = PLAINTEXT, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bootstrap, self.topics, self.group, self.stage = bootstrap, topics, group, stage
        # A started transactional producer: each checkpoint one transaction (the loop stops it).
        self.transactions = transactions
        # For a stage that finishes records after ``process`` returns: of the offsets read
        # so far, those up to which every record is done (its outputs acknowledged).
        self.settled = settled
        self.topic = topics[0]
        self.security = security
        # A batch is processed without yielding to the event loop, and a checkpoint's
        # transaction takes several round trips in the background: small batches let each
        # round trip go on between two of them (at 20,000 records a transaction took seconds).
        self.commit_interval, self.max_records = commit_interval, max_records
        # Fetched records taken from the consumer's buffer, oldest first; a rebalance drops
        # them (the next assignment reads again from the committed offsets).
        self.read_ahead = read_ahead
        self._ahead: deque[dict[TopicPartition, list[ConsumerRecord]]] = deque()
        self._ahead_records = 0
        self.consumer: AIOKafkaConsumer | None = None
        self.lock = asyncio.Lock()        # one batch, checkpoint or rebalance at a time
        self._processed: dict[TopicPartition, int] = {}   # offsets to commit
        self._next: dict[TopicPartition, int] = {}        # next offset to read, for lag
        self._to_restore: set[TopicPartition] = set()     # assigned, paused until restored
        self._committing: asyncio.Future | None = None    # the checkpoint in flight
        self._failed = False
        self._hurry = False  # outputs someone waits for: commit at the next chance
        self._fresh = False  # batches processed since the last checkpoint was captured
        self._last_commit = time.monotonic()
        self.on_commit = lambda: None
        self.on_checkpoint: Callable[[float], None] = lambda seconds: None  # capture to commit

    async def on_start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False,
            auto_offset_reset="earliest", max_partition_fetch_bytes=4 * 1024 * 1024,
            session_timeout_ms=10_000, heartbeat_interval_ms=3_000, isolation_level="read_committed",
            **self.security.options(),
        )
        await self.consumer.start()
        self.consumer.subscribe(list(self.topics), listener=_Rebalance(self))
        self.add_future(self._run())

    async def on_stop(self) -> None:
        if self.consumer is None:
            return
        try:
            if not self._failed:  # a failed loop commits nothing, and may hold the lock for ever
                async with self.lock:
                    await self._commit_now()
        finally:
            await self.consumer.stop()
            if self.transactions is not None:
                await self.transactions.stop()

    async def _run(self) -> None:
        try:
            await self._consume()
        except Exception as exc:
            log.exception("%s loop failed; crashing the worker", self.group)
            await self.fail(exc)

    async def fail(self, exc: BaseException) -> None:
        """Never a silent stall: crash the worker, so that it is restarted and goes on from
        the last commit. The stage's memory may now be ahead of what it published, so
        nothing of it may be flushed or committed any more."""
        self._failed = True
        await self.crash(exc)

    async def _consume(self) -> None:
        while not self.should_stop:
            if self._failed:  # a checkpoint failed during a rebalance
                raise RuntimeError(f"{self.group}: a checkpoint failed; nothing more is committed")
            if self._to_restore:
                async with self.lock:
                    await self._restore_assigned()
            # getmany returns what is already fetched without suspending, so without this the
            # loop would not let the fetcher, the producer or a checkpoint's transaction run
            # until the fetched buffer (megabytes) ran dry: each of a transaction's round trips
            # waited about a second.
            await asyncio.sleep(0)
            await self._read_ahead()
            async with self.lock:  # taken under the lock: a rebalance may have dropped it
                batch = self._take_ahead()
                if batch:
                    await self.stage.process(batch)
                    for tp, records in batch.items():
                        self._processed[tp] = self._next[tp] = records[-1].offset + 1
                    self._fresh = True
                await self.stage.idle()
                # A round that read nothing (100 ms) means the input is drained for now: nothing is
                # gained by holding what was processed until the interval (a run's tail). At
                # most four such commits an interval: a trickle of records, each batch followed
                # by an empty fetch, would otherwise make a transaction of every batch.
                since = time.monotonic() - self._last_commit
                drained = not batch and self._fresh and since >= self.commit_interval / 4
                if drained or self._hurry or since >= self.commit_interval:
                    self._commit_in_background()

    async def _read_ahead(self) -> None:
        """Take up to two batches from the consumer's buffer, unless ``read_ahead`` records
        wait already; wait up to 100 ms for some only when none wait."""
        timeout_ms = 0 if self._ahead else 100
        for _ in range(2):
            if self._ahead_records >= self.read_ahead:
                return
            fetched = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=self.max_records)
            if not fetched:
                return
            self._ahead.append(fetched)
            self._ahead_records += sum(len(records) for records in fetched.values())
            timeout_ms = 0

    def _take_ahead(self) -> dict[TopicPartition, list[ConsumerRecord]]:
        if not self._ahead:
            return {}
        batch = self._ahead.popleft()
        self._ahead_records -= sum(len(records) for records in batch.values())
        return batch

    def commit_soon(self) -> None:
        """Checkpoint at the next chance rather than at the interval: records a reader waits
        for (a follow-up request) are held until their transaction commits."""
        self._hurry = True

    def _commit_in_background(self) -> None:
        if self._committing is not None and not self._committing.done():
            return  # the last one is still on its way: this one waits for the next round
        self._hurry = self._fresh = False
        self._settled()
        self._committing = asyncio.ensure_future(self._commit(self.stage.checkpoint(), self._take_offsets()))
        self._last_commit = time.monotonic()

    async def _commit_now(self) -> None:
        """The checkpoint in flight, then one of everything so far, committed before returning."""
        if self._failed:
            return
        if self._committing is not None:
            await asyncio.wait([self._committing])
        self._fresh = False
        self._settled()
        await self._commit(self.stage.checkpoint(), self._take_offsets())
        self._last_commit = time.monotonic()

    def _settled(self) -> None:
        """Raise if the last checkpoint failed: nothing may be committed after it."""
        committing, self._committing = self._committing, None
        if committing is not None and committing.exception() is not None:
            self._failed = True
            raise committing.exception()

    def _take_offsets(self) -> dict[TopicPartition, int]:
        if self.settled is not None:
            offsets = self.settled(self._processed)
            for tp, offset in offsets.items():
                if self._processed.get(tp) == offset:
                    del self._processed[tp]
            return offsets
        offsets, self._processed = self._processed, {}
        return offsets

    async def _commit(self, make_durable: Callable[[], Awaitable[None]] | None,
                      offsets: dict[TopicPartition, int]) -> None:
        if make_durable is None and not offsets:
            return  # an idle interval: no empty transaction, no empty commit
        started = time.monotonic()
        if self.transactions is not None:
            await self._commit_transaction(make_durable, offsets)
        else:
            if make_durable is not None:
                await make_durable()
            if offsets:
                await self.consumer.commit(offsets)
                self.on_commit()
        self.on_checkpoint(time.monotonic() - started)

    async def _commit_transaction(self, make_durable: Callable[[], Awaitable[None]] | None,
                                  offsets: dict[TopicPartition, int]) -> None:
        producer = self.transactions
        await producer.begin_transaction()
        try:
            if make_durable is not None:
                await make_durable()
            if offsets:
                await producer.send_offsets_to_transaction(offsets, self.group)
            await producer.commit_transaction()
        except BaseException:
            self._failed = True  # whatever the transaction held is aborted, or will be
            raise
        if offsets:
            self.on_commit()

    async def revoke(self, revoked) -> None:
        self._to_restore.difference_update(revoked)
        async with self.lock:
            # aiokafka revokes every partition in a rebalance (eager protocol) and the next
            # assignment starts from the committed offsets: what was read ahead is read again.
            self._ahead.clear()
            self._ahead_records = 0
            await self._commit_now()
            for tp in revoked:  # what was not settled is the next owner's now
                self._processed.pop(tp, None)
            await self.stage.on_revoked(sorted(tp.partition for tp in revoked if tp.topic == self.topic))

    async def assign(self, assigned) -> None:
        # Restoring a million users takes longer than a session timeout: not inside the
        # rebalance callback. The new partitions wait, paused, until the loop restores them.
        new = [tp for tp in assigned if tp.topic == self.topic]
        if new:
            self.consumer.pause(*new)
            self._to_restore.update(new)

    async def _restore_assigned(self) -> None:
        owned = set(self.consumer.assignment())
        ready = sorted((tp for tp in self._to_restore if tp in owned), key=lambda tp: tp.partition)
        self._to_restore.clear()
        if ready:
            await self.stage.on_assigned([tp.partition for tp in ready])
            self.consumer.resume(*ready)

    def owned(self) -> list[int]:
        if self.consumer is None:
            return []
        return sorted(tp.partition for tp in self.consumer.assignment() if tp.topic == self.topic)

    def lag(self) -> dict[TopicPartition, int]:
        """Records not yet consumed, per owned partition, from the fetcher's high water."""
        lags = {}
        for tp in self.consumer.assignment() if self.consumer else ():
            highwater = self.consumer.highwater(tp)
            if highwater is not None and tp in self._next:
                lags[tp] = max(0, highwater - self._next[tp])
        return lags


class Unfinished:
    """Records a stage works on concurrently, each finishing on its own: per partition,
    what may be committed runs up to the first record not finished (``KafkaLoop``'s
    ``settled``). A crash then re-reads every record whose outcome was not yet recorded."""

    def __init__(self) -> None:
        self._running: dict[TopicPartition, set[int]] = {}

    def started(self, record: ConsumerRecord) -> TopicPartition:
        tp = TopicPartition(record.topic, record.partition)
        self._running.setdefault(tp, set()).add(record.offset)
        return tp

    def finished(self, tp: TopicPartition, offset: int) -> None:
        self._running.get(tp, set()).discard(offset)

    def forget(self, partitions: list[int]) -> None:
        """Partitions given up (of every topic read): their records are the next owner's to commit."""
        for tp in [tp for tp in self._running if tp.partition in partitions]:
            del self._running[tp]

    def settled(self, processed: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        return {tp: min(self._running[tp]) if self._running.get(tp) else offset for tp, offset in processed.items()}


class RecordTasks:
    """A stage whose records each take long (a call out: the LLM, a send API), each run in a
    task of its own on a ``KafkaLoop``, under two bounds (fresh records, and those of the
    retry topic, mostly asleep until their time). Offsets are committed only up to each
    partition's first record not finished (``settled``): a crash re-reads every record
    whose outcome was not yet recorded. A failure not about one record (Redis or the
    broker gone longer than the retries) crashes the worker rather than stall.
    """

    def __init__(self, name: str, handle: Callable[[ConsumerRecord, bool], Awaitable[None]], retry_topic: str,
                 fresh: int, retries: int) -> None:
        self.name, self.handle, self.retry_topic = name, handle, retry_topic
        self.loop: KafkaLoop | None = None
        self.unfinished = Unfinished()
        self._fresh_slots = asyncio.Semaphore(fresh)
        self._retry_slots = asyncio.Semaphore(retries)
        self._tasks: set[asyncio.Task] = set()

    async def on_assigned(self, partitions: list[int]) -> None:
        pass

    async def on_revoked(self, partitions: list[int]) -> None:
        # The loop committed what had finished; the rest is the next owner's. Records still
        # running here end anyway, and the next owner's copies find them in the ledger.
        self.unfinished.forget(partitions)

    async def process(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        for tp, records in batch.items():
            from_retry = tp.topic == self.retry_topic
            slots = self._retry_slots if from_retry else self._fresh_slots
            for record in records:
                await slots.acquire()  # the loop waits here when every slot is taken
                task = asyncio.ensure_future(self._one(record, from_retry, slots))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _one(self, record: ConsumerRecord, from_retry: bool, slots: asyncio.Semaphore) -> None:
        tp = self.unfinished.started(record)
        try:
            await self.handle(record, from_retry)
        except Exception as exc:
            log.exception("%s failed on a record; crashing the worker", self.name)
            for task in self._tasks:  # they wait on the same service: none may finish now
                if task is not asyncio.current_task():
                    task.cancel()
            await self.loop.fail(exc)
            return
        finally:
            slots.release()
        self.unfinished.finished(tp, record.offset)

    async def idle(self) -> None:
        pass

    def checkpoint(self) -> Callable[[], Awaitable[None]]:
        async def nothing_more() -> None:
            pass  # every finished record's outputs were acknowledged when it finished
        return nothing_more

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def read_partition(bootstrap: str, topic: str, partition: int,
                         security: KafkaSecurity = PLAINTEXT) -> AsyncIterator[list[ConsumerRecord]]:
    """Every record of one partition, from the beginning to its end now, batch by batch:
    a restore holds one batch at a time, not a million records."""
    # earliest: assign() starts a position reset with the consumer's policy, which can win
    # the race with seek_to_beginning; with the default (latest) nothing would be read back.
    # read_committed: a transaction a crash aborted restores nothing.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                isolation_level="read_committed", **security.options())
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]  # read_committed: the last stable offset
        await consumer.seek_to_beginning(tp)
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=500, max_records=10_000)
            if batch.get(tp):
                yield batch[tp]
    finally:
        await consumer.stop()


def new_producer(bootstrap: str, security: KafkaSecurity = PLAINTEXT, **options) -> AIOKafkaProducer:
    # acks=all and idempotence: a retried batch is not written twice, order kept per partition.
    return AIOKafkaProducer(**{
        "bootstrap_servers": bootstrap, "acks": "all", "enable_idempotence": True, "linger_ms": 5,
        "max_batch_size": 512 * 1024, **security.options(), **options,
    })
