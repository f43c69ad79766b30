"""A crashed or rebalanced engine ends with exactly the follow-ups of an uninterrupted run."""
from __future__ import annotations

import collections

import orjson
import pytest

from devstack.feeder import feed
from streams.topics import FOLLOWUPS_REQUESTED, MESSAGES, topic_name
from tests.kafkaread import TopicReader, group_lag
from tests.test_engine_kafka import engine_worker, expected, stream_lines
from tests.waiting import async_wait_for

pytestmark = pytest.mark.kafka


async def all_consumed(stack, prefix: str) -> bool:
    lag = await group_lag(stack.bootstrap, prefix + "relance.engine", topic_name(MESSAGES, prefix), 4)
    return lag == 0


async def assert_exactly_the_replays_followups(stack, prefix, reader, want, workers) -> None:
    want_ids = {r["followup_id"] for r in want}
    await reader.wait_for(
        lambda got: all(w.check_alive() for w in workers) and {orjson.loads(m.value)["followup_id"] for m in got} >= want_ids,
        180, "every follow-up of the uninterrupted run")
    # Everything consumed and committed: no more output can come.
    await async_wait_for(lambda: all_consumed(stack, prefix), timeout=120, what="the group to commit the whole stream")
    published = collections.Counter(orjson.loads(m.value)["followup_id"] for m in reader.records)
    assert set(published) == want_ids, "follow-ups missing or not in the uninterrupted run"
    assert [fid for fid, n in published.items() if n > 1] == [], "a follow-up was published twice"


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
async def test_sigkill_mid_stream_then_restart_gives_exactly_the_same_followups(stack, topic_prefix, redis_db, tmp_path, store):
    # Idle users are packed at each checkpoint (in a dict, or in RocksDB) and the restart
    # restores every user packed: both paths are on the way to the same follow-ups.
    lines = stream_lines(users=150, seed=23)
    want, _ = expected(lines)
    reader = await TopicReader(stack.bootstrap, topic_name(FOLLOWUPS_REQUESTED, topic_prefix), 4).start()
    first = engine_worker(stack, topic_prefix, redis_db, tmp_path, store).start()
    second = None
    try:
        await feed(lines, stack.bootstrap, topic_prefix)
        await reader.wait_for(lambda got: first.check_alive() and len(got) >= len(want) // 3, 120, "a third of the follow-ups")
        first.kill()
        second = engine_worker(stack, topic_prefix, redis_db, tmp_path, store).start()
        await assert_exactly_the_replays_followups(stack, topic_prefix, reader, want, [second])
    finally:
        await reader.stop()
        first.stop()
        if second:
            second.stop()


async def test_a_second_worker_joining_mid_stream_changes_nothing(stack, topic_prefix, redis_db, tmp_path):
    lines = stream_lines(users=150, seed=29)
    want, _ = expected(lines)
    reader = await TopicReader(stack.bootstrap, topic_name(FOLLOWUPS_REQUESTED, topic_prefix), 4).start()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = engine_worker(stack, topic_prefix, redis_db, tmp_path / "a").start()
    second = None
    try:
        await feed(lines, stack.bootstrap, topic_prefix)
        await reader.wait_for(lambda got: first.check_alive() and len(got) >= len(want) // 4, 120, "a quarter of the follow-ups")
        second = engine_worker(stack, topic_prefix, redis_db, tmp_path / "b").start()
        await assert_exactly_the_replays_followups(stack, topic_prefix, reader, want, [first, second])
    finally:
        await reader.stop()
        first.stop()
        if second:
            second.stop()
