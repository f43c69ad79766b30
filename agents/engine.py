"""The engine: each partition's ordered record stream through its own DecisionCore.

Records on ``messages`` (canonical events, and control records forwarded there in order)
feed one ``DecisionCore`` per partition this worker owns. It runs as a batch stage of a
``KafkaLoop`` inside the Faust worker, because Faust's per-message delivery caps an agent
far below the pipeline's target (see ``streams/kafkaloop.py``).

State: each core's users live in the compacted topic ``engine.state``, partition for
partition with ``messages`` (key ``user_id``; a tombstone (null value) deletes; one ``\\x00meta``
key per partition holds the clock and kill switches). On assignment a partition's core
is rebuilt from it; before every commit the users changed since the last one are written.

Exactly once, whatever Redis holds: the requests, decisions and dead letters of the batches
since the last checkpoint, the state that records them and the input offsets are one Kafka
transaction (``streams/kafkaloop.py``). A crash aborts it; the restarted engine decides
the same follow-ups again (same ids) from the committed state, and publishes them once.
Redis hears from the engine only of erasures (``streams/ledger.py``'s tombstones).
"""
from __future__ import annotations

import collections
import gc
import logging
from pathlib import Path
from typing import Awaitable, Callable

import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition

from agents.explain import install_explain
from domain.native import NativeDecisionCore, decision_core
from domain.rules import DecisionCore
from schemas.records import APPS, MAX_TS_MS, EncodedDecision, FollowupRequest, InvalidRecord
from foundation.clock import wall_ms
from streams.wiring import Wiring
from streams.kafkaloop import KafkaLoop, read_partition
from streams.idlestore import RocksDueTimes, RocksIdleStore
from streams.outbox import Outbox
from streams.topics import CLOCK_HEADER, DEADLETTER, DECISIONS, ENGINE_STATE, FOLLOWUPS_REQUESTED, MESSAGES, topic_name
from streams.ledger import Ledger, ledger_ttl_s

META_KEY = b"\x00meta"
log = logging.getLogger("relance.engine")


def stream_clock(headers, clock_header: str = CLOCK_HEADER) -> int | None:
    """The feeder's stream clock (ms) from a record's headers, if it carries one: never
    past the last time a record's ``ts`` can hold (the clock is the largest ``ts`` seen),
    else invalid: a clock past 9999 would make every later message too old, and no
    decision writable. Below zero is the feeder's "no time yet" (-1), which moves no clock."""
    for name, value in headers:
        if name != clock_header:
            continue
        try:
            clock = int(value)
        except (TypeError, ValueError):
            shown = bytes(value)[:40] if isinstance(value, (bytes, bytearray, memoryview)) else value  # None: a null header
            raise InvalidRecord(f"header {clock_header} is not a whole number of ms: {shown!r}", "invalid_header") from None
        if clock > MAX_TS_MS:
            raise InvalidRecord(f"header {clock_header} is past the last time a record can carry: {clock}", "invalid_header")
        return clock
    return None


def feed_partition(core: DecisionCore | NativeDecisionCore, records: list[ConsumerRecord], now: int | None,
                   clock_header: str | None, events_in: collections.Counter,
                   invalid: list[tuple[ConsumerRecord, InvalidRecord]]) -> int:
    """A partition's records into its core, in order: message events counted per app in
    ``events_in``, invalid records with why in ``invalid``; returns how many had an empty
    value and no stream clock. The compiled core takes the batch itself, up to each record
    it leaves to ``_feed_record``."""
    if type(core) is not NativeDecisionCore:
        return sum(_feed_record(core, record, now, clock_header, events_in, invalid) for record in records)
    empty, start = 0, 0
    while start < len(records):
        start, applied = core.feed_records(records, start, now, clock_header)
        for app, count in zip(APPS, applied):
            events_in[app] += count
        if start < len(records):
            empty += _feed_record(core, records[start], now, clock_header, events_in, invalid)
            start += 1
    return empty


def _feed_record(core: DecisionCore | NativeDecisionCore, record: ConsumerRecord, now: int | None,
                 clock_header: str | None, events_in: collections.Counter,
                 invalid: list[tuple[ConsumerRecord, InvalidRecord]]) -> int:
    """One record; 1 if its value was empty and it carried no stream clock."""
    try:
        clock = stream_clock(record.headers, clock_header) if clock_header and record.headers else None
        if not record.value:  # the feeder's clock-only record; any other empty one is counted
            if clock is not None:
                core.advance(clock, inclusive=False)
            return clock is None
        app = core.feed_encoded(record.value, clock, now)
    except InvalidRecord as exc:
        invalid.append((record, exc))
        return 0
    if app is not None:
        events_in[app] += 1
    return 0


