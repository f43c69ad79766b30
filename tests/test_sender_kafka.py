"""The sender through the real Kafka broker and Redis, against the project's fake Graph API
(spec section 9): a follow-up sent once, with the right body, to the right endpoint, and its
receipts back on ``followups.outcomes``; then, under every fault mode of the fake and with
the sender SIGKILLed mid-stream, the spec's promises counted where the platform would
count them: no follow-up sent twice, one final outcome each, never over a number's rate.

Receipts come back as Meta posts them: signed, to a real gateway (``agents/gateway.py``),
which writes them to ``raw.<app>`` for ingest to read.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client.parser import text_string_to_metric_families

from devstack.fake_graph import FakeGraph, accounts_from_registry
from devstack.feeder import feed
from devstack.processes import RELANCE, WorkerProcess
from domain.delivery import delivery_record
from domain.honesty import finalize
from foundation.clock import wall_ms
from foundation.metrics import new_metrics, render
from schemas.records import DeliveryRecord, FollowupRequest, format_ts, parse_ts
from schemas.registry import BotRegistry
from streams.attempts import AttemptLog
from streams.kafkaclient import PLAINTEXT
from streams.kafkaloop import new_producer, read_partition
from streams.ledger import ledger_key
from streams.topics import (
    DELIVERY_BY_APP, DELIVERY_WHATSAPP, DELIVERY_FACEBOOK, FOLLOWUP_OUTCOMES, FOLLOWUPS_ATTEMPTS, MESSAGES, topic_name,
)
from tests.loopthread import Background
from tests.gatewaykit import SECRET, gateway_settings, running_gateway
from tests.kafkaread import TopicReader
from tests.waiting import async_wait_for

pytestmark = pytest.mark.kafka

WA1, WA2, PAGE1, IG1 = "106540352242922", "106540352242923", "112233445566778", "17841400000000001"
EXPLAIN_TOKEN = "explain-token-of-the-sender-test"  # /explain answers only its bearers
RATE = 20  # messages a second per account: the sender's setting and the fake's own limit
MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
# What ends a request at the sender; receipts may add delivered, read, and failed later.
ENDINGS = ("sent", "unknown", "failed", "cancelled", "dead_lettered")
# Short waits, so that each fault shows in seconds: a call times out after 1 s, refusals
# come back after 0.2 to 1 s, a refused token is probed every second.
SENDER_SETTINGS = dict(send_timeout="1s", send_backoff="200ms", send_backoff_max="1s", send_token_probe="1s",
                       whatsapp_send_rate=RATE, facebook_send_rate=RATE, instagram_send_rate=RATE,
                       send_rate_slack="200ms", send_concurrency=16)


def registry_file(tmp_path: Path) -> Path:
    """Two bots whose tokens are files, read by the sender when it sends."""
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    for name in ("wa", "maestro-page", "maestro-ig"):
        (tokens / name).write_text(f"EAAG-{name}\n")
    path = tmp_path / "bots.toml"
    path.write_text(f'''
[[bot]]
id = "maestro"
name = "Maestro of Movie Magic"
persona = "A warm film-music lover who suggests soundtracks and composers."
language = "en"
whatsapp = ["{WA1}"]
facebook = ["{PAGE1}"]
instagram = ["{IG1}"]
tokens = {{ whatsapp = "file:{tokens / 'wa'}", facebook = "file:{tokens / 'maestro-page'}", instagram = "file:{tokens / 'maestro-ig'}" }}

[[bot]]
id = "chef-lucie"
name = "Chef Lucie"
persona = "Une cheffe lyonnaise chaleureuse."
language = "fr"
whatsapp = ["{WA2}"]
tokens = {{ whatsapp = "file:{tokens / 'wa'}" }}
''')
    return path


class Rig:
    """A sender worker (and ingest, for the receipts), the fake Graph API, a gateway, and
    what the test reads and writes: followups.outcomes, the delivery topics, the ledger."""

    def __init__(self, stack, prefix: str, redis_url: str, tmp_path: Path, roles: list[str],
                 fake_thread: bool = False, **settings) -> None:
        self.stack, self.prefix, self.redis_url, self.tmp_path, self.roles = stack, prefix, redis_url, tmp_path, roles
        self.registry = registry_file(tmp_path)
        self.settings = {**SENDER_SETTINGS, "clock": "wall", **settings}
        self.worker: WorkerProcess | None = None
        # The fake on an event loop of its own: it notes when each call arrives, which a
        # busy test loop (the gateway, the readers) would otherwise note late, in bunches.
        self.background = Background() if fake_thread else None

    async def _on_fake_loop(self, coroutine):
        if self.background is None:
            return await coroutine
        return await asyncio.wrap_future(self.background.submit(coroutine))

    async def __aenter__(self) -> "Rig":
        self.gateway_settings = gateway_settings(self.stack.bootstrap, self.prefix)
        self.gateway = running_gateway(self.gateway_settings)
        await self.gateway.__aenter__()
        self.fake = FakeGraph(accounts_from_registry(BotRegistry.load(self.registry)),
                              callback_url=f"http://127.0.0.1:{self.gateway_settings.gateway_port}",
                              app_secret=SECRET, limits={"whatsapp": RATE, "facebook": RATE, "instagram": RATE},
                              slow_delay=2.0, receipt_delay=0.05)
        await self._on_fake_loop(self.fake.start())
        self.outcomes = await TopicReader(self.stack.bootstrap, topic_name(FOLLOWUP_OUTCOMES, self.prefix), 4).start()
        self.producer = AIOKafkaProducer(bootstrap_servers=self.stack.bootstrap, acks="all")
        await self.producer.start()
        self.redis = aioredis.Redis.from_url(self.redis_url)
        self.start_worker()
        return self

    def start_worker(self) -> None:
        self.worker = WorkerProcess(
            self.tmp_path, self.roles, broker=self.stack.bootstrap, redis_url=self.redis_url,
            topic_prefix=self.prefix, partitions=4, data_dir=self.tmp_path / "data", registry=self.registry,
            graph_base_url=self.fake.base_url, quiet_hours="off", user_cap_day=0, user_cap_week=0,
            explain_token=EXPLAIN_TOKEN, **self.settings,
        ).start()

    async def __aexit__(self, *exc_info) -> None:
        self.worker.stop()
        await self.outcomes.stop()
        await self.producer.stop()
        await self.redis.aclose()
        await self._on_fake_loop(self.fake.stop())
        if self.background is not None:
            self.background.close()
        await self.gateway.__aexit__(None, None, None)
        assert self.fake.webhook_failures == 0  # every receipt posted was taken by the gateway
        assert "Traceback" not in self.worker.log_tail(3000), self.worker.log_tail(80)

    async def publish(self, *records: DeliveryRecord) -> None:
        """As the generator hands them on: the ledger says generated, then the record."""
        for record in records:
            await self.redis.hset(ledger_key(record.user_id), record.followup_id, "generated")
            await self.producer.send_and_wait(topic_name(DELIVERY_BY_APP[record.app], self.prefix), record.to_json(),
                                              key=record.user_id.encode())

    def stories(self) -> dict[str, list[dict]]:
        found: dict[str, list[dict]] = {}
        for message in self.outcomes.records:
            value = orjson.loads(message.value)
            found.setdefault(value["followup_id"], []).append(value)
        return found

    async def wait_for_stories(self, followup_ids, what: str, timeout: float = 45,
                               done=lambda story: ending(story) is not None) -> dict[str, list[dict]]:
        wanted = set(followup_ids)

        def all_done() -> bool:
            self.worker.check_alive()
            stories = self.stories()
            return all(fid in stories and done(stories[fid]) for fid in wanted)
        try:
            await async_wait_for(all_done, timeout, what)
        except AssertionError as exc:  # which ones, and how far each got: the failure's own story
            stories = self.stories()
            behind = {fid: steps(stories[fid]) if fid in stories else None
                      for fid in sorted(wanted) if fid not in stories or not done(stories[fid])}
            raise AssertionError(f"{exc}; not there: {behind}") from None
        return {fid: self.stories()[fid] for fid in wanted}

    async def metric(self, name: str, **labels: str) -> float | None:
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{self.worker.web_port}/metrics") as response:
            text = await response.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return None


def record(followup_id: str, user: str, app: str = "whatsapp", bot: str = "maestro",
           last_inbound_ts: int | None = None) -> DeliveryRecord:
    now = wall_ms()
    request = FollowupRequest(followup_id, user, bot, app, due_ts=now - MINUTE,
                              last_inbound_ts=last_inbound_ts or now - HOUR, inbound_in_window=5)
    return delivery_record(request, finalize("Two more film scores for you?", "en"), now)


def ending(story: list[dict]) -> str | None:
    """The request's one final outcome, None while it has none; AssertionError if it has two.
    Receipts add steps after it: delivered, read, a failed status; ``sent`` settling an unknown.
    A crash between an outcome's publication and the ledger's final state publishes the same
    outcome again (at least once, never lost): the same ending twice is still one ending."""
    endings = list(dict.fromkeys(step["outcome"] for step in story if step["outcome"] in ENDINGS))
    if "unknown" in endings and "sent" in endings:
        # Settled by a receipt; ingest and the sender both write the topic, so either may come first.
        endings.remove("sent")
    if endings[1:2] == ["failed"] and endings[0] in ("sent", "unknown"):
        endings = endings[:1]  # a failed status after it was sent
    assert len(endings) <= 1, f"two final outcomes: {story}"
    return endings[0] if endings else None


def steps(story: list[dict]) -> list[str]:
    return [step["outcome"] for step in story]


def never_twice_and_never_over_the_rate(fake: FakeGraph) -> None:
    """Spec section 9, counted at the platform: at most once per follow-up, and at most the
    rate per number, page and account in any one-second bucket."""
    assert [fid for fid, sends in fake.accepted.items() if sends > 1] == []
    over = {key: n for key, n in fake.per_second.items() if n > RATE}
    assert over == {}, over


# -- end to end ----------------------------------------------------------------------------

START = 1_795_856_400_000  # 2026-11-28T09:00:00Z


def conversation(user: str, app: str, event_id: str) -> list[bytes]:
    return [orjson.dumps({"event_id": f"{event_id}.{i}", "app": app, "user_id": user, "bot_id": "maestro",
                          "direction": "inbound", "ts": format_ts(START + i * MINUTE), "text": f"question {i} about film music"})
            for i in range(5)]


async def test_canonical_events_in_a_followup_sent_once_then_delivered_and_read(stack, topic_prefix, redis_db, tmp_path):
    roles = ["ingest", "engine", "context", "generator", "sender"]
    async with Rig(stack, topic_prefix, redis_db, tmp_path, roles, clock="event") as rig:
        deliveries = [await TopicReader(stack.bootstrap, topic_name(spec, topic_prefix), 4).start()
                      for spec in (DELIVERY_WHATSAPP, DELIVERY_FACEBOOK)]
        try:
            lines = conversation("16505551234", "whatsapp", "wamid.e2e") + conversation("6945512345678901", "facebook", "m_e2e")
            lines.append(orjson.dumps({"type": "tick", "ts": format_ts(START + 13 * HOUR)}))
            assert (await feed(lines, stack.bootstrap, topic_prefix)).errors == []
            for reader in deliveries:
                await reader.wait_for(lambda got: got, 60, "the follow-up handed to its delivery topic")
            sent = {app: orjson.loads(reader.records[0].value) for app, reader in zip(("whatsapp", "facebook"), deliveries)}
            stories = await rig.wait_for_stories([d["followup_id"] for d in sent.values()], "delivered and read",
                                                 done=lambda story: steps(story)[-2:] == ["delivered", "read"])
        finally:
            for reader in deliveries:
                await reader.stop()
        # Each sent once, its body as the generator wrote it, to its app's endpoint (spec section 9).
        assert sorted(rig.fake.received) == sorted([(f"/v26.0/{WA1}/messages", sent["whatsapp"]["body"]),
                                                    ("/v26.0/me/messages", sent["facebook"]["body"])])
        assert sent["whatsapp"]["body"]["biz_opaque_callback_data"] == sent["whatsapp"]["followup_id"]
        assert sent["facebook"]["body"]["message"]["metadata"] == sent["facebook"]["followup_id"]
        for delivery in sent.values():
            fid = delivery["followup_id"]
            assert rig.fake.accepted[fid] == 1
            # Its story, on followups.outcomes: generated, sent, then the receipts' delivered and read.
            assert steps(stories[fid]) == ["generated", "sent", "delivered", "read"], stories[fid]
        assert rig.fake.webhooks_posted >= 6  # WhatsApp sent, delivered, read; Messenger echo, delivery, read
        # `relance explain` tells the end of the story, from the engine's decision and the ledger.
        told = subprocess.run([RELANCE, "explain", "16505551234", "maestro", "--worker",
                               f"http://127.0.0.1:{rig.worker.web_port}"], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "RELANCE_EXPLAIN_TOKEN": EXPLAIN_TOKEN})
        assert f"follow-up {sent['whatsapp']['followup_id']}: sent, then read" in told.stdout, told.stdout + told.stderr


# -- every fault of the fake -----------------------------------------------------------------

async def test_every_fault_mode_ends_each_request_once_never_sends_twice_nor_over_the_rate(stack, topic_prefix, redis_db, tmp_path):
    async with Rig(stack, topic_prefix, redis_db, tmp_path, ["sender", "ingest"]) as rig:
        fake, made = rig.fake, [0]

        async def batch(mode: str, count: int, app: str = "whatsapp", bot: str = "maestro", fail_times: int | None = None,
                        last_inbound_ts: int | None = None, done=None) -> dict[str, list[dict]]:
            """The stories of ``count`` new requests sent while the fake is in ``mode``."""
            fake.set_mode(mode, fail_times)
            records = [record(f"{mode}-{made[0] + i}", f"u-{mode}-{made[0] + i}", app, bot, last_inbound_ts) for i in range(count)]
            made[0] += count
            started = time.monotonic()
            await rig.publish(*records)
            stories = await rig.wait_for_stories([r.followup_id for r in records], f"the {mode} batch",
                                                 **({"done": done} if done else {}))
            print(f"\n{mode:>14} x{count} {app}: {time.monotonic() - started:4.1f}s, endings "
                  f"{sorted({ending(s) for s in stories.values()})}, fake answers {dict(fake.answers)}")
            return stories

        def endings(stories) -> set[str]:
            return {ending(story) for story in stories.values()}

        def reasons(stories) -> set:
            return {next(s["reason"] for s in story if s["outcome"] == ending(story)) for story in stories.values()}

        # The rate: 60 on one number and 20 on another at once, 20 a second each.
        stories = await batch("ok", 60)
        stories |= await batch("ok", 20, bot="chef-lucie")
        assert endings(stories) == {"sent"}
        assert fake.max_per_second("whatsapp", WA1) >= RATE - 5  # the limit is used, not only kept
        await rig.wait_for_stories(list(stories), "their receipts", done=lambda story: steps(story)[-1] == "read")

        # Refusals that the platform made before taking the message: tried again, sent once.
        for mode, app in (("throughput", "whatsapp"), ("too_many", "instagram"), ("pair_rate", "whatsapp"),
                          ("server_error", "facebook")):
            assert endings(await batch(mode, 4, app, fail_times=6)) == {"sent"}
        assert await rig.metric("relance_sends_total", app="whatsapp", result="slow_down") >= 1

        # Refused for good, by their code.
        window = await batch("window_closed", 3)
        assert endings(window) == {"cancelled"} and reasons(window) == {"window_closed"}
        undeliverable = await batch("undeliverable", 3, "facebook")
        assert endings(undeliverable) == {"failed"} and reasons(undeliverable) == {"551"}

        # Taken by the platform, the answer lost: unknown, never sent again, and the receipts
        # settle it (sent); or sent at once when a receipt came before the answer was lost.
        for mode in ("drop", "slow"):
            lost = await batch(mode, 3, done=lambda story: "sent" in steps(story))
            assert endings(lost) <= {"unknown", "sent"} and all(fake.accepted[fid] == 1 for fid in lost)
        fake.set_mode("ok")
        failed_later = await batch("failed_status", 2, done=lambda story: steps(story)[-1:] == ["failed"])
        assert all(steps(story) == ["sent", "failed"] for story in failed_later.values()), failed_later

        # Refused before it reached the platform: the platform down, then back.
        await fake.stop()
        down = [record(f"down-{i}", f"u-down-{i}") for i in range(3)]
        await rig.publish(*down)
        await async_wait_for(lambda: rig.metric("relance_sends_total", app="whatsapp", result="not_reached"), 20,
                             "a send that could not reach the platform")
        await fake.start()  # the same port
        assert endings(await rig.wait_for_stories([r.followup_id for r in down], "sends once the platform is back")) == {"sent"}

        # A platform refusing until the window closes: window_closed, not tried forever.
        closing = await batch("server_error", 2, last_inbound_ts=wall_ms() - DAY + 2_500)
        assert endings(closing) == {"cancelled"} and reasons(closing) == {"window_closed"}

        # A refused token: the bot's sends stop (probed once a second), wait, then go once it works.
        fake.set_mode("token_invalid")
        held = [record(f"token-{i}", f"u-token-{i}", "instagram") for i in range(4)]
        await rig.publish(*held)
        async def refused() -> bool:
            return await rig.metric("relance_send_token_ok", app="instagram", bot="maestro") == 0
        await async_wait_for(refused, 20, "the token reported refused")
        # While the fault lasts the held requests are not tried again and again: the token is
        # probed once per send_token_probe (1 s), so two more calls take at least about 1 s
        # (four requests retrying every 200 ms would make them in a fraction of that).
        probes_from, since = fake.requests, time.monotonic()
        await async_wait_for(lambda: fake.requests - probes_from >= 2, 30, "two probes of the refused token")
        assert time.monotonic() - since >= 0.8, "the refused token is called faster than it is probed"
        assert not set(rig.stories()) & {r.followup_id for r in held}  # nothing ended meanwhile
        fake.set_mode("ok")
        assert endings(await rig.wait_for_stories([r.followup_id for r in held], "sends once the token works")) == {"sent"}
        assert await rig.metric("relance_send_token_ok", app="instagram", bot="maestro") == 1

        never_twice_and_never_over_the_rate(fake)
        print(f"\nfake: {fake.requests} requests, {sum(fake.accepted.values())} accepted, busiest second "
              f"{max(fake.per_second.values())} (limit {RATE})")


# -- held up between slot and call ------------------------------------------------------------

async def test_sends_held_up_past_the_slack_never_put_more_than_the_rate_in_a_platform_second(
        stack, topic_prefix, redis_db, tmp_path):
    """Spec section 9, "a send rate that the sender never exceeds", counted by the platform
    per number and per second. Half the sends, at random, are held 600 ms after their rate
    slot (``send_fault_hold``: a loaded machine), far beyond the 100 ms slack: without a
    fresh slot before they leave, they would land beside the next second's sends. The
    fake notes arrivals on an event loop of its own: the test's loop, busy with the
    readers, noted them late and in bunches."""
    async with Rig(stack, topic_prefix, redis_db, tmp_path, ["sender"], fake_thread=True, send_rate_slack="100ms",
                   send_fault_hold="600ms", send_concurrency=64) as rig:
        records = [record(f"held-{bot}-{i}", f"u-held-{bot}-{i}", bot=bot)
                   for i in range(120) for bot in ("maestro", "chef-lucie")]
        started = time.monotonic()
        await rig.publish(*records)
        stories = await rig.wait_for_stories([r.followup_id for r in records], "every held-up send ended", timeout=120)
        took = time.monotonic() - started
    # Read once the fake has stopped: its loop no longer writes what is counted.
    busiest = {number: rig.fake.max_per_second("whatsapp", number) for number in (WA1, WA2)}
    print(f"\n{len(records)} sends over 2 numbers, half held 600 ms: {took:.1f}s, "
          f"busiest number-second {busiest} (limit {RATE}), fake answers {dict(rig.fake.answers)}")
    assert {ending(story) for story in stories.values()} == {"sent"}
    never_twice_and_never_over_the_rate(rig.fake)


# -- answered --------------------------------------------------------------------------------------

async def test_an_answer_within_m_of_the_send_adds_answered_to_the_story_once(stack, topic_prefix, redis_db, tmp_path):
    """Spec section 9: a follow-up's outcomes tell "whether the user answered within M"; M as
    in section 3 (``<= M`` after the send). Each user writes to maestro, then to chef-lucie,
    on the user's one partition, in that order: chef-lucie's ``answered`` shows that the
    message to maestro before it was read."""
    window = 2 * HOUR
    async with Rig(stack, topic_prefix, redis_db, tmp_path, ["sender", "context"], messaging_window="2h") as rig:
        follow_ups = {(user, bot): record(f"ans-{user}-{bot}", user, bot=bot)
                      for user in ("u-within", "u-late", "u-cancelled") for bot in ("maestro", "chef-lucie")}
        # Too late to leave (its user's last message is past M): cancelled, never sent.
        follow_ups[("u-cancelled", "maestro")] = record("ans-u-cancelled-maestro", "u-cancelled",
                                                        last_inbound_ts=wall_ms() - 3 * HOUR)
        await rig.publish(*follow_ups.values())
        stories = await rig.wait_for_stories([r.followup_id for r in follow_ups.values()], "every follow-up ended")
        assert ending(stories["ans-u-cancelled-maestro"]) == "cancelled"
        sent_at = {fid: next(step["at"] for step in story if step["outcome"] == "sent")
                   for fid, story in stories.items() if fid != "ans-u-cancelled-maestro"}

        def answer(user: str, bot: str, event_id: str, ts: int) -> bytes:
            return orjson.dumps({"event_id": event_id, "app": "whatsapp", "user_id": user, "bot_id": bot,
                                 "direction": "inbound", "ts": format_ts(ts), "text": "oh yes, tell me more"})

        def after_send(user: str, bot: str, ms: int) -> int:
            return parse_ts(sent_at[f"ans-{user}-{bot}"]) + ms

        async def write(*messages: tuple[str, bytes]) -> None:
            for user, value in messages:
                await rig.producer.send_and_wait(topic_name(MESSAGES, rig.prefix), value, key=user.encode())

        def answered(fid: str) -> list[dict]:
            return [step for step in rig.stories().get(fid, []) if step["outcome"] == "answered"]

        async def seen(*fids: str) -> None:
            await async_wait_for(lambda: rig.worker.check_alive() and all(answered(fid) for fid in fids), 45,
                                 f"answered on {fids}")

        first = answer("u-within", "maestro", "w.1", after_send("u-within", "maestro", MINUTE))
        await write(("u-within", first), ("u-within", first),  # a re-sent webhook
                    ("u-within", answer("u-within", "maestro", "w.2", after_send("u-within", "maestro", 2 * MINUTE))),
                    ("u-late", answer("u-late", "maestro", "l.1", after_send("u-late", "maestro", window + MINUTE))),
                    ("u-cancelled", answer("u-cancelled", "maestro", "c.1", wall_ms())),
                    *((user, answer(user, "chef-lucie", f"{user}.chef", after_send(user, "chef-lucie", window - MINUTE)))
                      for user in ("u-late", "u-cancelled")))
        await seen("ans-u-within-maestro", "ans-u-late-chef-lucie", "ans-u-cancelled-chef-lucie")
        # A restart, then the same answer and one more: still one answered.
        rig.worker.stop()
        rig.start_worker()
        await write(("u-within", first),
                    ("u-within", answer("u-within", "maestro", "w.3", after_send("u-within", "maestro", 3 * MINUTE))),
                    ("u-within", answer("u-within", "chef-lucie", "w.chef", after_send("u-within", "chef-lucie", window - MINUTE))))
        await seen("ans-u-within-chef-lucie")
        within = answered("ans-u-within-maestro")
        assert [(step["app"], parse_ts(step["at"])) for step in within] == \
            [("whatsapp", after_send("u-within", "maestro", MINUTE))], within
        assert answered("ans-u-late-maestro") == [] and answered("ans-u-cancelled-maestro") == []
        for user in ("u-within", "u-late", "u-cancelled"):  # each told once, at the answer's own ts
            assert [parse_ts(step["at"]) for step in answered(f"ans-{user}-chef-lucie")] == \
                [after_send(user, "chef-lucie", window - MINUTE)]


# -- a crash mid-stream ---------------------------------------------------------------------------

async def test_a_sender_killed_mid_stream_and_restarted_sends_nothing_twice(stack, topic_prefix, redis_db, tmp_path):
    async with Rig(stack, topic_prefix, redis_db, tmp_path, ["sender", "ingest"]) as rig:
        rig.fake.slow_delay = 0.3  # calls in flight when the blow falls
        rig.fake.set_mode("slow")
        records = [record(f"crash-{app}-{bot}-{i}", f"u-crash-{app}-{i}", app, bot)
                   for i in range(40) for app, bot in (("whatsapp", "maestro"), ("whatsapp", "chef-lucie"), ("facebook", "maestro"))]
        await rig.publish(*records)
        await async_wait_for(lambda: rig.worker.check_alive() and sum(rig.fake.accepted.values()) >= 30, 30, "sends under way")
        rig.worker.kill()
        in_flight = sum(rig.fake.accepted.values()) - sum(ending(s) == "sent" for s in rig.stories().values())
        rig.start_worker()
        stories = await rig.wait_for_stories([r.followup_id for r in records], "every request ended", timeout=90)
        # An unknown send is settled by its receipt when one comes: the platform had them all.
        stories = await rig.wait_for_stories(list(stories), "the unknown ones settled",
                                             done=lambda story: "sent" in steps(story))
    never_twice_and_never_over_the_rate(rig.fake)
    counts = {name: sum(ending(story) == name for story in stories.values()) for name in ENDINGS}
    republished = sum(len(steps(story)) != len(set(steps(story))) for story in stories.values())
    print(f"\nkilled with ~{in_flight} accepted but not yet recorded: endings {counts} (each unknown settled "
          f"sent by its receipt; {republished} outcome(s) published again after the crash), "
          f"fake accepted {sum(rig.fake.accepted.values())} of {len(records)}")
    assert counts["sent"] + counts["unknown"] == len(records)
    assert len(rig.fake.accepted) == len(records)  # each taken once by the platform


async def test_each_send_call_is_kept_by_kafka_and_found_by_the_next_sender(stack, topic_prefix):
    """What ``followups.attempts`` must give back when Redis forgot a ``sending`` mark: every
    call written before it went out, found by a sender that did not write it (a restart),
    on its user's partition, as the delivery records' own partitioner places that user."""
    topic = topic_name(FOLLOWUPS_ATTEMPTS, topic_prefix)
    producer = new_producer(stack.bootstrap)
    await producer.start()
    try:
        async def shared() -> AIOKafkaProducer:
            return producer

        def log() -> AttemptLog:
            return AttemptLog(stack.bootstrap, topic, PLAINTEXT, shared, new_metrics())
        sent, other = (FollowupRequest(fid, "16505550001", "maestro", "whatsapp", 0, 0, 5) for fid in ("f-sent", "f-other"))
        writer = log()
        await writer.record(sent, 1)
        await writer.record(sent, 2)
        reader = log()
        assert await reader.calls_made(sent) == 2
        assert await reader.calls_made(other) == 0
        exposed = text_string_to_metric_families(render(reader.metrics)[0].decode())
        lookups = {s.labels["result"]: s.value for f in exposed if f.name == "relance_send_attempt_lookups"
                   for s in f.samples if s.name.endswith("_total")}
        assert lookups == {"found": 1.0, "none": 1.0}
        partition = DefaultPartitioner()(b"16505550001", [0, 1, 2, 3], [0, 1, 2, 3])
        kept = [orjson.loads(r.value) async for batch in read_partition(stack.bootstrap, topic, partition, PLAINTEXT)
                for r in batch]
        assert [(k["followup_id"], k["attempt"], k["user_id"]) for k in kept] == [("f-sent", 1, "16505550001"),
                                                                                  ("f-sent", 2, "16505550001")]
    finally:
        await producer.stop()
