"""The engine agent: the ordered record stream of each partition through a DecisionCore.

Records on ``messages`` (canonical events, and control events forwarded there by the
control agent, in order) feed one ``DecisionCore`` per partition this worker owns. The
cores' users live in the changelogged table ``pairs``; a core is rebuilt from it after
recovery, so a restarted or rebalanced worker decides as if nothing happened.

Emission is at-least-once with idempotent effects: a follow-up request is acknowledged by
Kafka and written to the Redis ledger *before* the state that records it is persisted. A
crash in between re-decides the same follow-up (same id) and the ledger stops the second
publication; a crash before it re-publishes, and downstream drops the duplicate by id.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable

import faust
import orjson
from aiokafka.partitioner import murmur2

from agents.rules import DecisionCore, UserState
from schemas.records import InvalidRecord, MessageEvent, loads, parse_record
from streams.app import CLOCK_HEADER, Wiring, wall_ms
from streams.topics import DECISIONS, FOLLOWUPS_REQUESTED, MESSAGES
from streams.userdata import ledger_key

PAIRS_TABLE = "pairs"
log = logging.getLogger("relance.engine")


def partition_of(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), as every producer of ``messages`` uses."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def meta_key(partition: int, partitions: int) -> bytes:
    """A table key that lands in ``partition``: where that core's clock and kills live."""
    index = 0
    while True:
        key = b"\x00meta-%d" % index
        if partition_of(key, partitions) == partition:
            return key
        index += 1


def reason_label(reason: str) -> str:
    """A bounded metric label for a dead-letter reason."""
    text = reason.lower()
    for needle, name in (("not json", "not_json"), ("missing field", "missing_field"),
                         ("must be a json object", "not_object"), ("ahead of the clock", "future_ts")):
        if needle in text:
            return name
    return "invalid_field"


