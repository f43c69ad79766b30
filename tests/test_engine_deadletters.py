"""The engine's dead letters (spec sections 4 and 5): an invalid record on ``messages``,
and in wall mode one more than 5 minutes ahead of the clock, becomes a dead letter with
its bytes, where it came from and why; the stage goes on with the next record."""
from __future__ import annotations

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from devstack.processes import WorkerProcess
from foundation.clock import wall_ms
from schemas.records import format_ts
from streams.outbox import partition_for
from streams.topics import DEADLETTER, MESSAGES, topic_name
from tests.kafkaread import TopicReader
from tests.test_metrics_live import ready, scrape, value
from tests.waiting import async_wait_for, wait_for

pytestmark = pytest.mark.kafka

MINUTE = 60_000


def event(n: int, ts: int, **changes) -> bytes:
    body = {"event_id": f"e-{n}", "app": "whatsapp", "user_id": "u-dl", "bot_id": "maestro",
            "direction": "inbound", "ts": format_ts(ts), "text": "hello", **changes}
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


async def test_invalid_and_future_records_become_dead_letters_and_the_engine_goes_on(stack, topic_prefix, redis_db, tmp_path):
    worker = WorkerProcess(tmp_path, ["engine"], broker=stack.bootstrap, redis_url=redis_db, topic_prefix=topic_prefix,
                           partitions=4, clock="wall", data_dir=tmp_path / "data").start()
    letters = await TopicReader(stack.bootstrap, topic_name(DEADLETTER, topic_prefix), 1).start()
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    try:
        wait_for(lambda: ready(worker), 60, "the engine worker to be ready")
        now = wall_ms()
        bad = [b"{oops", event(1, now, text=None), event(2, now + 10 * MINUTE)]
        good = [event(3, now), event(4, now + 2 * MINUTE)]
        topic = topic_name(MESSAGES, topic_prefix)
        for value_ in [bad[0], good[0], bad[1], bad[2], good[1]]:
            await producer.send_and_wait(topic, value_, key=b"u-dl")
        await letters.wait_for(lambda got: worker.check_alive() and len(got) >= 3, 60, "three dead letters")
        found = [orjson.loads(record.value) for record in letters.records]
        assert [letter["original"].encode() for letter in found] == bad
        assert {(letter["stage"], letter["source_topic"], letter["partition"]) for letter in found} == \
            {("engine", topic, partition_for(b"u-dl", 4))}
        assert [letter["offset"] for letter in found] == [0, 2, 3]
        reasons = [letter["reason"] for letter in found]
        assert reasons[0].startswith("not JSON") and reasons[1] == "missing field text"
        assert "more than 5 minutes ahead of the clock" in reasons[2]
        await async_wait_for(lambda: value(scrape(worker), "relance_events_in_total", app="whatsapp") == 2, 30,
                             "the two valid records counted")
        assert value(scrape(worker), "relance_dead_letters_total", stage="engine", reason="not_json") == 1
    finally:
        await producer.stop()
        await letters.stop()
        worker.stop()
    assert "Traceback" not in worker.log_tail(400), worker.log_tail(60)
