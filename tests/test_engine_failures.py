"""When a dependency fails, the engine crashes loudly and loses nothing; Redis is not on its
way to a follow-up (its requests are exactly once through Kafka transactions)."""
from __future__ import annotations

import orjson
import pytest
import redis.asyncio as aioredis

from devstack.localstack import free_port
from devstack.feeder import feed
from streams.ledger import erasure_key
from streams.topics import FOLLOWUPS_REQUESTED, topic_name
from tests.kafkaread import TopicReader
from tests.rulebook import HOUR, MINUTE, at
from tests.waiting import async_wait_for
from devstack.processes import WorkerProcess

pytestmark = pytest.mark.kafka

T0 = at("11-28 09:00")


def silence_that_earns_a_followup() -> list[bytes]:
    lines = [orjson.dumps({"event_id": f"e{i}", "app": "instagram", "user_id": "u1", "bot_id": "maestro",
                           "direction": "inbound", "ts": T0 + i * MINUTE, "text": "hi"}) for i in range(5)]
    return lines + [orjson.dumps({"type": "tick", "ts": T0 + 13 * HOUR})]


async def test_unreachable_redis_stops_no_followup_and_an_erasure_waits_for_it(stack, topic_prefix, redis_db, tmp_path):
    settings = dict(broker=stack.bootstrap, topic_prefix=topic_prefix, clock="event", quiet_hours="off",
                    data_dir=tmp_path / "data")
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    broken = WorkerProcess(tmp_path, ["engine"], redis_url=nowhere, **settings).start()
    requests = await TopicReader(stack.bootstrap, topic_name(FOLLOWUPS_REQUESTED, topic_prefix), 4).start()
    redis = aioredis.Redis.from_url(redis_db)
    healthy = None
    try:
        await feed(silence_that_earns_a_followup(), stack.bootstrap, topic_prefix)
        await requests.wait_for(lambda got: broken.check_alive() and len(got) >= 1, 90, "the follow-up, Redis unreachable")
        # The erasure's tombstone must reach Redis: without it the worker crashes, loudly.
        await feed([orjson.dumps({"type": "erase", "user_id": "u1"})], stack.bootstrap, topic_prefix)
        await async_wait_for(lambda: not broken.alive, timeout=90, what="the worker to crash on the erasure")
        assert broken.process.returncode != 0
        assert "crashing the worker" in broken.log_tail(400)

        healthy = WorkerProcess(tmp_path, ["engine"], redis_url=redis_db, **settings).start()
        await async_wait_for(lambda: healthy.check_alive() and redis.exists(erasure_key("u1")), 90,
                             "the erasure after the restart")
        (request,) = [orjson.loads(m.value) for m in requests.records]
        assert (request["user_id"], request["bot_id"], request["app"]) == ("u1", "maestro", "instagram")
    finally:
        await requests.stop()
        await redis.aclose()
        broken.stop()
        if healthy:
            healthy.stop()
