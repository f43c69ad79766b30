"""Generation and delivery through the real Kafka broker and Redis, with the fake LLM as a
separate process: follow-ups written, routed and accounted for, whatever the LLM does."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from domain.honesty import disclosure_line, safe_template
from schemas.records import FollowupRequest, format_ts
from devstack.feeder import feed
from streams.topics import (
    DEADLETTER, DELIVERY_INSTAGRAM, DELIVERY_WHATSAPP, FOLLOWUP_OUTCOMES, FOLLOWUPS_REQUESTED, topic_name,
)
from streams.ledger import Ledger, ledger_key
from streams.rediskeys import KILLS_KEY, last_inbound_key
from tests.fake_llm import OK_TEXT
from tests.kafkaread import TopicReader
from tests.waiting import async_wait_for
from devstack.processes import WorkerProcess

pytestmark = pytest.mark.kafka

START = 1_795_856_400_000  # 2026-11-28T09:00:00Z
MINUTE, HOUR = 60_000, 3_600_000
ROOT = Path(__file__).resolve().parent.parent


class FakeLLMProcess:
    """``python -m tests.fake_llm`` in its own process group; its mode switched over HTTP."""

    def __init__(self, mode: str, slow_delay: float = 5.0) -> None:
        self.args = [sys.executable, "-m", "tests.fake_llm", "--port", "0", "--mode", mode, "--slow-delay", str(slow_delay)]
        self.process: subprocess.Popen | None = None
        self.base_url = ""

    def start(self) -> "FakeLLMProcess":
        self.process = subprocess.Popen(self.args, cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True)
        line = self.process.stdout.readline().decode().split()  # "ready <base_url>", or nothing if it died
        assert line[:1] == ["ready"], f"fake LLM did not start: {line}"
        self.base_url = line[1]
        return self

    @property
    def control_url(self) -> str:
        return self.base_url.removesuffix("/v1") + "/_control"

    async def stats(self) -> dict:
        async with aiohttp.ClientSession() as session, session.get(self.control_url) as response:
            return await response.json()

    async def set_mode(self, mode: str) -> None:
        async with aiohttp.ClientSession() as session, session.post(self.control_url, json={"mode": mode}) as response:
            assert response.status == 200

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)


def worker_for(stack, prefix: str, redis_url: str, tmp_path: Path, roles: list[str], llm: FakeLLMProcess, **settings) -> WorkerProcess:
    settings = {"clock": "event", "quiet_hours": "off", "user_cap_day": 0, "user_cap_week": 0, **settings}
    return WorkerProcess(
        tmp_path, roles, broker=stack.bootstrap, redis_url=redis_url, topic_prefix=prefix, partitions=4,
        data_dir=tmp_path / "data", llm_base_url=llm.base_url, llm_model="fake", **settings,
    )


async def readers(stack, prefix: str, *specs) -> list[TopicReader]:
    # Topics not keyed by user have one partition (streams.admin.acreate_topics).
    return [await TopicReader(stack.bootstrap, topic_name(spec, prefix), 4 if spec.keyed else 1).start() for spec in specs]


def values(reader: TopicReader) -> list[dict]:
    return [orjson.loads(record.value) for record in reader.records]


def by_followup(reader: TopicReader) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for value in values(reader):
        found.setdefault(value["followup_id"], []).append(value)
    return found


def message(event_id: str, user: str, app: str, direction: str, ts: int, text: str, bot: str = "maestro") -> bytes:
    return orjson.dumps({"event_id": event_id, "app": app, "user_id": user, "bot_id": bot,
                         "direction": direction, "ts": format_ts(ts), "text": text})


class Requests:
    """Publishes follow-up requests as the engine does: ledger field, then the record."""

    def __init__(self, stack, prefix: str, redis_url: str) -> None:
        self.topic = topic_name(FOLLOWUPS_REQUESTED, prefix)
        self.producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
        self.redis = aioredis.Redis.from_url(redis_url)

    async def start(self) -> "Requests":
        await self.producer.start()
        return self

    async def publish(self, *requests: FollowupRequest, ledger: bool = True) -> None:
        for request in requests:
            if ledger:
                await self.redis.hset(ledger_key(request.user_id), request.followup_id, request.due_ts)
            await self.producer.send_and_wait(self.topic, request.to_json(), key=request.user_id.encode())

    async def publish_then_erase(self, request: FollowupRequest) -> None:
        """A request the engine published, then its user's erasure (the engine's tombstone)."""
        published = await self.producer.send_and_wait(self.topic, request.to_json(), key=request.user_id.encode())
        await Ledger(self.redis, ttl_s=60).erase([request.user_id], published.timestamp)

    async def stop(self) -> None:
        await self.producer.stop()
        await self.redis.aclose()


async def stop_all(worker: WorkerProcess, llm: FakeLLMProcess, *started) -> None:
    """Stop what a test started: readers, publishers and clients first, then the worker and the LLM."""
    for thing in started:
        await (thing.aclose() if isinstance(thing, aioredis.Redis) else thing.stop())
    worker.stop()
    llm.stop()


def request(followup_id: str, user: str, bot: str = "maestro", app: str = "whatsapp", due_ts: int = START + 12 * HOUR) -> FollowupRequest:
    return FollowupRequest(followup_id, user, bot, app, due_ts=due_ts, last_inbound_ts=due_ts - 12 * HOUR, inbound_in_window=5)


# -- (a) and (d): end to end, then erased ---------------------------------------------------

def conversation(user: str) -> list[bytes]:
    """Five inbound messages on WhatsApp, then the user moves to Instagram, then a silence."""
    lines = [message(f"wamid.{user}.{i}", user, "whatsapp", "inbound", START + i * MINUTE, f"question {i} about film music")
             for i in range(5)]
    lines.append(message(f"m_{user}.5", user, "instagram", "inbound", START + 5 * MINUTE, "I loved the Interstellar score"))
    lines.append(message(f"m_{user}.6", user, "instagram", "outbound", START + 6 * MINUTE, "Glad you liked it."))
    lines.append(orjson.dumps({"type": "tick", "ts": format_ts(START + 13 * HOUR)}))
    return lines


async def test_a_followup_goes_to_the_latest_inbound_app_and_erasure_leaves_nothing(stack, topic_prefix, redis_db, tmp_path):
    user = "u-e2e-1"
    llm = FakeLLMProcess("ok").start()
    worker = worker_for(stack, topic_prefix, redis_db, tmp_path, ["engine", "context", "generator"], llm).start()
    requested, delivered, outcomes = await readers(stack, topic_prefix, FOLLOWUPS_REQUESTED, DELIVERY_INSTAGRAM, FOLLOWUP_OUTCOMES)
    redis = aioredis.Redis.from_url(redis_db)
    try:
        assert (await feed(conversation(user), stack.bootstrap, topic_prefix)).errors == []
        await outcomes.wait_for(lambda got: worker.check_alive() and got, 60, "the follow-up's outcome")
        # Three readers of three topics: each may still be fetching what the others saw.
        await requested.wait_for(lambda got: got, 30, "the request")
        await delivered.wait_for(lambda got: got, 30, "the delivery")
        [request_record], [delivery_record] = requested.records, delivered.records
        followup_id = orjson.loads(request_record.value)["followup_id"]
        delivery = orjson.loads(delivery_record.value)
        assert delivery["followup_id"] == followup_id and delivery_record.key == user.encode()
        assert delivery["app"] == "instagram" and delivery["ai_generated"] is True and delivery["replaced"] is False
        assert delivery["text"] == f"{OK_TEXT}\n\n{disclosure_line('en')}" and delivery["disclosure"] == disclosure_line("en")
        assert delivery["body"] == {"recipient": {"id": user}, "messaging_type": "UPDATE",
                                    "message": {"text": delivery["text"], "metadata": followup_id}}
        assert [(o["followup_id"], o["outcome"], o["tries"]) for o in values(outcomes)] == [(followup_id, "generated", 1)]
        prompt = orjson.dumps((await llm.stats())["last_body"]).decode()
        assert "I loved the Interstellar score" in prompt and "Maestro of Movie Magic" in prompt
        print(f"\nrequest -> delivery: {delivery_record.timestamp - request_record.timestamp} ms")

        assert len([key async for key in redis.scan_iter(match=f"*{user}*")]) == 4  # context, its bots, last inbound, ledger
        assert await redis.hget(ledger_key(user), followup_id) == b"generated"
        erase = orjson.dumps({"type": "erase", "user_id": user})
        assert (await feed([erase], stack.bootstrap, topic_prefix)).errors == []

        async def nothing_left():
            worker.check_alive()
            return [key async for key in redis.scan_iter(match=f"*{user}*")] == []
        await async_wait_for(nothing_left, 30, f"no Redis key of {user} after the erasure")
    finally:
        for reader in (requested, delivered, outcomes):
            await reader.stop()
        await redis.aclose()
        worker.stop()
        llm.stop()
    assert "Traceback" not in worker.log_tail(2000), worker.log_tail(60)


# -- (b): fault modes -------------------------------------------------------------------------

# Short timeouts and waits, and a breaker that half-opens quickly, so each fault shows in seconds.
FAULT_SETTINGS = dict(llm_timeout="1s", llm_attempts=2, generation_tries=3, generation_backoff="500ms",
                      llm_breaker_cooldown="500ms", llm_concurrency=4)


async def test_b_every_request_is_accounted_for_whatever_the_llm_does(stack, topic_prefix, redis_db, tmp_path):
    llm = FakeLLMProcess("ok", slow_delay=3.0).start()
    worker = worker_for(stack, topic_prefix, redis_db, tmp_path, ["context", "generator"], llm, **FAULT_SETTINGS).start()
    delivered, outcomes, dead = await readers(stack, topic_prefix, DELIVERY_WHATSAPP, FOLLOWUP_OUTCOMES, DEADLETTER)
    requests = await Requests(stack, topic_prefix, redis_db).start()
    published: list[str] = []

    async def batch(mode: str, count: int) -> list[dict]:
        """Outcomes of ``count`` new requests written while the fake LLM is in ``mode``."""
        await llm.set_mode(mode)
        calls_before = (await llm.stats())["requests"]
        batch_requests = [request(f"{mode}-{len(published)}-{i}", f"u-{mode}-{i}") for i in range(count)]
        await requests.publish(*batch_requests)
        published.extend(r.followup_id for r in batch_requests)
        wanted = {r.followup_id for r in batch_requests}
        started = time.monotonic()
        await outcomes.wait_for(lambda got: worker.check_alive() and wanted <= by_followup(outcomes).keys(), 45, f"outcomes of the {mode} batch")
        calls = (await llm.stats())["requests"] - calls_before
        print(f"\n{mode}: {count} requests accounted for in {time.monotonic() - started:.1f}s, {calls} LLM calls")
        assert calls >= 1  # the LLM itself was reached, not only the open breaker
        return [by_followup(outcomes)[fid][0] for fid in sorted(wanted)]

    try:
        for mode in ("pressure", "human"):
            assert {o["outcome"] for o in await batch(mode, 4)} == {"generated"}
        safe_text = f"{safe_template('en')}\n\n{disclosure_line('en')}"
        assert [(d["text"], d["replaced"]) for d in values(delivered)] == [(safe_text, True)] * 8

        for mode in ("rate429", "error500", "garbage", "slow"):
            got = await batch(mode, 6)
            assert {(o["outcome"], o["reason"], o["tries"]) for o in got} == {("dead_lettered", "generation_failed", 3)}
            # The stream keeps moving: once the LLM answers again, so does the breaker.
            assert [o["outcome"] for o in await batch("ok", 1)] == ["generated"]

        assert sorted(o["followup_id"] for o in values(outcomes)) == sorted(published)  # one outcome each
        letters = [d for d in values(dead) if d["stage"] == "generator"]
        assert len(letters) == 24 and all("generation failed after 3 tries" in d["reason"] for d in letters)
    finally:
        for reader in (delivered, outcomes, dead):
            await reader.stop()
        await requests.stop()
        worker.stop()
        llm.stop()
    assert "Traceback" not in worker.log_tail(2000), worker.log_tail(60)


# -- (c): cancelled before delivery --------------------------------------------------------

async def test_c_requests_are_cancelled_when_the_user_is_back_killed_or_erased(stack, topic_prefix, redis_db, tmp_path):
    # Every LLM call takes 4 s: the time to bring the user back while one is in flight.
    llm = FakeLLMProcess("slow", slow_delay=4.0).start()
    worker = worker_for(stack, topic_prefix, redis_db, tmp_path, ["context", "generator"], llm, llm_timeout="10s").start()
    delivered, outcomes = await readers(stack, topic_prefix, DELIVERY_WHATSAPP, FOLLOWUP_OUTCOMES)
    requests = await Requests(stack, topic_prefix, redis_db).start()
    redis = aioredis.Redis.from_url(redis_db)
    due = START + 12 * HOUR

    async def outcome_of(followup_id: str, what: str) -> dict:
        await outcomes.wait_for(lambda got: worker.check_alive() and followup_id in by_followup(outcomes), 30, what)
        return by_followup(outcomes)[followup_id][0]

    async def inbound_seen(user: str):
        await feed([message(f"wamid.{user}.back", user, "whatsapp", "inbound", due + MINUTE, "I'm back!")], stack.bootstrap, topic_prefix)
        await async_wait_for(lambda: worker.check_alive() and redis.hget(last_inbound_key(user), "maestro"), 30, f"{user}'s inbound in Redis")

    try:
        await redis.hset(KILLS_KEY, "bot:coach-mateo", "1")
        await inbound_seen("u-back-before")
        await requests.publish(request("killed", "u-killed", bot="coach-mateo"), request("back-before", "u-back-before"),
                               request("no-bot", "u-no-bot", bot="nobody"))
        await requests.publish_then_erase(request("erased", "u-erased"))
        assert (await outcome_of("killed", "the killed one"))["reason"] == "killed"
        assert {k: (await outcome_of("back-before", "user back"))[k] for k in ("outcome", "reason", "tries")} == \
            {"outcome": "cancelled", "reason": "user_returned", "tries": 0}
        assert (await outcome_of("no-bot", "unknown bot"))["outcome"] == "dead_lettered"
        assert (await outcome_of("erased", "the erased one"))["reason"] == "erased"
        assert await redis.exists(ledger_key("u-erased")) == 0

        # The user comes back while the LLM writes: the check right before routing sees it.
        await requests.publish(request("back-during", "u-back-during"))
        await async_wait_for(lambda: _in_flight(llm), 15, "the LLM call in flight")
        await inbound_seen("u-back-during")
        got = await outcome_of("back-during", "user back during generation")
        assert (got["outcome"], got["reason"], got["tries"]) == ("cancelled", "user_returned", 1)

        # A request delivered once is dropped when it comes again. The next request of the
        # same user, behind it in the partition, takes the 4 s of the slow LLM: by then the
        # duplicate, one Redis call, is long gone.
        await requests.publish(request("twice", "u-twice"))
        assert (await outcome_of("twice", "the first copy"))["outcome"] == "generated"
        await requests.publish(request("twice", "u-twice"), ledger=False)
        await requests.publish(request("after-twice", "u-twice", due_ts=due + HOUR))
        assert (await outcome_of("after-twice", "the request after the copy"))["outcome"] == "generated"
        assert len(by_followup(outcomes)["twice"]) == 1
        assert [d["followup_id"] for d in values(delivered)] == ["twice", "after-twice"]
    finally:
        await stop_all(worker, llm, delivered, outcomes, requests, redis)
    assert "Traceback" not in worker.log_tail(2000), worker.log_tail(60)


async def _in_flight(llm: FakeLLMProcess) -> bool:
    return (await llm.stats())["in_flight"] >= 1
