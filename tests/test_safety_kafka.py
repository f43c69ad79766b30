"""Control events through the ``control`` topic take effect in the engine (spec 6 and 7)."""
from __future__ import annotations

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from streams.outbox import partition_for
from foundation.settings import Settings
from devstack.feeder import feed
from streams.topics import CONTROL, DECISIONS, ENGINE_STATE, MESSAGES, topic_name
from streams.rediskeys import KILLS_KEY
from tests.kafkaread import TopicReader, partition_records
from tests.rulebook import HOUR, MINUTE, at
from tests.waiting import async_wait_for
from devstack.processes import WorkerProcess

pytestmark = pytest.mark.kafka

T0 = at("11-28 09:00")
CONTROLS = [
    {"type": "profile", "user_id": "u-minor", "tz": "Europe/Paris", "minor": True},
    {"type": "opt_out", "user_id": "u-out", "bot_id": "maestro"},
    {"type": "kill", "scope": "bot", "id": "chef-lucie", "on": True},
]


def burst(user: str, bot: str) -> list[bytes]:
    return [orjson.dumps({"event_id": f"{user}-{bot}-{i}", "app": "whatsapp", "user_id": user, "bot_id": bot,
                          "direction": "inbound", "ts": T0 + i * MINUTE, "text": "hello"}) for i in range(5)]


async def test_controls_from_the_control_topic_reach_every_decision_and_erasure_leaves_nothing(
        stack, topic_prefix, redis_db, tmp_path):
    settings = dict(broker=stack.bootstrap, redis_url=redis_db, topic_prefix=topic_prefix, clock="event",
                    quiet_hours="off", user_cap_day=0, user_cap_week=0, data_dir=tmp_path / "data")
    worker = WorkerProcess(tmp_path, ["ingest", "engine", "context"], **settings).start()
    messages = await TopicReader(stack.bootstrap, topic_name(MESSAGES, topic_prefix), 4).start()
    decisions = await TopicReader(stack.bootstrap, topic_name(DECISIONS, topic_prefix), 4).start()
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    redis = aioredis.Redis.from_url(redis_db)
    try:
        for control in CONTROLS:
            key = control.get("user_id", "").encode() or None
            await producer.send_and_wait(topic_name(CONTROL, topic_prefix), orjson.dumps(control), key=key)
        # Per-user controls land on their user's partition, the kill on all four.
        await messages.wait_for(lambda got: worker.check_alive() and len(got) >= 2 + 4, 60, "the forwarded controls")
        assert await redis.hget(KILLS_KEY, "bot:chef-lucie") == b"1"

        pairs = [("u-minor", "maestro"), ("u-out", "maestro"), ("u-killed", "chef-lucie"), ("u-ok", "maestro")]
        lines = [line for user, bot in pairs for line in burst(user, bot)]
        lines.append(orjson.dumps({"type": "tick", "ts": T0 + 13 * HOUR}))
        await feed(lines, stack.bootstrap, topic_prefix)
        await decisions.wait_for(lambda got: worker.check_alive() and len(got) >= len(pairs), 60, "a decision per pair")
        outcome = {(d["user_id"], d["bot_id"]): d["stopped_by"] or d["outcome"]
                   for d in (orjson.loads(m.value) for m in decisions.records)}
        assert outcome == {("u-minor", "maestro"): "age", ("u-out", "maestro"): "opt_out",
                           ("u-killed", "chef-lucie"): "kill_switch", ("u-ok", "maestro"): "emitted"}
        assert [key async for key in redis.scan_iter(match="*u-ok*")] != []  # context and ledger exist

        await producer.send_and_wait(topic_name(CONTROL, topic_prefix), orjson.dumps({"type": "erase", "user_id": "u-ok"}), key=b"u-ok")
        state_topic = topic_name(ENGINE_STATE, topic_prefix)
        partition = partition_for(b"u-ok", Settings().partitions)

        async def erased_everywhere() -> bool:
            left_in_redis = [key async for key in redis.scan_iter(match="*u-ok*")]
            latest = {r.key: r.value for r in await partition_records(stack.bootstrap, state_topic, partition)}
            return worker.check_alive() and not left_in_redis and b"u-ok" in latest and latest[b"u-ok"] is None

        await async_wait_for(erased_everywhere, timeout=60, what="u-ok gone from Redis and tombstoned in engine.state")
    finally:
        await redis.aclose()
        await producer.stop()
        await messages.stop()
        await decisions.stop()
        worker.stop()
