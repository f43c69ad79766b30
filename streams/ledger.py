"""The follow-up ledger: where each follow-up stands, one Redis hash per user, owned here.

Each follow-up request is one field of its user's hash (``relance:ledger:{user}``), named
by its ``followup_id``. The field moves through these states, each move one atomic Redis
command or script:

- no field yet: the engine published the request, once (its outputs and state are one
  Kafka transaction: Redis is not on its way). The first try makes the field (``0``,
  then ``try:1:...``); a number is also what fields written by older engines hold.
- ``try:<n>:<lease end ms>``: a generator is writing try ``n``; another copy of the
  request may take over once the lease ends (the first holder crashed).
- ``wait:<n>``: try ``n`` failed; the request waits on ``followups.retry``.
- ``generated``, ``dead_lettered:<reason>``, ``cancelled:<reason>``: final for the generator.
  Copies are dropped. The generator moves only its own states (a number, ``try``,
  ``wait``): a late try can never take a follow-up back from the sender.

Then the sender (``agents/sender.py``) moves ``generated`` on; a follow-up is sent at
most once (spec section 9):

- ``sending:<n>:<lease end ms>``: written before send attempt ``n`` goes out. Found with
  its lease run out, the holder died and the platform may have the message: the
  follow-up is ``unknown``, never sent again.
- ``retry:<n>``: ``n`` attempts made, none reached the platform or each was refused (a
  429, a 5xx, a refused token); the follow-up waits on ``delivery.retry``.
- ``ending:<lease end ms>:<final>``: the outcome is known and its record on its way to
  ``followups.outcomes``; then the field becomes ``<final>``. Found with its lease run
  out, the record is published again, so no outcome is lost.
  The first receipt that comes for an ``unknown`` (or ``ending`` ``unknown``) send adds
  ``sent`` to its story, once, and the field ends ``sent``.
- ``sent``, ``unknown``, ``failed:<code>``, ``cancelled:<reason>``,
  ``dead_lettered:<reason>``: final for the sender. ``sent`` says the platform took the
  message; any receipt or echo that comes for an ``unknown`` one settles it as ``sent``.

Beside each follow-up's field, the same hash holds what the receipts need:
``<followup_id>:receipt`` (the furthest the platform said it went: ``sent``,
``delivered``, ``read``, or ``failed``) and ``mid:<message id>`` (the follow-up a
platform message id belongs to, with its bot, app and send time, for Messenger and
Instagram receipts that name only message ids or a watermark), and ``<followup_id>:answered``
(the ts of the user's answer, once its ``answered`` outcome is published: the context
stage, ``agents/context.py``, publishes one per follow-up).

Redis may forget: a Redis restarted without its data, or a key lost, must not make a
follow-up end twice or never. So a missing field is not read as "erased". An erasure
leaves its own mark: the engine deletes the hash and writes a tombstone
(``relance:erased:<digest of the user>``, the time of the erasure, for ``messaging_window``;
the user's id itself is not kept). A move that finds its field missing asks the tombstone:
erased after the follow-up was made (``since``), it answers ``missing`` and re-creates
nothing; otherwise Redis lost the field, and the move goes on as if the field held the
state it starts from (the claims re-create it; the sender's claim first asks Kafka
whether a call went out, ``streams/attempts.py``). What a wiped Redis cannot give back is
said in the README ("Crash safety"). The hash expires ``2 W`` after the last claim
that made it, long after anything could still concern it.
"""
from __future__ import annotations

import hashlib
from typing import Awaitable, Callable

import orjson

from foundation.settings import Settings
from schemas.records import FollowupRequest, Receipt

PREFIX = "relance:ledger"
PREFIX_ERASED = "relance:erased"
DAY_MS = 86_400_000

GENERATED, CANCELLED, DEAD_LETTERED = "generated", "cancelled", "dead_lettered"
# What the claim scripts answer (the sender's also PENDING, LOST and ENDING).
CLAIMED, MISSING, DONE, STALE, BUSY = "claimed", "missing", "done", "stale", "busy"
PENDING, LOST, ENDING = "pending", "lost", "ending"
SENT, UNKNOWN, FAILED = "sent", "unknown", "failed"


