"""Exactly one follow-up whatever Redis does (issue 14): each silence requested once, sent
once and ended once, with Redis SIGKILLed and restarted without its data mid-stream, with
the engine SIGKILLed between Kafka's acknowledgement and the ledger write, and with the
generator's Redis gone while it writes.

The whole pipeline runs as worker processes on the real broker and a Redis server of the
test's own (so that it can be killed), with the fake LLM and the fake Graph API as the two
outside services. The oracle is the spec's: every user below sends five messages and then
falls silent, so each silence yields exactly one follow-up (sections 3 and 4), sent at most
once (section 9); with nothing else in the stream, every one of them is sent.
"""
from __future__ import annotations

import collections
import os
import shutil
import signal
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from devstack.fake_graph import FakeGraph, accounts_from_registry
from devstack.feeder import feed
from devstack.localstack import RedisServer, free_port, port_in_use
from devstack.processes import WorkerProcess
from schemas.records import format_ts
from schemas.registry import BotRegistry
from streams.topics import FOLLOWUP_OUTCOMES, FOLLOWUPS_REQUESTED, MESSAGES, topic_name
from tests.kafkaread import TopicReader, group_lag
from tests.test_generator_kafka import FakeLLMProcess
from tests.test_sender_kafka import ending, registry_file
from tests.waiting import async_wait_for

pytestmark = pytest.mark.kafka

START = 1_795_856_400_000  # 2026-11-28T09:00:00Z
MINUTE, HOUR = 60_000, 3_600_000
USERS = 40
SETTINGS = dict(clock="event", quiet_hours="off", user_cap_day=0, user_cap_week=0, llm_model="fake",
                llm_timeout="10s", llm_attempts=1, llm_concurrency=4, send_timeout="2s", generation_lease_margin="3s",
                whatsapp_send_rate=1000, facebook_send_rate=1000, instagram_send_rate=1000)


def silences(users: int = USERS) -> list[bytes]:
    """Each user writes five times to the bot on WhatsApp, then falls silent; a tick makes every silence due."""
    lines = [orjson.dumps({"event_id": f"wamid.{user}.{i}", "app": "whatsapp", "user_id": f"1650555{user:04d}",
                           "bot_id": "maestro", "direction": "inbound", "ts": format_ts(START + (user + i) * MINUTE),
                           "text": f"question {i} about film music"})
             for user in range(users) for i in range(5)]
    lines.append(orjson.dumps({"type": "tick", "ts": format_ts(START + 13 * HOUR + users * MINUTE)}))
    return lines


