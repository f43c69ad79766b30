"""Kafka down behind the gateway (spec section 9): posts get 503 within the acknowledgement
timeout and nothing half-written reaches the topic; once Kafka is back, the platform's
retries all land, each body once, or again as a re-send the engine recognises by its
(app, event_id) (spec section 4).

This test stops and restarts a broker of its own: the session's broker serves other tests.
"""
from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from devstack.localstack import KafkaBroker, free_port
from devstack.traffic import TrafficShape, bot_accounts, generate, webhook_of
from domain.normalize import normalize_webhook
from schemas.registry import BotRegistry
from streams.admin import acreate_topics
from streams.topics import RAW_BY_APP
from gatewaykit import gateway_settings, post, read_raw, running_gateway, signed

pytestmark = pytest.mark.kafka

REGISTRY = BotRegistry.load(Path(__file__).resolve().parent.parent / "deploy" / "bots.toml")
ACK_TIMEOUT = 2.0


def whatsapp_webhooks(count: int) -> list[bytes]:
    """Distinct WhatsApp message webhooks, as the platform posts them."""
    accounts = bot_accounts(REGISTRY)
    bodies = []
    for record in generate(TrafficShape(users=20, days=2, controls=False), seed=7):
        if "type" not in record and record["app"] == "whatsapp" and record["direction"] == "inbound":
            posted = webhook_of(record, accounts)
            if posted is not None:
                bodies.append(orjson.dumps(posted[1]))
        if len(bodies) == count:
            return bodies
    raise AssertionError("not enough WhatsApp messages in the traffic")


def message_keys(body: bytes) -> list[tuple[str, str]]:
    """The (app, event_id) of each message in a body: what the engine deduplicates on."""
    return [(event.app, event.event_id) for event in normalize_webhook("whatsapp", body, REGISTRY).events]


async def post_until_accepted(session, settings, body: bytes, timeout: float) -> int:
    """Post like the platform does: again after each 503, until 200 (or the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        status = await post(session, settings, "/webhooks/whatsapp", body, signed(body))
        if status != 503 or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.2)


async def test_posts_while_kafka_is_down_get_503_and_their_retries_all_land(tmp_path):
    broker = KafkaBroker(tmp_path / "broker", port=free_port(), controller_port=free_port())
    first, *during, last = whatsapp_webhooks(5)
    try:
        broker.start(timeout=90)
        await acreate_topics(broker.bootstrap, RAW_BY_APP.values(), "", 1)
        settings = gateway_settings(broker.bootstrap, "", gateway_ack_timeout=f"{ACK_TIMEOUT}s")
        async with running_gateway(settings) as gateway, aiohttp.ClientSession() as session:
            assert await post(session, settings, "/webhooks/whatsapp", first, signed(first)) == 200

            broker.stop()
            for body in during:
                began = time.monotonic()
                assert await post(session, settings, "/webhooks/whatsapp", body, signed(body)) == 503
                assert time.monotonic() - began < ACK_TIMEOUT + 2.0   # answered within the timeout
            assert not await gateway.raw.ready()

            broker.start(timeout=90)   # the same port and data folder: the same broker, back
            for body in during:
                assert await post_until_accepted(session, settings, body, timeout=60) == 200
            assert await post(session, settings, "/webhooks/whatsapp", last, signed(last)) == 200
        on_topic = await read_raw(broker.bootstrap, "", "whatsapp", until=last)
    finally:
        broker.stop()

    copies = collections.Counter(on_topic)
    assert set(copies) == {first, *during, last}     # every body is there, whole, and nothing else
    assert copies[first] == copies[last] == 1        # accepted at once: exactly once
    resent = {body: count for body, count in copies.items() if count > 1}
    assert set(resent) <= set(during)                # only a post answered 503 may be there twice
    for body in resent:                              # and then as a re-send: the same messages
        assert message_keys(body) and len(set(message_keys(body))) == len(message_keys(body))
    print(f"{len(during)} posts answered 503; {sum(resent.values()) - len(resent)} extra copies on the topic")
