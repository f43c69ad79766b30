"""The engine: each partition's ordered record stream through its own DecisionCore.

Records on ``messages`` (canonical events, and control records forwarded there in order)
feed one ``DecisionCore`` per partition this worker owns. It runs as a batch stage of a
``KafkaLoop`` inside the Faust worker, because Faust's per-message delivery caps an agent
far below the pipeline's target (see ``streams/kafkaloop.py``).

State: each core's users live in the compacted topic ``engine.state``, partition for
partition with ``messages`` (key ``user_id``; an empty value deletes; one ``\\x00meta``
key per partition holds the clock and kill switches). On assignment a partition's core
is rebuilt from it; before every commit the users changed since the last one are written.

Emission is at-least-once with idempotent effects: a follow-up request is acknowledged by
Kafka and written to the Redis ledger *before* the state that records it is written. A
crash in between re-decides the same follow-up (same id) and the ledger stops the second
publication; a crash before it re-publishes, and downstream drops the duplicate by id.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Callable

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.partitioner import murmur2

from agents.rules import DecisionCore, UserState
from schemas.records import DecisionRecord, FollowupRequest, InvalidRecord, MessageEvent, loads, parse_record
from streams.app import CLOCK_HEADER, Wiring, dead_letter_for, dead_letter_label, wall_ms
from streams.kafkaloop import KafkaLoop, read_partition_to_end
from streams.topics import DEADLETTER, DECISIONS, ENGINE_STATE, FOLLOWUPS_REQUESTED, MESSAGES, topic_name
from streams.userdata import ledger_key

META_KEY = b"\x00meta"
log = logging.getLogger("relance.engine")


def partition_of(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), as every producer of ``messages`` uses."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Engine:
    """The cores of the partitions this worker owns, and how their output leaves."""

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring
        self.settings = wiring.settings
        self.metrics = wiring.metrics
        self.cores: dict[int, DecisionCore] = {}
        self.loop: KafkaLoop | None = None
        self.producer = None
        self.decision_listeners: list[Callable[[DecisionRecord], None]] = []
        self._unsaved: dict[int, set[str]] = collections.defaultdict(set)
        self._meta_changed: set[int] = set()
        self._pending: list[asyncio.Future] = []
        self._wall = self.settings.clock == "wall"
        self._window_s = self.settings.window // 1000
        prefix = self.settings.topic_prefix
        self._state_topic = topic_name(ENGINE_STATE, prefix)
        self._decisions_topic = topic_name(DECISIONS, prefix)
        self._requests_topic = topic_name(FOLLOWUPS_REQUESTED, prefix)
        self._deadletter_topic = topic_name(DEADLETTER, prefix)
        self._events_in: collections.Counter = collections.Counter()

    def owned(self) -> list[int]:
        return self.loop.owned() if self.loop else []

    # -- partitions ----------------------------------------------------------------

    async def on_assigned(self, partitions: list[int]) -> None:
        for partition in partitions:
            if partition not in self.cores:
                self.cores[partition] = await self._restore(partition)

    async def on_revoked(self, partitions: list[int]) -> None:
        for partition in partitions:
            self.cores.pop(partition, None)

    async def _restore(self, partition: int) -> DecisionCore:
        core = DecisionCore(self.settings)
        latest: dict[bytes, bytes] = {}
        for record in await read_partition_to_end(self.settings.broker, self._state_topic, partition):
            latest[record.key] = record.value
        meta = latest.pop(META_KEY, None)
        if meta:
            core.import_meta(orjson.loads(meta))
        for key, value in latest.items():
            if value:
                core.load_user(key.decode(), UserState.from_dict(orjson.loads(value)))
        log.info("partition %d: decision core restored with %d users", partition, len(core.users))
        return core

    # -- input ---------------------------------------------------------------------

    async def process(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        now = wall_ms() if self._wall else None
        invalid: list[tuple[ConsumerRecord, str]] = []
        for tp, records in batch.items():
            core = self.cores[tp.partition]  # restored in on_assigned
            kills_before = core.kills.to_dict()
            for record in records:
                reason = self._feed(core, record, now)
                if reason is not None:
                    invalid.append((record, reason))
            if core.kills.to_dict() != kills_before:
                self._meta_changed.add(tp.partition)
        for record, reason in invalid:
            await self._dead_letter(record, reason)
        await self._emit(batch_partitions=[tp.partition for tp in batch])
        self._count_events()

    def _feed(self, core: DecisionCore, record: ConsumerRecord, now: int | None) -> str | None:
        """Apply one record; the reason if it is invalid."""
        if not self._wall:
            for name, value in record.headers or ():
                if name == CLOCK_HEADER:
                    core.advance(int(value), inclusive=False)
        if not record.value:  # an empty value only carries the stream clock
            return None
        try:
            parsed = parse_record(loads(record.value))
            core.feed(parsed, now=now)
        except InvalidRecord as exc:
            return str(exc)
        if isinstance(parsed, MessageEvent):
            self._events_in[parsed.app] += 1
        return None

    async def idle(self) -> None:
        """Between batches: in wall mode, the decisions now due in every owned partition."""
        if not self._wall:
            return
        now = wall_ms()
        for core in self.cores.values():
            core.advance(now, inclusive=True)
        await self._emit(batch_partitions=list(self.cores))

    # -- output --------------------------------------------------------------------

    async def _emit(self, batch_partitions: list[int]) -> None:
        """Publish what the cores decided, all partitions at once: one ledger round trip."""
        requests: list[FollowupRequest] = []
        erased: list[str] = []
        for partition in batch_partitions:
            core = self.cores[partition]
            core_requests, decisions, core_erased, dirty = core.drain()
            requests += core_requests
            erased += core_erased
            for decision in decisions:
                await self._record_decision(core, decision)
            self._unsaved[partition] |= dirty
            self._count(core)
        if requests:
            await self._publish_requests(requests)
        if erased:
            await self.wiring.redis.delete(*(ledger_key(user_id) for user_id in erased))

    async def _publish_requests(self, requests: list[FollowupRequest]) -> None:
        redis = self.wiring.redis
        async with redis.pipeline(transaction=False) as pipe:
            for request in requests:
                pipe.hexists(ledger_key(request.user_id), request.followup_id)
            published = await pipe.execute()
        fresh = [request for request, seen in zip(requests, published) if not seen]
        sent = [await self.producer.send(self._requests_topic, request.to_json(), key=request.user_id.encode())
                for request in fresh]
        await asyncio.gather(*sent)  # acknowledged by Kafka before the ledger says so
        async with redis.pipeline(transaction=False) as pipe:
            for request in fresh:
                pipe.hset(ledger_key(request.user_id), request.followup_id, request.due_ts)
                pipe.expire(ledger_key(request.user_id), 2 * self._window_s)
            await pipe.execute()
        for request in fresh:
            self.metrics.followups_generated.labels(app=request.app).inc()
            log.info("follow-up requested", extra={"followup_id": request.followup_id, "app": request.app})

    async def _record_decision(self, core: DecisionCore, decision: DecisionRecord) -> None:
        self.metrics.decisions.labels(outcome=decision.outcome, reason=decision.stopped_by or "none").inc()
        if self._wall:
            self.metrics.timer_lag.observe(max(0, core.clock - decision.due_ts) / 1000)
        await self._send(self._decisions_topic, decision.to_json(), decision.user_id.encode())
        for listener in self.decision_listeners:
            listener(decision)

    async def _dead_letter(self, record: ConsumerRecord, reason: str) -> None:
        self.metrics.dead_letters.labels(stage="engine", reason=dead_letter_label(reason)).inc()
        log.warning("dead letter: %s", reason, extra={"topic": record.topic, "partition": record.partition, "offset": record.offset})
        await self._send(self._deadletter_topic, dead_letter_for("engine", reason, record), None)

    async def _send(self, topic: str, value: bytes, key: bytes | None, partition: int | None = None) -> None:
        # Awaited one by one: the producer queues them in this order, per partition.
        self._pending.append(await self.producer.send(topic, value, key=key, partition=partition))

    async def flush(self) -> None:
        """Before a commit: the changed users and the clock written, everything acknowledged."""
        for partition, users in self._unsaved.items():
            core = self.cores.get(partition)
            if core is None:
                continue
            for user_id in users:
                user = core.users.get(user_id)
                value = orjson.dumps(user.to_dict()) if user is not None else b""
                await self._send(self._state_topic, value, user_id.encode(), partition)
            self._meta_changed.add(partition)
        self._unsaved.clear()
        for partition in self._meta_changed:
            if partition in self.cores:
                await self._send(self._state_topic, orjson.dumps(self.cores[partition].export_meta()), META_KEY, partition)
        self._meta_changed.clear()
        pending, self._pending = self._pending, []
        await asyncio.gather(*pending)
        self.metrics.pairs_tracked.set(sum(core.pairs_tracked() for core in self.cores.values()))

    def _count(self, core: DecisionCore) -> None:
        for language in core.distress_languages:
            self.metrics.distress_detected.labels(language=language).inc()
        core.distress_languages.clear()
        for app, count in core.duplicates_by_app.items():
            self.metrics.duplicates.labels(app=app).inc(count)
        core.duplicates_by_app.clear()

    def _count_events(self) -> None:
        for app, count in self._events_in.items():
            self.metrics.events_in.labels(app=app).inc(count)
        self._events_in.clear()


def install(wiring: Wiring) -> None:
    app, settings = wiring.app, wiring.settings
    engine = Engine(wiring)
    wiring.engine = engine  # for the explain endpoint

    @app.task
    async def start_engine_loop() -> None:
        engine.producer = await wiring.producer()
        engine.loop = KafkaLoop(
            bootstrap=settings.broker, topics=[topic_name(MESSAGES, settings.topic_prefix)],
            group=f"{settings.topic_prefix}{settings.app_id}.engine", stage=engine,
        )
        engine.loop.on_commit = lambda: wiring.metrics.last_commit.set_to_current_time()
        await app.add_runtime_dependency(engine.loop)
        wiring.ready = True

    @app.timer(interval=5.0)
    async def engine_lag() -> None:
        if engine.loop is not None:
            wiring.observe_lag(engine.loop)
