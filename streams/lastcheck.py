"""What Redis says of a pair right before its follow-up leaves: one round trip, for the
last-moment check (``domain/lastcheck.py``)."""
from __future__ import annotations

from domain.lastcheck import PairNow, pair_now_of
from schemas.records import FollowupRequest
from streams.ledger import Ledger, ledger_key
from streams.rediskeys import KILLS_KEY, last_inbound_key, safety_key


async def pair_now(redis, request: FollowupRequest) -> PairNow:
    """Asked once the request's ledger field was claimed: missing now, with a tombstone,
    it was erased since; missing without one, Redis lost it, and that erases nobody."""
    pipe = redis.pipeline(transaction=False)
    pipe.hexists(ledger_key(request.user_id), request.followup_id)
    Ledger.queue_erasure(pipe, request.user_id)
    pipe.hmget(KILLS_KEY, "all", f"bot:{request.bot_id}", f"app:{request.app}")
    pipe.hget(last_inbound_key(request.user_id), request.bot_id)
    pipe.get(safety_key(request.user_id))
    claimed, tombstone, kills, last_inbound, safety = await pipe.execute()
    return pair_now_of(request, published=bool(claimed) or tombstone is None, killed=any(kills),
                       last_inbound_ts=None if last_inbound is None else int(last_inbound), mirror=safety)
