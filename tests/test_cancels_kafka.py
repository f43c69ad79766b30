"""Cancelled between the decision and the hand-over (spec section 3), through the real
broker and Redis: the user opted out (control or stop word), is a minor (or of unknown
age where unknown_age is deny), showed distress, or the follow-up can no longer leave
within M of the last inbound message. The facts travel the way production's do: records
on ``messages``, mirrored by the context stage, read by the generator right before the
LLM call and again before the hand-over."""
from __future__ import annotations

import orjson
import pytest
import redis.asyncio as aioredis

from devstack.feeder import feed
from foundation.clock import wall_ms
from streams.rediskeys import safety_key
from streams.topics import DELIVERY_WHATSAPP, FOLLOWUP_OUTCOMES
from tests.test_generator_kafka import (
    HOUR, MINUTE, START, FakeLLMProcess, Requests, by_followup, message, readers, request, stop_all, values, worker_for,
)
from tests.waiting import async_wait_for

pytestmark = pytest.mark.kafka


def control(**fields) -> bytes:
    return orjson.dumps(fields)


async def outcomes_of(outcomes, worker, wanted: set[str]) -> dict[str, tuple[str, str | None]]:
    await outcomes.wait_for(lambda got: worker.check_alive() and wanted <= by_followup(outcomes).keys(), 60,
                            f"the outcomes of {sorted(wanted)}")
    return {fid: (found[0]["outcome"], found[0]["reason"]) for fid, found in by_followup(outcomes).items()}


async def test_opt_outs_stop_words_minors_and_distress_since_the_decision_cancel_the_request(
        stack, topic_prefix, redis_db, tmp_path):
    llm = FakeLLMProcess("ok").start()
    worker = worker_for(stack, topic_prefix, redis_db, tmp_path, ["context", "generator"], llm, unknown_age="deny").start()
    delivered, outcomes = await readers(stack, topic_prefix, DELIVERY_WHATSAPP, FOLLOWUP_OUTCOMES)
    requests = await Requests(stack, topic_prefix, redis_db).start()
    redis = aioredis.Redis.from_url(redis_db)
    adults = ["u-ok", "u-out", "u-stop", "u-distress", "u-back-in"]
    stream = [control(type="profile", user_id=user, tz="Europe/Paris", minor=False) for user in adults] + [
        control(type="opt_out", user_id="u-out", bot_id=None),
        message("wamid.stop", "u-stop", "whatsapp", "inbound", START, "Stop!"),
        message("wamid.sad", "u-distress", "whatsapp", "inbound", START + HOUR, "I want to die", bot="chef-lucie"),
        control(type="profile", user_id="u-minor", tz=None, minor=True),
        control(type="profile", user_id="u-unknown", tz="Europe/Paris"),        # minor left out: age unknown
        control(type="opt_out", user_id="u-back-in", bot_id=None),
        control(type="opt_in", user_id="u-back-in", bot_id="maestro"),
    ]
    expected = {"u-ok": ("generated", None), "u-back-in": ("generated", None), "u-out": ("cancelled", "opted_out"),
                "u-stop": ("cancelled", "opted_out"), "u-distress": ("cancelled", "distress"),
                "u-minor": ("cancelled", "minor"), "u-unknown": ("cancelled", "minor")}
    try:
        assert (await feed(stream, stack.bootstrap, topic_prefix)).errors == []

        async def mirrored() -> bool:
            worker.check_alive()
            return all([await redis.exists(safety_key(user)) for user in expected])
        await async_wait_for(mirrored, 60, "every user's safety facts mirrored by the context stage")
        await requests.publish(*(request(f"f-{user}", user) for user in expected))
        got = await outcomes_of(outcomes, worker, {f"f-{user}" for user in expected})
        assert got == {f"f-{user}": outcome for user, outcome in expected.items()}
        await delivered.wait_for(lambda found: len(found) >= 2, 30, "the two deliveries")
        assert sorted(d["user_id"] for d in values(delivered)) == ["u-back-in", "u-ok"]
    finally:
        await stop_all(worker, llm, delivered, outcomes, requests, redis)
    assert "Traceback" not in worker.log_tail(2000), worker.log_tail(60)


async def test_in_wall_mode_a_request_that_can_no_longer_leave_within_m_is_cancelled(
        stack, topic_prefix, redis_db, tmp_path):
    # After an outage: the request was decided on time, but the messaging window (M = 24 h)
    # of its last inbound message has closed by the time the generator gets to it.
    llm = FakeLLMProcess("ok").start()
    worker = worker_for(stack, topic_prefix, redis_db, tmp_path, ["context", "generator"], llm, clock="wall").start()
    outcomes, = await readers(stack, topic_prefix, FOLLOWUP_OUTCOMES)
    requests = await Requests(stack, topic_prefix, redis_db).start()
    now = wall_ms()
    stale = request("f-stale", "u-stale", due_ts=now - 12 * HOUR - 3 * MINUTE)   # last inbound 24 h 3 min ago
    fresh = request("f-fresh", "u-fresh", due_ts=now - MINUTE)                   # last inbound 12 h 1 min ago
    try:
        await requests.publish(stale, fresh)
        got = await outcomes_of(outcomes, worker, {"f-stale", "f-fresh"})
        assert got == {"f-stale": ("cancelled", "window_closed"), "f-fresh": ("generated", None)}
    finally:
        await stop_all(worker, llm, outcomes, requests)
    assert "Traceback" not in worker.log_tail(2000), worker.log_tail(60)
