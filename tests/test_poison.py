"""No record stops a stage (issue 14): whatever belongs to one record becomes a dead letter
or a named count, and the records behind it on the same partition still go through."""
from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from devstack.processes import WorkerProcess
from streams.topics import CLOCK_HEADER, DEADLETTER, MESSAGES, RAW_BY_APP, topic_name
from tests.kafkaread import TopicReader
from tests.test_engine_kafka import engine_worker
from tests.waiting import async_wait_for

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parent.parent
WEBHOOK = (REPO / "tests" / "fixtures" / "webhooks" / "whatsapp_text.json").read_bytes()
# Just under the broker's and the producer's 1 MB limits, and all quotes: escaped in a
# whole dead letter it would be twice the limit.
OVERSIZED = b'"' * 1_000_000


async def test_an_oversized_raw_record_is_dead_lettered_and_ingest_goes_on(stack, topic_prefix, redis_db, tmp_path):
    worker = WorkerProcess(tmp_path, ["ingest"], broker=stack.bootstrap, redis_url=redis_db,
                           topic_prefix=topic_prefix, data_dir=tmp_path / "data").start()
    messages = await TopicReader(stack.bootstrap, topic_name(MESSAGES, topic_prefix), 4).start()
    letters = await TopicReader(stack.bootstrap, topic_name(DEADLETTER, topic_prefix), 1).start()
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, max_request_size=1_048_576)
    await producer.start()
    try:
        raw = topic_name(RAW_BY_APP["whatsapp"], topic_prefix)  # one partition: the webhook is behind it
        await producer.send_and_wait(raw, OVERSIZED)
        await producer.send_and_wait(raw, WEBHOOK)
        await messages.wait_for(lambda got: worker.check_alive() and len(got) >= 1, 60,
                                "the webhook behind the oversized record")
        await letters.wait_for(lambda got: len(got) >= 1, 30, "the oversized record's dead letter")
        letter = orjson.loads(letters.records[0].value)
        assert letter["truncated"] is True and letter["original_size"] == len(OVERSIZED)
        assert letter["original_sha256"] == hashlib.sha256(OVERSIZED).hexdigest()
        assert (letter["source_topic"], letter["offset"]) == (raw, 0)
    finally:
        await producer.stop()
        await messages.stop()
        await letters.stop()
        worker.stop()


def message(user: str, n: int, ts: int) -> bytes:
    return orjson.dumps({"event_id": f"e-{user}-{n}", "app": "whatsapp", "user_id": user, "bot_id": "maestro",
                         "direction": "inbound", "ts": ts, "text": "hello"})


async def test_an_unreadable_clock_header_or_an_empty_value_does_not_stop_the_engine(stack, topic_prefix, redis_db, tmp_path):
    worker = engine_worker(stack, topic_prefix, redis_db, tmp_path).start()
    letters = await TopicReader(stack.bootstrap, topic_name(DEADLETTER, topic_prefix), 1).start()
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    try:
        topic, key, t = topic_name(MESSAGES, topic_prefix), b"u-poison", 1_795_856_400_000
        await producer.send_and_wait(topic, message("u-poison", 0, t), key=key, headers=[(CLOCK_HEADER, b"soon")])
        # A clock past the last time a record can carry (9999-12-31T23:59:59.999Z, +1 ms).
        await producer.send_and_wait(topic, message("u-poison", 9, t), key=key, headers=[(CLOCK_HEADER, b"253402300800000")])
        await producer.send_and_wait(topic, b"", key=key)      # empty, and no clock: nothing to keep
        await producer.send_and_wait(topic, None, key=key)     # null
        for n in range(1, 4):
            await producer.send_and_wait(topic, message("u-poison", n, t + n), key=key)
        await async_wait_for(lambda: worker.check_alive() and worker.metric("relance_events_in_total") >= 3, 60,
                             "the three messages behind the poison records")
        await letters.wait_for(lambda got: len(got) >= 2, 30, "the bad headers' dead letters")
        for record in letters.records:
            letter = orjson.loads(record.value)
            assert "relance-clock" in letter["reason"] and letter["stage"] == "engine"
        assert worker.metric("relance_records_dropped_total") == 2
        assert worker.metric("relance_dead_letters_total") == 2
    finally:
        await producer.stop()
        await letters.stop()
        worker.stop()
