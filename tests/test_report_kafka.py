"""`relance report` and `relance explain` reading real topics through the real reader.

The simulator's records go through the feeder onto `messages` (the clock in each record's
header, control events at their place), the decisions `relance replay` made and the
made-up outcomes and deliveries onto their topics, keyed by user as the stages write
them. The report read back from Kafka must hold exactly the figures of the same records
read from files, and those equal the counts made independently.
"""
from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from devstack.feeder import feed
from relance.cli import main
from reportkit import check_figures, count, lines, simulate
from schemas.records import parse_ts
from streams.admin import create_topics
from streams.topicread import RangeReader
from streams.topics import DECISIONS, DELIVERY_BY_APP, FOLLOWUP_OUTCOMES, TopicSpec, topic_name

pytestmark = pytest.mark.kafka


async def publish(bootstrap: str, prefix: str, paths) -> None:
    summary = await feed(paths.records.read_bytes().splitlines(), bootstrap, prefix)
    assert summary.errors == []
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    await producer.start()
    try:
        for path, topic_of in ((paths.decisions, lambda r: DECISIONS), (paths.outcomes, lambda r: FOLLOWUP_OUTCOMES),
                               (paths.deliveries, lambda r: DELIVERY_BY_APP[r["app"]])):
            for line in path.read_bytes().splitlines():
                record = orjson.loads(line)
                await producer.send(topic_name(topic_of(record), prefix), line, key=record["user_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()


def test_the_report_from_kafka_equals_the_report_from_files_and_the_counts(stack, topic_prefix, tmp_path, monkeypatch, capsys):
    paths = simulate(tmp_path / "records", monkeypatch, users=120, days=14, seed=3, holdout=0.2)
    asyncio.run(publish(stack.bootstrap, topic_prefix, paths))

    kafka_json, files_json = tmp_path / "kafka.json", tmp_path / "files.json"
    assert main(["report", "--broker", stack.bootstrap, "--topic-prefix", topic_prefix,
                 "--out", str(tmp_path / "kafka.html"), "--json", str(kafka_json)]) == 0
    assert main(["report", "--records", str(paths.records), "--decisions", str(paths.decisions),
                 "--outcomes", str(paths.outcomes), "--deliveries", str(paths.deliveries),
                 "--out", str(tmp_path / "files.html"), "--json", str(files_json)]) == 0
    from_kafka, from_files = orjson.loads(kafka_json.read_bytes()), orjson.loads(files_json.read_bytes())
    assert from_kafka == from_files
    assert check_figures(from_kafka, count(paths)) > 50
    assert f"Kafka {stack.bootstrap}" in capsys.readouterr().out

    # A range that ends before anything was written holds nothing.
    assert main(["report", "--broker", stack.bootstrap, "--topic-prefix", topic_prefix, "--to", "2020-01-01T00:00:00Z",
                 "--out", str(tmp_path / "empty.html"), "--json", str(tmp_path / "empty.json")]) == 0
    empty = orjson.loads((tmp_path / "empty.json").read_bytes())
    assert empty["groups"]["all"]["funnel"]["due"] == 0 and empty["verdict"]["kind"] == "too_small"

    # explain: the story of a pair whose follow-up was read and answered.
    story = _a_read_and_answered_follow_up(paths)
    user, bot = story["user_id"], story["bot_id"]
    assert main(["explain", user, bot, "--worker", "http://127.0.0.1:9", "--broker", stack.bootstrap,
                 "--topic-prefix", topic_prefix]) == 1  # no worker answers; the stories come all the same
    told = capsys.readouterr().out
    assert f"silence {story['followup_id'][:12]}" in told
    assert f"due {story['due_ts']}  emitted, via {story['app']}" in told
    for word in ("generated", "sent", "delivered", "read"):
        assert f"  {word}\n" in told.split(f"silence {story['followup_id'][:12]}")[1]
    assert "the user answered" in told


def _a_read_and_answered_follow_up(paths) -> dict:
    read = {o["followup_id"] for o in lines(paths.outcomes) if o["outcome"] == "read"}
    inbound = [r for r in lines(paths.records) if r.get("direction") == "inbound"]
    for request in lines(paths.requests):
        if request["followup_id"] not in read:
            continue
        start = parse_ts(request["due_ts"])
        if any(r["user_id"] == request["user_id"] and r["bot_id"] == request["bot_id"]
               and start < parse_ts(r["ts"]) <= start + 86_400_000 for r in inbound):
            return request
    raise AssertionError("no follow-up was read and answered in the simulated records")


async def test_a_time_range_reads_the_records_written_inside_it(stack, topic_prefix):
    spec = TopicSpec("range-check", "a topic of this test", keyed=True)
    create_topics(stack.bootstrap, (spec,), topic_prefix, 2)
    topic = topic_name(spec, topic_prefix)
    t0 = 1_795_856_400_000
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    try:
        for hour, user in ((0, "u-a"), (1, "u-b"), (2, "u-a"), (3, "u-b")):
            await producer.send_and_wait(topic, f"{hour}".encode(), key=user.encode(), timestamp_ms=t0 + hour * 3_600_000)
    finally:
        await producer.stop()

    async def read(start=None, end=None, key=None) -> list[int]:
        async with RangeReader(stack.bootstrap, [topic, topic_prefix + "absent"], start, end, key) as reader:
            assert reader.missing == [topic_prefix + "absent"]
            got = [int(r.value) async for _topic, batch in reader.batches() for r in batch]
            assert len(got) == reader.total
            return sorted(got)

    assert await read() == [0, 1, 2, 3]
    assert await read(t0 + 3_600_000, t0 + 2 * 3_600_000) == [1, 2]   # both ends included
    assert await read(t0 + 3_600_000 + 1) == [2, 3]
    assert await read(None, t0 - 1) == []
    assert await read(key=b"u-a") == [0, 2]
