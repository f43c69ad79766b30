"""The context agent: each pair's recent conversation in Redis, for the generator, and
the users' safety facts, for the last-moment check.

It reads ``messages`` (canonical events, and the control events the control agent forwards
there) and keeps, per pair, the last ``context_messages`` messages as compact JSON, the
bots that have a context, and the ts of the user's latest inbound message per bot (the
generator's stale check). Every write is idempotent, so a re-delivered batch after a crash
changes nothing: a message already in the list is not appended again, and the latest
inbound ts only moves forward. An ``erase`` record deletes this stage's keys of the user.

It also mirrors what would stop a follow-up between its decision and its hand-over (spec
section 3): opt-outs and opt-ins, stop words, profiles (minors), signs of distress. It
sees the same ordered stream as the engine and changes the same ``SafetyFacts`` with the
same methods, at the same clock (the ``relance-clock`` header in event mode, the wall
clock in wall mode), so the mirror says what the engine's state says. It only differs on
a re-sent stop word with a new ts after an opt-in, which the engine recognises and the
mirror (keeping no message keys) takes as new: it then cancels, the safe way round.

And it tells whether the user answered a follow-up (spec section 9): an inbound message of
the pair after the send and within M of it (``domain.report.answered_within``) publishes one
``answered`` outcome for that follow-up on ``followups.outcomes`` (``at``: the answer's ts),
then marks it answered in the ledger (``streams/ledger.py``), so a re-sent webhook, a
second answer or a re-delivered batch makes no second one. Wall mode only: the ledger keeps
the wall time a follow-up was sent, which event-mode message times cannot be compared with.

Invalid records are skipped here, and counted (``relance_records_dropped_total{stage="context"}``
by their kind): the engine, on the same topic, dead-letters them. So are empty values
other than the feeder's clock-only ones, which the engine counts too.
"""
from __future__ import annotations

import collections
import itertools
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

import orjson

from domain.lastcheck import facts_of, mirror_of
from domain.report import answered_within
from domain.safety import DistressClassifier, PhraseListClassifier, is_stop_word
from domain.state import SafetyFacts
from foundation.clock import wall_ms
from foundation.metrics import label
from foundation.settings import Settings
from schemas.records import (
    Erase, FollowupOutcome, InvalidRecord, MessageEvent, OptIn, OptOut, Profile, Tick, loads, parse_record,
)
from streams.ledger import Ledger, ledger_ttl_s
from streams.wiring import Wiring
from streams.topics import CLOCK_HEADER, FOLLOWUP_OUTCOMES, MESSAGES
from streams.rediskeys import context_bots_key, context_key, context_stage_keys, last_inbound_key, safety_key

log = logging.getLogger("relance.context")

BATCH_SIZE = 500
BATCH_WITHIN_S = 0.05

# KEYS: context list, context bots set, last inbound hash.
# ARGV: entry JSON, app, event_id, bot_id, kept messages, ttl ms, inbound ts ms or "".
# The latest inbound ts is updated before the duplicate check: it is idempotent, and a
# message re-sent after it left the trimmed list must still count for the stale check.
APPEND_SCRIPT = """
if ARGV[7] ~= '' then
  local seen = tonumber(redis.call('HGET', KEYS[3], ARGV[4]) or '-1')
  if tonumber(ARGV[7]) > seen then redis.call('HSET', KEYS[3], ARGV[4], ARGV[7]) end
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
end
for _, raw in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local entry = cjson.decode(raw)
  if entry.app == ARGV[2] and entry.event_id == ARGV[3] then return 0 end
end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[5]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 1
"""


@dataclass(frozen=True, slots=True)
class ContextEntry:
    """One message of a pair's context, as stored; a ``ContextMessage`` for the writer."""

    direction: str
    text: str
    ts: int
    app: str
    event_id: str


def entry_json(event: MessageEvent) -> bytes:
    return orjson.dumps({"direction": event.direction, "text": event.text, "ts": event.ts,
                         "app": event.app, "event_id": event.event_id})


def parse_entries(raw_entries: Iterable[bytes]) -> list[ContextEntry]:
    """Stored entries, oldest first (events may have arrived out of order)."""
    entries = [ContextEntry(**orjson.loads(raw)) for raw in raw_entries]
    return sorted(entries, key=lambda entry: entry.ts)


async def read_context(redis, user_id: str, bot_id: str) -> list[ContextEntry]:
    return parse_entries(await redis.lrange(context_key(user_id, bot_id), 0, -1))


UsableRecord = MessageEvent | Erase | Profile | OptOut | OptIn | Tick
Stamp = tuple[int, int | None]   # a record's partition, and the clock stamped on it if any
UNSTAMPED: Stamp = (0, None)


