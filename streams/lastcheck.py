"""What Redis says of a pair right before its follow-up leaves: one round trip, for the
last-moment check (``domain/lastcheck.py``)."""
from __future__ import annotations

from domain.lastcheck import PairNow, pair_now_of
from schemas.records import FollowupRequest
from streams.ledger import Ledger
from streams.rediskeys import KILLS_KEY, last_inbound_key, safety_key


async def pair_now(redis, request: FollowupRequest) -> PairNow:
    pipe = redis.pipeline(transaction=False)
    Ledger.queue_exists(pipe, request)
    pipe.hmget(KILLS_KEY, "all", f"bot:{request.bot_id}", f"app:{request.app}")
    pipe.hget(last_inbound_key(request.user_id), request.bot_id)
    pipe.get(safety_key(request.user_id))
    published, kills, last_inbound, safety = await pipe.execute()
    return pair_now_of(request, published=bool(published), killed=any(kills),
                       last_inbound_ts=None if last_inbound is None else int(last_inbound), mirror=safety)