def ledger_key(user_id: str) -> str:
    """Hash: followup_id -> state. The user in a hash tag, as every per-user key (streams/rediskeys.py)."""
    return f"{PREFIX}:{{{user_id}}}"


def ledger_ttl_s(settings: Settings) -> int:
    return 2 * settings.window // 1000


def erasure_key(user_id: str) -> str:
    """String: when the user was last erased (wall ms). Named by a digest, so that no key
    names an erased user; kept while a request made before the erasure could still leave."""
    return f"{PREFIX_ERASED}:{hashlib.blake2b(user_id.encode(), digest_size=16).hexdigest()}"


def final_state(outcome: str, reason: str | None) -> str:
    """``cancelled:user_returned``, ``failed:131026``, ``dead_lettered:unknown_bot``, ``sent``:
    the outcome with its reason, when it has one (``outcome_of`` reads it back)."""
    return f"{outcome}:{reason}" if reason else outcome


# KEYS: ledger. ARGV: followup_id, tries already made, now ms, lease end ms, '1' when a
# missing field was lost (not erased), time to live (s).
# Takes the request's next try unless it has ended, a later copy superseded it, or
# another copy's try is running under a live lease ("busy:<lease end>").
_CLAIM_SCRIPT = """
local state = redis.call('HGET', KEYS[1], ARGV[1])
if not state then
  if ARGV[5] ~= '1' then return 'missing' end
  state = '0'  -- a fresh request, or one whose field Redis lost: it starts again
  redis.call('HSET', KEYS[1], ARGV[1], state)
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
local tries = tonumber(ARGV[2])
local waiting = string.match(state, '^wait:(%d+)$')
local running, lease = string.match(state, '^try:(%d+):(%d+)$')
if not (tonumber(state) or waiting or running) then return 'done' end  -- generated, or ended
if waiting and tries < tonumber(waiting) then return 'stale' end
if running then
  running, lease = tonumber(running), tonumber(lease)
  if tries < running - 1 then return 'stale' end
  if tries == running - 1 and tonumber(ARGV[3]) < lease then return 'busy:' .. lease end
end
redis.call('HSET', KEYS[1], ARGV[1], 'try:' .. (tries + 1) .. ':' .. ARGV[4])
return 'claimed'
"""

# KEYS: ledger. ARGV: followup_id, state. Never re-creates an erased ledger or field, and
# moves only the generator's own states: once generated, the follow-up is the sender's.
_SET_STATE_SCRIPT = """
local state = redis.call('HGET', KEYS[1], ARGV[1])
if not state then return 0 end
if not (tonumber(state) or string.sub(state, 1, 4) == 'try:' or string.sub(state, 1, 5) == 'wait:') then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# The furthest a receipt took a follow-up, as a rank; 'failed' ends it.
_RECEIPT_RANKS = """
local RANK = {sent = 1, delivered = 2, read = 3, failed = 4}
"""

# KEYS: ledger. ARGV: followup_id, tries made, now ms, lease end ms, '1' when a missing
# field was lost (not erased), time to live (s), the state a lost field is taken to hold.
# Takes the next send attempt of a generated follow-up, or of one waiting on delivery.retry.
# A 'sending' whose lease ran out becomes 'ending:<lease>:unknown' (or what a receipt
# already proved); an 'ending' whose lease ran out is taken to be published again.
# A field Redis lost is taken as generated (the record in hand is the generator's), or, when
# Kafka kept a call made for it, as that call's 'sending' with its lease run out.
_SENDER_CLAIM_SCRIPT = _RECEIPT_RANKS + """
local state = redis.call('HGET', KEYS[1], ARGV[1])
if not state then
  if ARGV[5] ~= '1' then return 'missing' end
  state = ARGV[7]
  redis.call('HSET', KEYS[1], ARGV[1], state)
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
local tries, now = tonumber(ARGV[2]), tonumber(ARGV[3])
local function claim()
  redis.call('HSET', KEYS[1], ARGV[1], 'sending:' .. (tries + 1) .. ':' .. ARGV[4])
  return 'claimed'
end
if state == 'generated' then return claim() end
local waiting = string.match(state, '^retry:(%d+)$')
if waiting then
  -- The copy that made attempt n may claim too: a crash can come between this state and
  -- the publication of the next copy. Nothing is in flight, so the first claim wins.
  if tries < tonumber(waiting) - 1 then return 'stale' end
  return claim()
