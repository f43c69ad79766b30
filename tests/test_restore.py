"""The engine's state comes back whole after a restart."""
from __future__ import annotations

import urllib.request

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from devstack.feeder import feed
from streams.topics import ENGINE_STATE, MESSAGES, topic_name
from tests.kafkaread import group_lag, partition_records
from tests.test_engine_kafka import engine_worker, stream_lines
from tests.waiting import async_wait_for

pytestmark = pytest.mark.kafka


async def test_reading_a_partition_back_always_starts_at_the_beginning(stack, topic_prefix):
    topic = topic_name(ENGINE_STATE, topic_prefix)
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, linger_ms=5)
    await producer.start()
    try:
        for index in range(3000):
            await producer.send(topic, b"v%d" % index, key=b"k%d" % index, partition=2)
        await producer.flush()
    finally:
        await producer.stop()
    # The position reset started by assign() used to race the seek (and sometimes win).
    for _ in range(15):
        records = await partition_records(stack.bootstrap, topic, 2)
        assert [r.value for r in records] == [b"v%d" % i for i in range(3000)]


def pairs_tracked(worker) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        if family.name == "relance_pairs_tracked":
            return family.samples[0].value
    return None


async def test_a_restarted_worker_holds_every_pair_before_any_new_record(stack, topic_prefix, redis_db, tmp_path):
    lines = stream_lines(users=200, seed=41)
    first = engine_worker(stack, topic_prefix, redis_db, tmp_path).start()
    second = None
    try:
        await feed(lines, stack.bootstrap, topic_prefix)
        group, topic = topic_prefix + "relance.engine", topic_name(MESSAGES, topic_prefix)
        await async_wait_for(lambda: first.check_alive() and _consumed(stack, group, topic), timeout=120,
                             what="the stream consumed and committed")
        held = await async_wait_for(lambda: pairs_tracked(first), timeout=30, what="the first worker's pair count")
        assert held > 100
        first.stop()
        second = engine_worker(stack, topic_prefix, redis_db, tmp_path).start()
        await async_wait_for(lambda: second.check_alive() and pairs_tracked(second) == held, timeout=90,
                             what=f"the restarted worker to hold all {held:g} pairs")
    finally:
        first.stop()
        if second:
            second.stop()


async def _consumed(stack, group: str, topic: str) -> bool:
    return await group_lag(stack.bootstrap, group, topic, 4) == 0
