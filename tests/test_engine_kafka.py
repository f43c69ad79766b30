"""The engine through a real Kafka broker agrees with ``relance replay`` (spec section 8)."""
from __future__ import annotations

import random

import orjson
import pytest

from relance.commands.replay import replay
from schemas.records import MessageEvent, control_to_dict
from foundation.settings import Settings
from devstack.traffic import TrafficShape, generate
from devstack.feeder import feed
from streams.topics import DECISIONS, FOLLOWUPS_REQUESTED, topic_name
from tests.kafkaread import TopicReader
from devstack.processes import WorkerProcess
from tests.rulebook import DAY
from tests.test_rules_properties import untidy_stream

pytestmark = pytest.mark.kafka

RULES = {"quiet_hours": "22:00-08:00", "user_cap_day": 1, "user_cap_week": 3, "unknown_age": "allow"}


def stream_lines(users: int, seed: int) -> list[bytes]:
    return [orjson.dumps(record) for record in generate(TrafficShape(users=users, days=10), seed=seed)]


def expected(lines: list[bytes]) -> tuple[list[dict], list[dict]]:
    requests, decisions = [], []
    replay(lines, Settings.from_mapping({**RULES, "clock": "event"}),
           on_request=lambda r: requests.append(r.to_dict()),
           on_decision=lambda d: decisions.append(d.to_dict()))
    return requests, decisions


def comparable_decisions(decisions: list[dict]) -> list[tuple]:
    # decided_at is the clock when the partition got to it, which Kafka may reach later.
    return sorted((d["followup_id"], d["due_ts"], d["outcome"], d["stopped_by"], d["inbound_in_window"]) for d in decisions)


def by_id(requests: list[dict]) -> list[dict]:
    return sorted(requests, key=lambda r: (r["followup_id"], r["due_ts"]))


def engine_worker(stack, prefix, redis_url, tmp_path, store: str = "memory") -> WorkerProcess:
    return WorkerProcess(
        tmp_path, ["engine"], broker=stack.bootstrap, redis_url=redis_url, topic_prefix=prefix,
        partitions=4, clock="event", data_dir=tmp_path / "data", store=store, **RULES,
    )


async def test_event_mode_worker_gives_the_same_followups_as_replay(stack, topic_prefix, redis_db, tmp_path):
    lines = stream_lines(users=120, seed=11)
    want_requests, want_decisions = expected(lines)
    assert len(want_requests) > 50 and len({d["stopped_by"] for d in want_decisions}) >= 5

    worker = engine_worker(stack, topic_prefix, redis_db, tmp_path).start()
    requests = await TopicReader(stack.bootstrap, topic_name(FOLLOWUPS_REQUESTED, topic_prefix), 4).start()
    decisions = await TopicReader(stack.bootstrap, topic_name(DECISIONS, topic_prefix), 4).start()
    try:
        summary = await feed(lines, stack.bootstrap, topic_prefix)
        assert summary.errors == []
        await decisions.wait_for(lambda got: worker.check_alive() and len(got) >= len(want_decisions), 240, "every decision of the replay")
        await requests.wait_for(lambda got: len(got) >= len(want_requests), 30, "every follow-up of the replay")
        got_requests = [orjson.loads(m.value) for m in requests.records]
        got_decisions = [orjson.loads(m.value) for m in decisions.records]
        assert by_id(got_requests) == by_id(want_requests)
        assert comparable_decisions(got_decisions) == comparable_decisions(want_decisions)
        assert all(m.key.decode() == orjson.loads(m.value)["user_id"] for m in requests.records)
    finally:
        await requests.stop()
        await decisions.stop()
        worker.stop()
        assert "Traceback" not in worker.log_tail(400), worker.log_tail(80)


async def test_untidy_streams_decide_the_same_through_kafka(stack, topic_prefix, redis_db, tmp_path):
    """Late messages that make pairs due in the past, re-sends with another ts, controls
    mid-stream and quiet hours: the worker decides as the replay, which the oracle of
    tests/oracle.py judges (tests/test_rules_properties.py)."""
    records, resent = untidy_stream(random.Random(5), 14 * DAY, 600)
    lines = [orjson.dumps(r.to_dict() if isinstance(r, MessageEvent) else control_to_dict(r)) for r in records]
    want_requests, want_decisions = expected(lines)
    outcomes = {d["stopped_by"] or d["outcome"] for d in want_decisions}
    assert want_requests and resent and {"deferred", "user_cap", "kill_switch", "opt_out"} <= outcomes, outcomes
    worker = engine_worker(stack, topic_prefix, redis_db, tmp_path).start()
    requests = await TopicReader(stack.bootstrap, topic_name(FOLLOWUPS_REQUESTED, topic_prefix), 4).start()
    decisions = await TopicReader(stack.bootstrap, topic_name(DECISIONS, topic_prefix), 4).start()
    try:
        assert (await feed(lines, stack.bootstrap, topic_prefix)).errors == []
        await decisions.wait_for(lambda got: worker.check_alive() and len(got) >= len(want_decisions), 120, "every decision")
        await requests.wait_for(lambda got: len(got) >= len(want_requests), 30, "every follow-up")
        assert by_id([orjson.loads(m.value) for m in requests.records]) == by_id(want_requests)
        assert comparable_decisions([orjson.loads(m.value) for m in decisions.records]) == comparable_decisions(want_decisions)
    finally:
        await requests.stop()
        await decisions.stop()
        worker.stop()
    assert "Traceback" not in worker.log_tail(400), worker.log_tail(80)