end
local attempt, lease = string.match(state, '^sending:(%d+):(%d+)$')
if attempt then
  if tries < tonumber(attempt) - 1 then return 'stale' end
  if now < tonumber(lease) then return 'busy:' .. lease end
  -- A receipt already came: the platform had the message.
  local final = redis.call('HEXISTS', KEYS[1], ARGV[1] .. ':receipt') == 1 and 'sent' or 'unknown'
  redis.call('HSET', KEYS[1], ARGV[1], 'ending:' .. ARGV[4] .. ':' .. final)
  return 'lost:' .. attempt .. ':' .. final
end
local ending, final = string.match(state, '^ending:(%d+):(.+)$')
if ending then
  if now < tonumber(ending) then return 'busy:' .. ending end
  redis.call('HSET', KEYS[1], ARGV[1], 'ending:' .. ARGV[4] .. ':' .. final)
  return 'ending:' .. final
end
if tonumber(state) or string.sub(state, 1, 4) == 'try:' or string.sub(state, 1, 5) == 'wait:' then
  return 'pending'
end
return 'done'
"""

# KEYS: ledger. ARGV: followup_id, the 'sending' state this sender wrote, the final state,
# the new lease end, (for a sent one) its message id and that id's entry, '1' when a
# missing field was lost (not erased), time to live (s).
# The outcome is known: 'ending:<lease>:<final>', unless the field moved meanwhile. A
# definite answer still settles an 'unknown' declared by another copy after a lease ran out;
# an answer lost after a receipt already came is 'sent': the platform had the message.
_BEGIN_ENDING_SCRIPT = """
local state = redis.call('HGET', KEYS[1], ARGV[1])
if not state then
  if ARGV[7] ~= '1' then return {0, ''} end
  state = ARGV[2]  -- Redis lost it while the call ran: the call was ours
end
local final = ARGV[3]
if state ~= ARGV[2] and not (state == 'unknown' and final ~= 'unknown') then return {0, state} end
if final == 'unknown' and redis.call('HEXISTS', KEYS[1], ARGV[1] .. ':receipt') == 1 then final = 'sent' end
local ending = 'ending:' .. ARGV[4] .. ':' .. final
redis.call('HSET', KEYS[1], ARGV[1], ending)
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'mid:' .. ARGV[5], ARGV[6]) end
if ARGV[7] == '1' then redis.call('EXPIRE', KEYS[1], ARGV[8]) end
return {1, ending}
"""

# KEYS: ledger. ARGV: followup_id, the 'ending' state, its final state. Compare and set; an
# unknown ending that a receipt already settled (it came while the outcome was published)
# is final as sent.
_FINISH_SCRIPT = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local final = ARGV[3]
if final == 'unknown' and redis.call('HEXISTS', KEYS[1], ARGV[1] .. ':receipt') == 1 then final = 'sent' end
redis.call('HSET', KEYS[1], ARGV[1], final)
return 1
"""

# KEYS: ledger. ARGV: followup_id, expected state, new state, '1' when a missing field
# was lost (not erased), time to live (s). Compare and set.
_MOVE_SCRIPT = """
local state = redis.call('HGET', KEYS[1], ARGV[1])
if not state and ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return 1
end
if state ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

# KEYS: ledger. ARGV: mode ('check' or 'apply'), kind (sent, delivered, read, failed),
# how the receipt names its follow-ups ('id', 'mid' or 'watermark'), the id / message ids
# (newline-separated) / watermark ms, bot_id, app.
# Returns {followup_id, outcome, ...}: the outcome records the receipt adds to stories.
# 'check' only reads; 'apply' records the receipt after those records were published, so a
# crash in between publishes them again rather than never.
_RECEIPT_SCRIPT = _RECEIPT_RANKS + """
local mode, kind, by, value, bot, app = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local ids = {}
local function belongs(entry)
  local sent = cjson.decode(entry)
  return sent.bot == bot and sent.app == app, sent
end
if by == 'id' then
  ids[1] = value
