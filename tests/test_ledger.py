"""The follow-up ledger (streams/ledger.py) on a real Redis: each move atomic, nothing re-created after an erasure."""
from __future__ import annotations

import pytest

from schemas.records import FollowupRequest
from streams.ledger import BUSY, CLAIMED, DONE, MISSING, STALE, Ledger, durability_problems, ledger_key

REQUEST = FollowupRequest("f-1", "u-1", "maestro", "whatsapp", 1_795_856_400_000, 1_795_813_200_000, 5)


@pytest.mark.kafka
async def test_ledger_claims_each_try_once(redis_client):
    ledger = Ledger(redis_client, ttl_s=60)
    key = ledger_key("u-1")
    assert await ledger.claim(REQUEST, 0, now=0, lease_end=100) == MISSING
    assert await redis_client.exists(key) == 0  # never re-created
    await redis_client.hset(key, "f-1", REQUEST.due_ts)  # what the engine writes
    assert await ledger.claim(REQUEST, 0, now=0, lease_end=100) == CLAIMED
    assert await ledger.claim(REQUEST, 0, now=50, lease_end=150) == f"{BUSY}:100"
    assert await ledger.claim(REQUEST, 0, now=100, lease_end=200) == CLAIMED  # the lease ran out: a crash
    await ledger.set_state(REQUEST, "wait:1")
    assert await ledger.claim(REQUEST, 0, now=300, lease_end=400) == STALE  # the first copy again
    assert await ledger.claim(REQUEST, 1, now=300, lease_end=400) == CLAIMED
    assert await redis_client.hget(key, "f-1") == b"try:2:400"
    assert await ledger.claim(REQUEST, 0, now=300, lease_end=400) == STALE
    await ledger.set_state(REQUEST, "cancelled:killed")
    assert await ledger.claim(REQUEST, 1, now=500, lease_end=600) == DONE


@pytest.mark.kafka
async def test_ledger_state_is_never_written_to_an_erased_ledger(redis_client):
    ledger = Ledger(redis_client, ttl_s=60)
    assert await ledger.set_state(REQUEST, "generated") is False
    assert await redis_client.exists(ledger_key("u-1")) == 0
    await redis_client.hset(ledger_key("u-1"), "other", "1")
    assert await ledger.set_state(REQUEST, "generated") is False
    assert await redis_client.hget(ledger_key("u-1"), "f-1") is None


@pytest.mark.kafka
async def test_published_requests_are_never_published_again_and_erasure_forgets_them(redis_client):
    ledger = Ledger(redis_client, ttl_s=60)
    other = FollowupRequest("f-2", "u-2", "maestro", "facebook", 1, 0, 5)
    assert await ledger.unpublished([REQUEST, other]) == [REQUEST, other]
    await ledger.record_published([REQUEST])
    assert await ledger.unpublished([REQUEST, other]) == [other]
    assert 0 < await redis_client.ttl(ledger_key("u-1")) <= 60
    await ledger.erase(["u-1"])
    assert await ledger.unpublished([REQUEST]) == [REQUEST]


@pytest.mark.parametrize("info, problems", [
    ({"aof_enabled": 1, "maxmemory_policy": "noeviction"}, 0),
    ({"aof_enabled": 0, "maxmemory_policy": "noeviction"}, 1),
    ({"aof_enabled": 1, "maxmemory_policy": "allkeys-lru"}, 1),
    ({"aof_enabled": 0, "maxmemory_policy": "volatile-ttl"}, 2),  # the ledger's keys have a TTL
])
def test_a_redis_that_could_lose_the_ledger_is_named_so(info, problems):
    assert len(durability_problems(info)) == problems


@pytest.mark.kafka
async def test_the_local_stack_redis_keeps_the_ledger(redis_client):
    assert durability_problems(await redis_client.info()) == []
