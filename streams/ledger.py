"""The follow-up ledger: where each follow-up stands, one Redis hash per user, owned here.

Each follow-up request is one field of its user's hash (``relance:ledger:{user}``), named
by its ``followup_id``. The field moves through these states, each move one atomic Redis
command or script:

- ``<due ts>``: the engine published the request (written once Kafka acknowledged it).
  A request whose field exists is never published again, whatever the engine re-decides.
- ``try:<n>:<lease end ms>``: a generator is writing try ``n``; another copy of the
  request may take over once the lease ends (the first holder crashed).
- ``wait:<n>``: try ``n`` failed; the request waits on ``followups.retry``.
- ``generated``, ``dead_lettered``, ``cancelled:<reason>``: final for the generator.
  Copies are dropped.

A missing field, or a missing hash, means the user was erased: the engine deletes the
hash when the erasure reaches it, and no move here ever re-creates it. The hash expires
``2 W`` after its last publication, long after anything could still concern it.
"""
from __future__ import annotations

from typing import Iterable

from foundation.settings import Settings
from schemas.records import FollowupRequest

PREFIX = "relance:ledger"

GENERATED, CANCELLED, DEAD_LETTERED = "generated", "cancelled", "dead_lettered"
# What CLAIM_SCRIPT answers.
CLAIMED, MISSING, DONE, STALE, BUSY = "claimed", "missing", "done", "stale", "busy"


def ledger_key(user_id: str) -> str:
    """Hash: followup_id -> state. The user in a hash tag, as every per-user key (streams/rediskeys.py)."""
    return f"{PREFIX}:{{{user_id}}}"


def ledger_ttl_s(settings: Settings) -> int:
    return 2 * settings.window // 1000


def final_state(outcome: str, reason: str | None) -> str:
    return f"{CANCELLED}:{reason}" if outcome == CANCELLED else outcome


# KEYS: ledger. ARGV: followup_id, due ts, time to live (s). One command, not two.
_PUBLISHED_SCRIPT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
"""

# KEYS: ledger. ARGV: followup_id, tries already made, now ms, lease end ms.
# Takes the request's next try unless it has ended, a later copy superseded it, or
# another copy's try is running under a live lease ("busy:<lease end>").
_CLAIM_SCRIPT = """
local state = redis.call('HGET', KEYS[1], ARGV[1])
if not state then return 'missing' end
if state == 'generated' or state == 'dead_lettered' or string.sub(state, 1, 10) == 'cancelled:' then
  return 'done'
end
local tries = tonumber(ARGV[2])
local waiting = string.match(state, '^wait:(%d+)$')
local running, lease = string.match(state, '^try:(%d+):(%d+)$')
if waiting and tries < tonumber(waiting) then return 'stale' end
if running then
  running, lease = tonumber(running), tonumber(lease)
  if tries < running - 1 then return 'stale' end
  if tries == running - 1 and tonumber(ARGV[3]) < lease then return 'busy:' .. lease end
end
redis.call('HSET', KEYS[1], ARGV[1], 'try:' .. (tries + 1) .. ':' .. ARGV[4])
return 'claimed'
"""

# KEYS: ledger. ARGV: followup_id, state. Never re-creates an erased ledger or field.
_SET_STATE_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


class Ledger:
    """Every move on the ledger. Scripts are registered here and loaded by Redis on first use."""

    def __init__(self, redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._published = redis.register_script(_PUBLISHED_SCRIPT)
        self._claim = redis.register_script(_CLAIM_SCRIPT)
        self._set_state = redis.register_script(_SET_STATE_SCRIPT)

    # -- the engine ------------------------------------------------------------------------

    async def unpublished(self, requests: list[FollowupRequest]) -> list[FollowupRequest]:
        """The requests the ledger has never seen, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for request in requests:
                pipe.hexists(ledger_key(request.user_id), request.followup_id)
            seen = await pipe.execute()
        return [request for request, known in zip(requests, seen) if not known]

    async def record_published(self, requests: Iterable[FollowupRequest]) -> None:
        """Mark requests published (Kafka acknowledged them), in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for request in requests:
                await self._published(keys=[ledger_key(request.user_id)],  # queued in the pipeline
                                      args=[request.followup_id, request.due_ts, self.ttl_s], client=pipe)
            await pipe.execute()

    async def erase(self, user_ids: list[str]) -> None:
        await self.redis.delete(*(ledger_key(user_id) for user_id in user_ids))

    # -- the generator ---------------------------------------------------------------------

    async def claim(self, request: FollowupRequest, tries: int, now: int, lease_end: int) -> str:
        verdict = await self._claim(keys=[ledger_key(request.user_id)],
                                    args=[request.followup_id, tries, now, lease_end])
        return verdict.decode()

    async def set_state(self, request: FollowupRequest, state: str) -> bool:
        """Move an existing field; False when the user was erased meanwhile."""
        return bool(await self._set_state(keys=[ledger_key(request.user_id)], args=[request.followup_id, state]))

    @staticmethod
    def queue_exists(pipe, request: FollowupRequest) -> None:
        """Queue, in a caller's pipeline, whether the request's field still exists (not erased)."""
        pipe.hexists(ledger_key(request.user_id), request.followup_id)


def durability_problems(info: dict) -> list[str]:
    """What makes a Redis unfit to keep the ledger, from its ``INFO`` (persistence and
    memory sections): a restart would forget which follow-ups went out, or an eviction
    would forget one, and the same follow-up could go twice."""
    problems = []
    if int(info.get("aof_enabled", 0)) != 1:
        problems.append("the append-only file is off (appendonly no): a restart loses the ledger")
    if info.get("maxmemory_policy", "noeviction") != "noeviction":
        problems.append(f"maxmemory-policy is {info['maxmemory_policy']}: it may evict ledger keys")
    return problems