class Engine:
    """The cores of the partitions this worker owns, and how their output leaves."""

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring
        self.settings = wiring.settings
        self.metrics = wiring.metrics
        self.cores: dict[int, DecisionCore | NativeDecisionCore] = {}
        self.loop: KafkaLoop | None = None
        # Requests, decisions, dead letters and state, held until the checkpoint's transaction.
        self.outbox: Outbox | None = None
        self.ledger: Ledger | None = None  # made when the loop starts, inside the event loop
        # Each listener gets every decision, encoded once for everyone.
        self.decision_listeners: list[Callable[[EncodedDecision], None]] = []
        self._unsaved: dict[int, set[str]] = collections.defaultdict(set)
        self._meta_changed: set[int] = set()
        self._on_disk: dict[int, tuple[RocksIdleStore, RocksDueTimes]] = {}  # store = rocksdb, per partition
        self._wall = self.settings.clock == "wall"
        prefix = self.settings.topic_prefix
        self._state_topic = topic_name(ENGINE_STATE, prefix)
        self._decisions_topic = topic_name(DECISIONS, prefix)
        self._requests_topic = topic_name(FOLLOWUPS_REQUESTED, prefix)
        self._deadletter_topic = topic_name(DEADLETTER, prefix)
        self._events_in: collections.Counter = collections.Counter()
        self._empty_values = 0

    def owned(self) -> list[int]:
        return self.loop.owned() if self.loop else []

    def holds_user(self, user_id: str) -> bool:
        return any(core.has_user(user_id) for core in self.cores.values())

    # -- partitions ----------------------------------------------------------------

    async def on_assigned(self, partitions: list[int]) -> None:
        for partition in partitions:
            if partition not in self.cores:
                self.cores[partition] = await self._restore(partition)

    async def on_revoked(self, partitions: list[int]) -> None:
        for partition in partitions:
            self.cores.pop(partition, None)
            for store in self._on_disk.pop(partition, ()):
                store.close()

    def _new_core(self, partition: int) -> DecisionCore | NativeDecisionCore:
        """With store = memory, the core ``settings.core`` names (users and due times in
        memory); with rocksdb, the Python core with idle users and due times on local disk."""
        if self.settings.store != "rocksdb":
            return decision_core(self.settings)
        folder = Path(self.settings.data_dir) / f"{self.settings.topic_prefix}{self.settings.app_id}-engine" / str(partition)
        idle, due = self._on_disk[partition] = (RocksIdleStore(folder / "idle"), RocksDueTimes(folder / "due"))
        return DecisionCore(self.settings, idle=idle, due=due)

    async def _restore(self, partition: int) -> DecisionCore | NativeDecisionCore:
        """The partition's core from ``engine.state``, record by record: a later record of
        a user replaces an earlier one, a tombstone (or the empty value older versions
        wrote) deletes it (compaction may not have run yet)."""
        core = self._new_core(partition)
        meta = None
        async for records in read_partition(self.settings.broker, self._state_topic, partition,
                                             self.wiring.kafka_security):
            for record in records:
                if record.key == META_KEY:
                    meta = record.value
                elif record.value:
                    core.load_changelog(record.key.decode(), record.value)
                else:
                    core.forget_user(record.key.decode())
        if meta:
            core.import_meta(orjson.loads(meta))
        log.info("partition %d: decision core restored with %d pairs", partition, core.pairs_tracked())
        # Pair state is long-lived and holds no cycles: out of the collector's sight, a
        # full collection does not walk a million pairs.
        gc.freeze()
        return core

    # -- input ---------------------------------------------------------------------

    async def process(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        now = wall_ms() if self._wall else None
        invalid: list[tuple[ConsumerRecord, InvalidRecord]] = []
        for tp, records in batch.items():
            core = self.cores[tp.partition]  # restored in on_assigned
            kills_before = core.kills.to_dict()
            self._feed(core, records, now, invalid)
            if core.kills.to_dict() != kills_before:
                self._meta_changed.add(tp.partition)
        for record, error in invalid:
            self.wiring.batch_dead_letter(self.outbox, "engine", record, error)
        self._count_events()  # before the decisions they lead to, as a scrape may come between
        await self._emit(batch_partitions=[tp.partition for tp in batch])

    def _feed(self, core: DecisionCore | NativeDecisionCore, records: list[ConsumerRecord], now: int | None,
              invalid: list[tuple[ConsumerRecord, InvalidRecord]]) -> None:
        """Apply a partition's records in order; the invalid ones, with why, to ``invalid``."""
        clock_header = None if self._wall else CLOCK_HEADER
        self._empty_values += feed_partition(core, records, now, clock_header, self._events_in, invalid)

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
            core_requests, decisions, core_erased, dirty = core.drain_encoded()
            requests += core_requests
            erased += core_erased
            if decisions:
                self._record_decisions(core, decisions)
            self._unsaved[partition] |= dirty
            self._count(core)
        if requests:
            self._publish_requests(requests)
        if erased:
            # Now, before the checkpoint: a request decided before the erasure and
            # already on its way must find the tombstone.
            await self.ledger.erase(erased, wall_ms())

    def _publish_requests(self, requests: list[FollowupRequest]) -> None:
        """Into the checkpoint's transaction: published once it commits, with the state
        that records them, or never."""
        for request in requests:
            self.outbox.add(self._requests_topic, request.to_json(), key=request.user_id.encode())
        self.loop.commit_soon()  # a request waits for its transaction: not a whole interval
        by_app = collections.Counter(request.app for request in requests)
        for app, count in by_app.items():
            self.metrics.followups_requested.labels(app=app).inc(count)
        for request in requests:
            log.info("follow-up requested", extra={"followup_id": request.followup_id, "app": request.app})

    def _record_decisions(self, core: DecisionCore | NativeDecisionCore, decisions: list[EncodedDecision]) -> None:
        outcomes: collections.Counter = collections.Counter()
        for decision in decisions:
            self.outbox.add(self._decisions_topic, decision.json, key=decision.user_id.encode())
            outcomes[decision.outcome, decision.stopped_by or "none"] += 1
            if self._wall:
                self.metrics.timer_lag.observe(max(0, core.clock - decision.due_ts) / 1000)
            for listener in self.decision_listeners:
                listener(decision)
        for (outcome, reason), count in outcomes.items():
            self.metrics.decisions.labels(outcome=outcome, reason=reason).inc(count)

    def checkpoint(self) -> Callable[[], Awaitable[None]] | None:
        """The changed users and each clock as they are now, with everything decided since
        the last checkpoint: the records of the checkpoint's transaction (the loop commits
        it with the input offsets), written while the next batches are processed."""
        state: list[tuple[bytes | None, bytes, int]] = []
        for partition, users in self._unsaved.items():
            core = self.cores.get(partition)
            if core is None:
                continue
            for user_id in users:
                # A user gone (erased, or every pair past the window) is a tombstone: compaction
                # then removes the key itself, user id and all.
                state.append((core.changelog_value(user_id), user_id.encode(), partition))
            self._meta_changed.add(partition)
        self._unsaved.clear()
        for core in self.cores.values():
            core.pack_idle()
        for partition in self._meta_changed:
            if partition in self.cores:
                state.append((orjson.dumps(self.cores[partition].export_meta()), META_KEY, partition))
        self._meta_changed.clear()
        self.metrics.pairs_tracked.set(sum(core.pairs_tracked() for core in self.cores.values()))

        for value, key, partition in state:
            self.outbox.add(self._state_topic, value, key, partition)
        self.metrics.state_written_bytes.inc(sum(len(value) for value, _, _ in state if value))
        records = self.outbox.take()  # what later batches add waits for the next transaction
        if not records:
            return None

        async def write() -> None:
            await self.outbox.hand_over(records)
        return write

    def _count(self, core: DecisionCore | NativeDecisionCore) -> None:
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
        if self._empty_values:
            self.metrics.records_dropped.labels(stage="engine", reason="empty_value").inc(self._empty_values)
            self._empty_values = 0


def install(wiring: Wiring) -> None:
    settings = wiring.settings
    engine = Engine(wiring)
    install_explain(wiring, engine)

    async def prepare(producer: AIOKafkaProducer) -> None:
        engine.ledger = Ledger(wiring.redis, ledger_ttl_s(settings), settings.messaging_window)
        engine.outbox = Outbox(producer)
        await engine.outbox.know(engine._decisions_topic, engine._deadletter_topic, engine._requests_topic)

    wiring.install_batch_stage("engine", [topic_name(MESSAGES, settings.topic_prefix)], engine, prepare,
                               transactional=True)