elseif by == 'mid' then
  for mid in string.gmatch(value, '[^\\n]+') do
    local entry = redis.call('HGET', KEYS[1], 'mid:' .. mid)
    if entry then
      local ok, sent = belongs(entry)
      if ok then ids[#ids + 1] = sent.id end
    end
  end
else
  local fields = redis.call('HGETALL', KEYS[1])
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 4) == 'mid:' then
      local ok, sent = belongs(fields[i + 1])
      if ok and sent.at <= tonumber(value) then ids[#ids + 1] = sent.id end
    end
  end
end
local out, seen = {}, {}
for _, id in ipairs(ids) do
  local state = not seen[id] and redis.call('HGET', KEYS[1], id)
  seen[id] = true
  if state and (state == 'sent' or state == 'unknown' or string.sub(state, 1, 8) == 'sending:'
                or string.sub(state, 1, 7) == 'ending:') then
    local had = redis.call('HGET', KEYS[1], id .. ':receipt')
    local rank = had and RANK[had] or 0
    local steps = {}
    -- The first word of the platform about an unknown send settles it: sent, once.
    local unknown = state == 'unknown' or string.match(state, '^ending:%d+:unknown$') ~= nil
    if unknown and rank == 0 then steps[#steps + 1] = 'sent' end
    if kind == 'failed' then
      if rank < RANK.delivered then steps[#steps + 1] = 'failed' end
    elseif kind ~= 'sent' and RANK[kind] > rank and rank < RANK.failed then
      steps[#steps + 1] = kind
    end
    if #steps > 0 or (kind == 'sent' and rank < RANK.sent) then
      if mode == 'apply' then
        if kind == 'failed' or RANK[kind] > rank then redis.call('HSET', KEYS[1], id .. ':receipt', kind) end
        if state == 'unknown' then redis.call('HSET', KEYS[1], id, 'sent') end  -- the platform had it
      end
      for _, step in ipairs(steps) do
        out[#out + 1] = id
        out[#out + 1] = step
      end
    end
  end
end
return out
"""

# KEYS: ledger. ARGV: bot_id. The follow-ups this bot sent the user (with a message id)
# whose answer is not recorded yet: {followup_id, app, send time ms, ...}.
_SENT_UNANSWERED_SCRIPT = """
local out = {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 4) == 'mid:' then
    local sent = cjson.decode(fields[i + 1])
    if sent.bot == ARGV[1] and redis.call('HEXISTS', KEYS[1], sent.id .. ':answered') == 0 then
      out[#out + 1] = sent.id
      out[#out + 1] = sent.app
      out[#out + 1] = string.format('%d', sent.at)
    end
  end
end
return out
"""

# KEYS: ledger. ARGV: followup_id, the answer's ts. Never re-creates an erased ledger.
_ANSWERED_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
return redis.call('HSETNX', KEYS[1], ARGV[1] .. ':answered', ARGV[2])
"""


class Ledger:
    """Every move on the ledger. Scripts are registered here and loaded by Redis on first use."""

    def __init__(self, redis, ttl_s: int, erased_for_ms: int = DAY_MS,
                 calls_made: Callable[[FollowupRequest], Awaitable[int]] | None = None) -> None:
        """``calls_made``: the send-API calls Kafka kept for a follow-up (``streams/attempts.py``),
        asked when Redis lost its field; without it, a lost field is taken as never sent."""
        self.redis = redis
        self.ttl_s = ttl_s
        self.erased_for_ms = erased_for_ms
        self.calls_made = calls_made
        self._claim = redis.register_script(_CLAIM_SCRIPT)
        self._set_state = redis.register_script(_SET_STATE_SCRIPT)
        self._sender_claim = redis.register_script(_SENDER_CLAIM_SCRIPT)
        self._begin_ending = redis.register_script(_BEGIN_ENDING_SCRIPT)
        self._move = redis.register_script(_MOVE_SCRIPT)
        self._finish = redis.register_script(_FINISH_SCRIPT)
        self._receipt = redis.register_script(_RECEIPT_SCRIPT)
        self._sent_unanswered = redis.register_script(_SENT_UNANSWERED_SCRIPT)
        self._answered = redis.register_script(_ANSWERED_SCRIPT)

    # -- erasure -----------------------------------------------------------------------------

    async def erase(self, user_ids: list[str], at: int) -> None:
        """Forget the users' follow-ups, leaving the tombstone that says they were erased at ``at``."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.delete(ledger_key(user_id))
                pipe.set(erasure_key(user_id), at, px=self.erased_for_ms)
            await pipe.execute()

    async def erased_since(self, user_id: str, since: int) -> bool:
        """Whether the user was erased at or after ``since`` (ms): a follow-up made then is gone."""
        return erased_after(await self.redis.get(erasure_key(user_id)), since)

    async def _lost(self, request: FollowupRequest, since: int) -> str:
        """'1' when the request's missing field was lost by Redis, '0' when an erasure took it."""
        return "0" if await self.erased_since(request.user_id, since) else "1"

    # -- the generator ---------------------------------------------------------------------

    async def claim(self, request: FollowupRequest, tries: int, now: int, lease_end: int, since: int = 0) -> str:
        """The request's next try. ``since``: when the engine published it, for a first try
        (its field may never have been made); 0 for later ones, whose field the first made:
        any tombstone then means an erasure after it."""
        key, args = [ledger_key(request.user_id)], [request.followup_id, tries, now, lease_end]
        verdict = (await self._claim(keys=key, args=[*args, "0", self.ttl_s])).decode()
        if verdict == MISSING:
            verdict = (await self._claim(keys=key, args=[*args, await self._lost(request, since), self.ttl_s])).decode()
        return verdict

    async def set_state(self, request: FollowupRequest, state: str) -> bool:
        """Move a field the generator holds; False when the user was erased meanwhile, or
        the follow-up has already gone past the generator."""
        return bool(await self._set_state(keys=[ledger_key(request.user_id)], args=[request.followup_id, state]))

    # -- the sender ------------------------------------------------------------------------

    async def claim_send(self, request: FollowupRequest, tries: int, now: int, lease_end: int) -> str:
        """``claimed`` (the field is now ``sending:<tries + 1>:<lease_end>``), ``missing``,
        ``done``, ``stale``, ``pending`` (the generator is not done), ``busy:<lease end>``,
        ``lost:<attempt>:<final>`` or ``ending:<final>`` (this copy now ends it: the field
        is ``ending:<lease_end>:<final>``; publish the outcome, then move it to ``<final>``).
        The generator made the field: missing with a tombstone, it was erased since; missing
        without one, Redis lost it, and a call Kafka kept beyond the ``tries`` refused ones
        makes it ``lost:<call>:unknown`` (or ``sent`` after a receipt): never sent again."""
        key, args = [ledger_key(request.user_id)], [request.followup_id, tries, now, lease_end]
        verdict = (await self._sender_claim(keys=key, args=[*args, "0", self.ttl_s, GENERATED])).decode()
        if verdict == MISSING:
            lost = await self._lost(request, 0)
            verdict = (await self._sender_claim(keys=key, args=[*args, lost, self.ttl_s,
                                                                await self._lost_state(request, tries, lost)])).decode()
        return verdict

    async def _lost_state(self, request: FollowupRequest, tries: int, lost: str) -> str:
        """What a field Redis lost held: ``generated``, or the ``sending`` of a call Kafka kept
        that is none of the ``tries`` calls known refused (its lease long run out)."""
        made = await self.calls_made(request) if lost == "1" and self.calls_made is not None else 0
        return sending_state(made, 0) if made > tries else GENERATED

    async def begin_ending(self, request: FollowupRequest, sending: str, final: str, lease_end: int,
                           message_id: str | None = None, sent_at: int = 0) -> str | None:
        """``sending`` -> ``ending:<lease_end>:<final>``, keeping a sent message's id for the
        receipts; the ending state, or None when the field is no longer ours (moved, or
        erased)."""
        entry = orjson.dumps({"id": request.followup_id, "bot": request.bot_id, "app": request.app, "at": sent_at})
        key, args = [ledger_key(request.user_id)], [request.followup_id, sending, final, lease_end, message_id or "", entry]
        moved, state = await self._begin_ending(keys=key, args=[*args, "0", self.ttl_s])
        if not moved and not state:  # missing
            moved, state = await self._begin_ending(keys=key, args=[*args, await self._lost(request, 0), self.ttl_s])
        return state.decode() if moved else None

    async def finish(self, request: FollowupRequest, ending: str) -> bool:
        """``ending:<lease>:<final>`` -> its final state, once its outcome is published;
        False when the field is no longer that ending."""
        return bool(await self._finish(keys=[ledger_key(request.user_id)],
                                       args=[request.followup_id, ending, final_of(ending)]))

    async def move(self, request: FollowupRequest, expected: str, state: str) -> bool:
        """Compare and set: ``expected`` -> ``state``; False when the field is not
        ``expected`` (or missing: erased)."""
        key, args = [ledger_key(request.user_id)], [request.followup_id, expected, state]
        if await self._move(keys=key, args=[*args, "0", self.ttl_s]):
            return True
        if await self.redis.hexists(key[0], request.followup_id):
            return False
        return bool(await self._move(keys=key, args=[*args, await self._lost(request, 0), self.ttl_s]))

    async def where_they_stand(self, user_id: str, followup_ids: list[str]) -> dict[str, dict]:
        """Each follow-up's state and the furthest receipt, for ``relance explain``."""
        fields = [field for fid in followup_ids for field in (fid, f"{fid}:receipt")]
        values = await self.redis.hmget(ledger_key(user_id), fields) if fields else []
        shown = [value.decode() if value is not None else None for value in values]
        return {fid: {"state": shown[2 * i], "receipt": shown[2 * i + 1]} for i, fid in enumerate(followup_ids)}

    # -- receipts (ingest) -------------------------------------------------------------------

    async def receipt_outcomes(self, receipts: list[Receipt], apply: bool) -> list[list[tuple[str, str]]]:
        """For each receipt, the (followup_id, outcome) records it adds to stories, in one
        round trip. ``apply=False`` only reads; ``apply=True`` records the receipts (after
        their records were published)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for receipt in receipts:
                by, value = _named_by(receipt)
                await self._receipt(keys=[ledger_key(receipt.user_id)],  # queued in the pipeline
                                    args=["apply" if apply else "check", receipt.kind, by, value,
                                          receipt.bot_id, receipt.app], client=pipe)
            answers = await pipe.execute()
        return [[(answer[i].decode(), answer[i + 1].decode()) for i in range(0, len(answer), 2)] for answer in answers]

    # -- answers (context) -------------------------------------------------------------------

    async def sent_unanswered(self, pairs: list[tuple[str, str]]) -> list[list[tuple[str, str, int]]]:
        """For each (user, bot) pair, the follow-ups the bot sent the user whose answer is
        not recorded: (followup_id, app, send time ms), in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id, bot_id in pairs:
                await self._sent_unanswered(keys=[ledger_key(user_id)], args=[bot_id], client=pipe)
            answers = await pipe.execute()
        return [[(answer[i].decode(), answer[i + 1].decode(), int(answer[i + 2])) for i in range(0, len(answer), 3)]
                for answer in answers]

    async def record_answers(self, answers: list[tuple[str, str, int]]) -> None:
        """(user, followup_id, answer ts): their ``answered`` outcomes are published."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id, followup_id, ts in answers:
                await self._answered(keys=[ledger_key(user_id)], args=[followup_id, ts], client=pipe)
            await pipe.execute()

    @staticmethod
    def queue_erasure(pipe, user_id: str) -> None:
        """Queue, in a caller's pipeline, the user's tombstone (``erased_after`` reads it)."""
        pipe.get(erasure_key(user_id))


def erased_after(tombstone: bytes | None, since: int) -> bool:
    """A tombstone's erasure came at or after ``since`` (ms)."""
    return tombstone is not None and int(tombstone) >= since


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


def sending_state(attempt: int, lease_end: int) -> str:
    """What ``claim_send`` wrote for attempt ``attempt``."""
    return f"sending:{attempt}:{lease_end}"


def ending_state(lease_end: int, final: str) -> str:
    return f"ending:{lease_end}:{final}"


def final_of(ending: str) -> str:
    """``ending:<lease>:<final>`` -> ``<final>``."""
    return ending.split(":", 2)[2]


def outcome_of(final: str) -> tuple[str, str | None]:
    """A final state as (outcome, reason): ``failed:131026`` -> (``failed``, ``131026``)."""
    outcome, _, reason = final.partition(":")
    return outcome, reason or None


def _named_by(receipt: Receipt) -> tuple[str, str]:
    if receipt.followup_id is not None:
        return "id", receipt.followup_id
    if receipt.mids:
        return "mid", "\n".join(receipt.mids)
    return "watermark", str(receipt.watermark)