class Engine:
    """The cores of the partitions this worker owns, and how their output leaves."""

    def __init__(self, wiring: Wiring, table: faust.Table) -> None:
        self.wiring = wiring
        self.settings = wiring.settings
        self.table = table
        self.cores: dict[int, DecisionCore] = {}
        self._meta: dict[int, bytes] = {}
        self._partitions = self.settings.partitions
        self._messages_topic = wiring.topic(MESSAGES).get_topic_name()
        self._wall = self.settings.clock == "wall"
        self._window_s = self.settings.window // 1000

    # -- cores ---------------------------------------------------------------------

    def core(self, partition: int) -> DecisionCore:
        core = self.cores.get(partition)
        return core if core is not None else self._rebuild(partition)

    def _rebuild(self, partition: int) -> DecisionCore:
        core = DecisionCore(self.settings)
        meta = self.table.get(self._meta_key(partition))
        if meta is not None:
            core.import_meta(orjson.loads(meta))
        users = 0
        for key, value in list(self.table.items()):
            if key.startswith(b"\x00") or partition_of(key, self._partitions) != partition:
                continue
            core.load_user(key.decode(), UserState.from_dict(orjson.loads(value)))
            users += 1
        self.cores[partition] = core
        log.info("partition %d: decision core rebuilt with %d users", partition, users)
        return core

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.cores.pop(partition, None)

    def _meta_key(self, partition: int) -> bytes:
        key = self._meta.get(partition)
        if key is None:
            key = self._meta[partition] = meta_key(partition, self._partitions)
        return key

    # -- input ---------------------------------------------------------------------

    async def handle(self, event: faust.EventT) -> None:
        partition = event.message.partition
        core = self.core(partition)
        if not self._wall:
            stream_clock = dict(event.message.headers or ()).get(CLOCK_HEADER)
            if stream_clock is not None:
                core.advance(int(stream_clock), inclusive=False)
        value = event.value
        if value:  # an empty value only carries the stream clock
            try:
                record = parse_record(loads(value))
                core.feed(record, now=wall_ms() if self._wall else None)
            except InvalidRecord as exc:
                await self.wiring.dead_letter("engine", reason_label(str(exc)), str(exc), event)
            else:
                if isinstance(record, MessageEvent):
                    self.wiring.metrics.events_in.labels(app=record.app).inc()
        await self.flush(partition, core)

    async def on_timer(self) -> None:
        """Wall mode: make the decisions now due in every partition this worker owns."""
        now = wall_ms()
        for partition in self._active_partitions():
            core = self.core(partition)
            core.advance(now, inclusive=True)
            await self.flush(partition, core)

    def _active_partitions(self) -> list[int]:
        app = self.wiring.app
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return []
        return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == self._messages_topic)

    # -- output --------------------------------------------------------------------

    async def flush(self, partition: int, core: DecisionCore) -> None:
        meta_before = core.export_meta()
        requests, decisions, erased, dirty = core.drain()
        metrics = self.wiring.metrics
        for request in requests:
            await self._emit(request)
        for decision in decisions:
            metrics.decisions.labels(outcome=decision.outcome, reason=decision.stopped_by or "none").inc()
            if self._wall:
                metrics.timer_lag.observe(max(0, core.clock - decision.due_ts) / 1000)
            await self.wiring.topic(DECISIONS).send(key=decision.user_id.encode(), value=decision.to_json())
        for user_id in erased:
            await self.wiring.redis.delete(ledger_key(user_id))
        self._persist(core, dirty)
        self.table[self._meta_key(partition)] = orjson.dumps(meta_before)
        self._count(core)

    async def _emit(self, request: Any) -> None:
        ledger = ledger_key(request.user_id)
        redis = self.wiring.redis
        if await redis.hexists(ledger, request.followup_id):
            log.info("follow-up already published", extra={"followup_id": request.followup_id})
            return
        # force: sent now, not attached to the source offset, so it can be awaited here.
        sent = await self.wiring.topic(FOLLOWUPS_REQUESTED).send(
            key=request.user_id.encode(), value=request.to_json(), force=True)
        await sent  # acknowledged by Kafka before the ledger says so
        await redis.hset(ledger, request.followup_id, request.due_ts)
        await redis.expire(ledger, 2 * self._window_s)
        self.wiring.metrics.followups_generated.labels(app=request.app).inc()
        log.info("follow-up requested", extra={"followup_id": request.followup_id, "app": request.app})

    def _persist(self, core: DecisionCore, dirty: set[str]) -> None:
        for user_id in dirty:
            key = user_id.encode()
            user = core.users.get(user_id)
            if user is not None:
                self.table[key] = orjson.dumps(user.to_dict())
            elif key in self.table:
                del self.table[key]

    def _count(self, core: DecisionCore) -> None:
        metrics = self.wiring.metrics
        for language in core.distress_languages:
            metrics.distress_detected.labels(language=language).inc()
        core.distress_languages.clear()
        for app, count in core.duplicates_by_app.items():
            metrics.duplicates.labels(app=app).inc(count)
        core.duplicates_by_app.clear()


def install(wiring: Wiring) -> None:
    app, settings = wiring.app, wiring.settings
    table = app.Table(
        PAIRS_TABLE, key_type=bytes, value_type=bytes, partitions=settings.partitions,
        use_partitioner=True,
        help="Decision state per user: pairs, profile, opt-outs, cap history.",
    )
    engine = Engine(wiring, table)
    wiring.engine = engine  # for the explain endpoint

    @app.agent(wiring.topic(MESSAGES), name="engine")
    async def engine_agent(stream):
        async for event in stream.events():
            await engine.handle(event)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs):
        engine.forget(tp.partition for tp in revoked)

    @app.timer(interval=5.0)
    async def count_pairs():
        wiring.metrics.pairs_tracked.set(sum(core.pairs_tracked() for core in engine.cores.values()))

    if settings.clock == "wall":
        @app.timer(interval=settings.timer_interval / 1000)
        async def decide_due():
            await engine.on_timer()