class Pipeline:
    """Workers by role on the session's broker, a Redis server of its own, the fake LLM
    (``llm_delay`` a call) and the fake Graph API; readers of requests and outcomes.
    ``settings``: the workers' settings beyond ``SETTINGS``."""

    def __init__(self, stack, prefix: str, tmp_path: Path, llm_delay: float, **settings) -> None:
        self.stack, self.prefix, self.tmp_path, self.llm_delay = stack, prefix, tmp_path, llm_delay
        self.settings = {**SETTINGS, **settings}
        self.registry = registry_file(tmp_path)
        self.redis_server = RedisServer(tmp_path / "redis", free_port())
        self.workers: list[WorkerProcess] = []
        self.workers_started = 0
        self.started: list = []

    async def __aenter__(self) -> "Pipeline":
        self.redis_server.start()
        self.redis = aioredis.Redis.from_url(self.redis_server.url)
        self.llm = FakeLLMProcess("slow", slow_delay=self.llm_delay).start()
        self.fake = FakeGraph(accounts_from_registry(BotRegistry.load(self.registry)), limits={"whatsapp": 1000})
        await self.fake.start()
        self.started.append(self.fake)
        self.requested = await TopicReader(self.stack.bootstrap, topic_name(FOLLOWUPS_REQUESTED, self.prefix), 4).start()
        self.outcomes = await TopicReader(self.stack.bootstrap, topic_name(FOLLOWUP_OUTCOMES, self.prefix), 4).start()
        self.started += [self.requested, self.outcomes]
        return self

    async def __aexit__(self, *exc_info) -> None:
        for worker in self.workers:
            worker.stop()
        for thing in reversed(self.started):
            await thing.stop()
        await self.redis.aclose()
        self.llm.stop()
        self.redis_server.stop()

    async def kill_redis(self) -> None:
        os.kill(self.redis_server.pid(), signal.SIGKILL)
        self.redis_server.stop()  # reaped
        # An append-only-file rewrite, forked, holds the port a moment longer.
        await async_wait_for(lambda: not port_in_use(self.redis_server.port), 30, "Redis's port to be free")

    async def restart_redis_without_its_data(self) -> None:
        await self.redis.set("written-before-the-kill", 1)
        await self.kill_redis()
        shutil.rmtree(self.redis_server.state_dir / "redis-data")
        await self.restart_redis()
        assert await self.redis.exists("written-before-the-kill") == 0

    async def restart_redis(self) -> None:
        """On the same port; the test's own client anew (the workers retry on fresh connections)."""
        self.redis_server.start()
        await self.redis.aclose()
        self.redis = aioredis.Redis.from_url(self.redis_server.url)

    def worker(self, roles: list[str]) -> WorkerProcess:
        self.workers_started += 1
        log_dir = self.tmp_path / f"{'-'.join(roles)}-{self.workers_started}"
        log_dir.mkdir()
        worker = WorkerProcess(log_dir, roles, broker=self.stack.bootstrap, redis_url=self.redis_server.url,
                               topic_prefix=self.prefix, partitions=4, data_dir=log_dir / "data",
                               registry=self.registry, llm_base_url=self.llm.base_url,
                               graph_base_url=self.fake.base_url, **self.settings)
        self.workers.append(worker.start())
        return worker

    async def requests_at_the_llm(self) -> WorkerProcess:
        """The pipeline with the generator a worker of its own, fed until requests are being
        written (the LLM takes ``llm_delay`` a call); that worker."""
        self.worker(["ingest", "engine", "context", "sender"])
        generator = self.worker(["generator"])
        assert (await feed(silences(), self.stack.bootstrap, self.prefix)).errors == []

        async def writing() -> bool:
            self.alive()
            return (await self.llm.stats())["in_flight"] >= 4
        await async_wait_for(writing, 60, "requests in flight at the LLM")
        return generator

    def alive(self) -> bool:
        return all(worker.check_alive() for worker in self.workers)

    def stories(self) -> dict[str, list[dict]]:
        found: dict[str, list[dict]] = collections.defaultdict(list)
        for message in self.outcomes.records:
            value = orjson.loads(message.value)
            found[value["followup_id"]].append(value)
        return found

    async def wait_until_every_silence_is_sent(self, users: int = USERS, timeout: float = 150) -> dict[str, list[dict]]:
        def all_ended() -> bool:
            self.alive()
            stories = self.stories()
            return len(stories) >= users and all(ending(story) is not None for story in stories.values())
        await async_wait_for(all_ended, timeout, f"a final outcome for each of the {users} silences")
        # Everything fed consumed and committed by the engine: no request can still come.
        await async_wait_for(self._engine_done, 60, "the engine to commit the whole stream")
        return self.stories()

    async def _engine_done(self) -> bool:
        return await group_lag(self.stack.bootstrap, f"{self.prefix}relance.engine", topic_name(MESSAGES, self.prefix), 4) == 0

    def assert_each_silence_requested_sent_and_ended_once(self, stories: dict[str, list[dict]], users: int = USERS) -> None:
        requested = collections.Counter(orjson.loads(m.value)["followup_id"] for m in self.requested.records)
        by_user = collections.Counter(orjson.loads(m.value)["user_id"] for m in self.requested.records)
        assert len(by_user) == users and max(by_user.values()) == 1, f"a silence requested twice: {by_user.most_common(3)}"
        assert [fid for fid, n in requested.items() if n > 1] == [], "a follow-up requested twice"
        assert set(stories) == set(requested), "an outcome for a follow-up never requested, or one without any"
        endings = {fid: ending(story) for fid, story in stories.items()}
        assert collections.Counter(endings.values()) == {"sent": users}, \
            {fid: story for fid, story in stories.items() if endings[fid] != "sent"}
        assert [fid for fid, sends in self.fake.accepted.items() if sends > 1] == [], "a follow-up sent twice"
        assert set(self.fake.accepted) == set(requested)


async def test_redis_killed_and_restarted_without_its_data_mid_stream_loses_and_doubles_nothing(stack, topic_prefix, tmp_path):
    async with Pipeline(stack, topic_prefix, tmp_path, llm_delay=0.3) as pipeline:
        pipeline.worker(["ingest", "engine", "context"])
        pipeline.worker(["generator", "sender"])
        assert (await feed(silences(), stack.bootstrap, topic_prefix)).errors == []
        await async_wait_for(lambda: pipeline.alive() and len(pipeline.fake.accepted) >= USERS // 3, 90,
                             "a third of the follow-ups sent")
        await pipeline.restart_redis_without_its_data()
        stories = await pipeline.wait_until_every_silence_is_sent()
        pipeline.assert_each_silence_requested_sent_and_ended_once(stories)
        for worker in pipeline.workers:
            assert "Traceback" not in worker.log_tail(3000), worker.log_tail(60)