def usable_record(value: bytes | None) -> UsableRecord | None:
    """The record this stage acts on, or None (clock-only, kill switches); InvalidRecord if invalid."""
    if not value:
        return None
    record = parse_record(loads(value))
    return record if isinstance(record, UsableRecord) else None


class Answers:
    """The ``answered`` outcomes a batch's inbound messages add to follow-ups' stories."""

    def __init__(self, ledger: Ledger, publish: Callable[[FollowupOutcome], Awaitable[None]],
                 messaging_window: int) -> None:
        self.ledger = ledger
        self.publish = publish  # returns once Kafka has acknowledged the record
        self.messaging_window = messaging_window

    async def see(self, inbound: list[MessageEvent]) -> None:
        """Publish, then record, the answers in ``inbound``."""
        pairs = sorted({(event.user_id, event.bot_id) for event in inbound})
        if not pairs:
            return
        sent = dict(zip(pairs, await self.ledger.sent_unanswered(pairs)))
        answered: dict[str, FollowupOutcome] = {}
        for event in sorted(inbound, key=lambda event: event.ts):  # the batch's first answer is the one told
            for followup_id, app, sent_at in sent[(event.user_id, event.bot_id)]:
                if followup_id not in answered and answered_within(sent_at, event.ts, self.messaging_window):
                    answered[followup_id] = FollowupOutcome(followup_id, event.user_id, event.bot_id, app,
                                                            "answered", None, 0, event.ts)
        for outcome in answered.values():
            await self.publish(outcome)
        await self.ledger.record_answers([(o.user_id, o.followup_id, o.at) for o in answered.values()])


class ContextWriter:
    """Applies batches of ``messages`` records to Redis, one pipeline per batch; then, given
    ``answers``, tells the answers among the batch's inbound messages."""

    def __init__(self, redis, settings: Settings, on_dropped: Callable[[str], None] = lambda reason: None,
                 answers: Answers | None = None) -> None:
        self.redis = redis
        self.on_dropped = on_dropped  # told the reason of each record skipped as unusable
        self.kept_messages = settings.context_messages
        self.ttl_ms = settings.window
        self.append = redis.register_script(APPEND_SCRIPT)
        self.safety = SafetyMirror(redis, settings, PhraseListClassifier())
        self.answers = answers

    async def apply(self, values: Iterable[bytes | None], stamps: Iterable[Stamp | None] | None = None) -> None:
        """Apply records in order. ``stamps`` gives, per record, its partition and the
        stream's clock as the producer stamped it (event mode), if it did; None for a
        stamp that cannot be read, which makes the record unusable."""
        pipe = self.redis.pipeline(transaction=False)
        inbound: list[MessageEvent] = []
        for value, stamp in zip(values, stamps or itertools.repeat(UNSTAMPED)):
            record = self._usable(value, stamp)
            if stamp is None:
                continue
            self.safety.tell_clock(*stamp)
            if isinstance(record, Erase):
                # The erase must see every write queued before it, so the batch splits here.
                await self.safety.queue_writes(pipe)
                await pipe.execute()
                await self.erase(record.user_id)
                inbound = [event for event in inbound if event.user_id != record.user_id]
                continue
            if isinstance(record, MessageEvent):
                await self._queue_append(pipe, record)
                if record.inbound:
                    inbound.append(record)
            if record is not None:
                await self.safety.apply(record)
        await self.safety.queue_writes(pipe)
        await pipe.execute()
        if self.answers is not None:
            await self.answers.see(inbound)

    def _usable(self, value: bytes | None, stamp: Stamp | None) -> UsableRecord | None:
        """The record, or None; one skipped as unusable is told to ``on_dropped``."""
        try:
            if stamp is None:
                raise InvalidRecord(f"header {CLOCK_HEADER} is not a whole number of ms", "invalid_header")
            if not value and stamp[1] is None:  # empty, and not the feeder's clock-only record
                self.on_dropped("empty_value")
            return usable_record(value)
        except InvalidRecord as exc:
            self.on_dropped(exc.kind)
            return None

    async def _queue_append(self, pipe, event: MessageEvent) -> None:
        keys = [context_key(event.user_id, event.bot_id), context_bots_key(event.user_id),
                last_inbound_key(event.user_id)]
        inbound_ts = str(event.ts) if event.inbound else ""
        args = [entry_json(event), event.app, event.event_id, event.bot_id, self.kept_messages,
                self.ttl_ms, inbound_ts]
        await self.append(keys=keys, args=args, client=pipe)

    async def erase(self, user_id: str) -> None:
        self.safety.forget(user_id)
        deleted = await self.redis.delete(*await context_stage_keys(self.redis, user_id))
        log.info("context erased", extra={"user_keys_deleted": deleted})


