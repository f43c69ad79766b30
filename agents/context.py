"""The context agent: each pair's recent conversation in Redis, for the generator.

It reads ``messages`` (canonical events, and the control events the control agent forwards
there) and keeps, per pair, the last ``context_messages`` messages as compact JSON, the
bots that have a context, and the ts of the user's latest inbound message per bot (the
generator's stale check). Every write is idempotent, so a re-delivered batch after a crash
changes nothing: a message already in the list is not appended again, and the latest
inbound ts only moves forward. An ``erase`` record deletes this stage's keys of the user.

Invalid records are skipped here: the engine, on the same topic, dead-letters them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import orjson

from schemas.records import Erase, InvalidRecord, MessageEvent, loads, parse_record
from streams.wiring import Wiring
from streams.topics import MESSAGES
from streams.rediskeys import context_bots_key, context_key, context_stage_keys, last_inbound_key

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


def usable_record(value: bytes | None) -> MessageEvent | Erase | None:
    """The record this stage acts on, or None (clock-only, invalid, other controls)."""
    if not value:
        return None
    try:
        record = parse_record(loads(value))
    except InvalidRecord:
        return None
    return record if isinstance(record, (MessageEvent, Erase)) else None


class ContextWriter:
    """Applies batches of ``messages`` records to Redis, one pipeline per batch."""

    def __init__(self, redis, kept_messages: int, ttl_ms: int) -> None:
        self.redis = redis
        self.kept_messages = kept_messages
        self.ttl_ms = ttl_ms
        self.append = redis.register_script(APPEND_SCRIPT)

    async def apply(self, values: Iterable[bytes | None]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for value in values:
            record = usable_record(value)
            if isinstance(record, MessageEvent):
                await self._queue_append(pipe, record)
            elif isinstance(record, Erase):
                # The erase must see every write queued before it, so the batch splits here.
                await pipe.execute()
                await self.erase(record.user_id)
        await pipe.execute()

    async def _queue_append(self, pipe, event: MessageEvent) -> None:
        keys = [context_key(event.user_id, event.bot_id), context_bots_key(event.user_id),
                last_inbound_key(event.user_id)]
        inbound_ts = str(event.ts) if event.inbound else ""
        args = [entry_json(event), event.app, event.event_id, event.bot_id, self.kept_messages,
                self.ttl_ms, inbound_ts]
        await self.append(keys=keys, args=args, client=pipe)

    async def erase(self, user_id: str) -> None:
        deleted = await self.redis.delete(*await context_stage_keys(self.redis, user_id))
        log.info("context erased", extra={"user_keys_deleted": deleted})


def install(wiring: Wiring) -> None:
    settings = wiring.settings

    @wiring.app.agent(wiring.topic(MESSAGES), name="context")
    async def context(stream):
        writer = ContextWriter(wiring.redis, settings.context_messages, settings.window)
        # No table writes here, so batches may leave stream iteration.
        async for values in stream.take(BATCH_SIZE, within=BATCH_WITHIN_S):
            await writer.apply(values)
