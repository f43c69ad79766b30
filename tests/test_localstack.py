"""The local stack is real: Kafka 4.x takes and gives back events, Redis answers, and a
Faust worker (faust-streaming, in its own process) runs against this broker."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from devstack.localstack import LocalStack
from streams.admin import create_topics
from streams.topics import DECISIONS, MESSAGES, topic_name
from waiting import async_wait_for, wait_for

pytestmark = pytest.mark.kafka

FORWARDER = Path(__file__).parent / "faust_forwarder.py"


def message_event(n: int) -> dict:
    """A canonical message event (spec section 5)."""
    return {
        "event_id": f"wamid.test-{n}", "app": "whatsapp", "user_id": f"u-{n % 7}",
        "bot_id": "maestro", "direction": "inbound", "ts": 1_795_000_000_000 + n,
        "text": f"message {n}",
    }


async def produce(bootstrap: str, topic: str, events: list[dict]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for event in events:
            await producer.send(topic, key=event["user_id"].encode(), value=orjson.dumps(event))
        await producer.flush()
    finally:
        await producer.stop()


async def consume(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[dict]:
    """Read from the start of topic until count records arrived (or fail at the deadline)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"test-{uuid.uuid4().hex[:8]}")
    await consumer.start()
    received: list[dict] = []

    async def all_arrived() -> bool:
        batches = await consumer.getmany(timeout_ms=200)
        received.extend(orjson.loads(r.value) for records in batches.values() for r in records)
        return len(received) >= count

    try:
        await async_wait_for(all_arrived, timeout, f"{count} records on {topic} (got {len(received)})")
    finally:
        await consumer.stop()
    return received


async def test_kafka_round_trip_of_100_message_events(stack: LocalStack, topic_prefix: str):
    topic = topic_name(MESSAGES, topic_prefix)
    sent = [message_event(n) for n in range(100)]
    await produce(stack.bootstrap, topic, sent)
    received = await consume(stack.bootstrap, topic, len(sent))
    assert sorted(received, key=lambda e: e["event_id"]) == sorted(sent, key=lambda e: e["event_id"])


def test_create_topics_is_idempotent(stack: LocalStack, topic_prefix: str):
    # topic_prefix created them already; a second run finds them and is content.
    names = create_topics(stack.bootstrap, [MESSAGES, DECISIONS], topic_prefix, 4)
    assert names == [topic_prefix + "messages", topic_prefix + "decisions"]


def test_redis_ping_set_get(redis_db: str):
    client = redis.Redis.from_url(redis_db)
    try:
        assert client.ping()
        assert client.get("greeting") is None  # the db was flushed for this test
        client.set("greeting", "bonjour")
        assert client.get("greeting") == b"bonjour"
    finally:
        client.close()


async def test_faust_worker_forwards_events_on_this_kafka(stack, topic_prefix, tmp_path):
    """faust-streaming works against devstack.localstack.KAFKA_VERSION: group, fetch, produce."""
    source, sink = topic_name(MESSAGES, topic_prefix), topic_name(DECISIONS, topic_prefix)
    log_path = tmp_path / "faust-worker.log"
    env = {**os.environ, "FORWARD_BROKER": stack.bootstrap, "FORWARD_SOURCE": source,
           "FORWARD_SINK": sink, "FORWARD_APP_ID": f"{topic_prefix}forwarder",
           "FORWARD_DATA_DIR": str(tmp_path / "faust-data")}
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, str(FORWARDER), "worker", "--loglevel", "info", "--without-web"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        def worker_log() -> str:
            return log_path.read_text(errors="replace")[-4000:]

        # Produce only once the worker owns its partitions, so the test also shows that a
        # running agent picks up new events (not just a backlog).
        wait_for(lambda: worker.poll() is not None or "Ready" in log_path.read_text(errors="replace"),
                 60, "the Faust worker to be ready")
        assert worker.poll() is None, f"Faust worker exited ({worker.returncode}):\n{worker_log()}"
        sent = [message_event(n) for n in range(100)]
        await produce(stack.bootstrap, source, sent)
        try:
            forwarded = await consume(stack.bootstrap, sink, len(sent), timeout=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nFaust worker log:\n{worker_log()}") from None
        assert {e["event_id"] for e in forwarded} == {e["event_id"] for e in sent}
        assert all(e["forwarded_by"] == f"{topic_prefix}forwarder" for e in forwarded)
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(worker.pid, signal.SIGKILL)
                worker.wait(timeout=5)