class SafetyMirror:
    """Each user's ``SafetyFacts`` in Redis (``safety_key``), changed by the records that
    change them in the decision core, with the same methods and the same clock.

    Most records change nothing here: a user's facts are read (one GET) only when a
    profile, an opt-out or opt-in, a stop word or signs of distress come, and written once
    per batch."""

    def __init__(self, redis, settings: Settings, classifier: DistressClassifier) -> None:
        self.redis = redis
        self.classifier = classifier
        self.window, self.cooloff, self.unknown_age = settings.window, settings.distress_cooloff, settings.unknown_age
        self.wall = settings.clock == "wall"
        # Each partition has its own clock, as each has its own decision core: batches mix
        # partitions, and another's clock may be ahead.
        self.clocks: dict[int, int] = collections.defaultdict(lambda: -1)
        self.partition = 0
        self.clock = -1
        self.changed: dict[str, SafetyFacts] = {}  # this batch's, written by queue_writes

    def tell_clock(self, partition: int, stamped: int | None) -> None:
        """The clock before a record of ``partition`` takes effect, as the engine moves its
        own: the wall clock, or the stream's stamp (never backwards)."""
        self.partition = partition
        now = wall_ms() if self.wall else stamped
        if now is not None and now > self.clocks[partition]:
            self.clocks[partition] = now
        self.clock = self.clocks[partition]

    async def apply(self, record: UsableRecord) -> None:
        if isinstance(record, (MessageEvent, Tick)) and not self.wall and record.ts > self.clock:
            self.clock = self.clocks[self.partition] = record.ts
        if isinstance(record, MessageEvent):
            await self._message(record)
        elif isinstance(record, Profile):
            (await self._facts(record.user_id)).minor = record.minor
        elif isinstance(record, OptOut):
            (await self._facts(record.user_id)).opt_out(record.bot_id)
        elif isinstance(record, OptIn):
            (await self._facts(record.user_id)).opt_in(record.bot_id, self.clock)

    async def _message(self, event: MessageEvent) -> None:
        if not event.inbound or event.ts < self.clock - self.window:  # too old: it changes nothing
            return
        stop = is_stop_word(event.text)
        distress = self.classifier.detect(event.text)
        if stop:
            (await self._facts(event.user_id)).stop_word(event.bot_id, event.ts)
        if distress is not None:
            (await self._facts(event.user_id)).distressed(event.ts, self.cooloff)

    async def _facts(self, user_id: str) -> SafetyFacts:
        facts = self.changed.get(user_id)
        if facts is None:
            facts, _ = facts_of(await self.redis.get(safety_key(user_id)))
            self.changed[user_id] = facts
        return facts

    async def queue_writes(self, pipe) -> None:
        for user_id, facts in self.changed.items():
            pipe.set(safety_key(user_id), mirror_of(facts, self.unknown_age))
        self.changed = {}

    def forget(self, user_id: str) -> None:
        self.changed.pop(user_id, None)


def stamp_of(event) -> Stamp | None:
    """A Faust event's partition and the stream's clock a producer stamped on it
    (``devstack/feeder.py``), if any; None if the stamp is not a whole number."""
    for name, value in event.message.headers or ():
        if name == CLOCK_HEADER:
            try:
                return event.message.partition, int(value)
            except (TypeError, ValueError):
                return None
    return event.message.partition, None


def answers_of(wiring: Wiring) -> Answers | None:
    """The worker's ``Answers`` (wall mode), publishing through its Faust producer."""
    settings = wiring.settings
    if settings.clock != "wall":
        return None

    async def publish(outcome: FollowupOutcome) -> None:
        sent = await wiring.topic(FOLLOWUP_OUTCOMES).send(key=outcome.user_id.encode(), value=outcome.to_json(),
                                                         force=True)
        await sent  # acknowledged before the ledger records it
    return Answers(Ledger(wiring.redis, ledger_ttl_s(settings)), publish, settings.messaging_window)


def install(wiring: Wiring) -> None:
    settings = wiring.settings

    @wiring.app.agent(wiring.topic(MESSAGES), name="context")
    async def context(stream):
        dropped = wiring.metrics.records_dropped
        writer = ContextWriter(wiring.redis, settings,
                               on_dropped=lambda reason: dropped.labels(stage="context", reason=label(reason)).inc(),
                               answers=answers_of(wiring))
        # No table writes here, so batches may leave stream iteration.
        async for events in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
            await writer.apply([event.value for event in events], [stamp_of(event) for event in events])