async def test_an_engine_killed_between_kafkas_ack_and_the_ledger_write_requests_nothing_twice(stack, topic_prefix, tmp_path):
    """Redis takes no write while the engine publishes (``CLIENT PAUSE ... WRITE``): a ledger
    written after Kafka's acknowledgement waits there, and the engine is SIGKILLed as soon
    as a request is on the topic, committed or not."""
    async with Pipeline(stack, topic_prefix, tmp_path, llm_delay=0.0) as pipeline:
        pipeline.worker(["generator", "sender", "context"])
        engine = pipeline.worker(["ingest", "engine"])
        await async_wait_for(lambda: engine.check_alive() and engine.ready(), 60, "the engine ready")
        await pipeline.redis.execute_command("CLIENT", "PAUSE", 120_000, "WRITE")
        uncommitted = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, auto_offset_reset="earliest",
                                       isolation_level="read_uncommitted")
        await uncommitted.start()
        try:
            uncommitted.assign([TopicPartition(topic_name(FOLLOWUPS_REQUESTED, topic_prefix), p) for p in range(4)])
            assert (await feed(silences(), stack.bootstrap, topic_prefix)).errors == []

            async def a_request_on_the_topic() -> bool:
                engine.check_alive()
                return any((await uncommitted.getmany(timeout_ms=100)).values())
            await async_wait_for(a_request_on_the_topic, 60, "a request on followups.requested")
        finally:
            await uncommitted.stop()
        engine.kill()
        pipeline.workers.remove(engine)
        await pipeline.redis.execute_command("CLIENT", "UNPAUSE")
        pipeline.worker(["ingest", "engine"])
        stories = await pipeline.wait_until_every_silence_is_sent()
        pipeline.assert_each_silence_requested_sent_and_ended_once(stories)


async def test_a_generator_whose_redis_is_gone_while_it_writes_ends_every_request_once(stack, topic_prefix, tmp_path):
    """Redis is gone (SIGKILLed) for longer than the stages' retries while requests are being
    written: the generator crashes rather than stall, and, restarted as a supervisor would
    once Redis is back (with its data), ends every request: none was marked done before
    its outcome was recorded."""
    async with Pipeline(stack, topic_prefix, tmp_path, llm_delay=3.0) as pipeline:
        generator = await pipeline.requests_at_the_llm()
        await pipeline.kill_redis()
        await async_wait_for(lambda: not generator.alive, 60, "the generator to crash, Redis gone")
        pipeline.workers.remove(generator)
        await pipeline.restart_redis()
        pipeline.worker(["generator"])  # what a supervisor does
        stories = await pipeline.wait_until_every_silence_is_sent(timeout=240)
        pipeline.assert_each_silence_requested_sent_and_ended_once(stories)


async def test_a_generator_killed_with_requests_in_flight_ends_each_of_them_once(stack, topic_prefix, tmp_path):
    """SIGKILL with requests at the LLM: nothing of theirs was committed, so the restarted
    generator reads them again, and their ledger leases hand each to one try."""
    async with Pipeline(stack, topic_prefix, tmp_path, llm_delay=3.0) as pipeline:
        generator = await pipeline.requests_at_the_llm()
        generator.kill()
        pipeline.workers.remove(generator)
        pipeline.worker(["generator"])
        stories = await pipeline.wait_until_every_silence_is_sent(timeout=240)
        pipeline.assert_each_silence_requested_sent_and_ended_once(stories)


async def test_a_send_in_flight_when_redis_empties_and_the_sender_dies_is_never_sent_again(stack, topic_prefix, tmp_path):
    """Spec section 9: a send that the platform may have received is never repeated; its
    outcome is ``unknown`` until a receipt settles it. The fake Graph API takes each message
    and holds its answer; with every call in flight, Redis is restarted without its data and
    the sender SIGKILLed, then restarted with the platform answering at once. Its ledger
    marks are gone and the delivery records are read again, yet no follow-up reaches the
    platform twice, and each ends ``unknown`` (no receipt comes back in this rig)."""
    users = 6
    async with Pipeline(stack, topic_prefix, tmp_path, llm_delay=0.0, send_timeout="120s") as pipeline:
        pipeline.fake.slow_delay = 600.0  # held: the sender's timeout never comes before its kill
        pipeline.fake.set_mode("slow")
        pipeline.worker(["ingest", "engine", "context", "generator"])
        sender = pipeline.worker(["sender"])
        assert (await feed(silences(users), stack.bootstrap, topic_prefix)).errors == []
        await async_wait_for(lambda: pipeline.alive() and len(pipeline.fake.accepted) == users, 90,
                             "every follow-up taken by the platform, its answer held")
        await pipeline.restart_redis_without_its_data()
        sender.kill()
        pipeline.workers.remove(sender)
        pipeline.fake.set_mode("ok")
        pipeline.worker(["sender"])
        stories = await pipeline.wait_until_every_silence_is_sent(users)
        assert [fid for fid, sends in pipeline.fake.accepted.items() if sends > 1] == [], "a follow-up sent twice"
        assert {fid: ending(story) for fid, story in stories.items()} == dict.fromkeys(pipeline.fake.accepted, "unknown")
