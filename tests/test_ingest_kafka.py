"""Native webhooks through a real broker: every one ends on ``messages`` or ``deadletter``."""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from domain.normalize import normalize_webhook
from schemas.records import parse_message
from schemas.registry import BotRegistry
from streams.topics import CONTROL, DEADLETTER, MESSAGES, RAW_BY_APP, topic_name
from tests.kafkaread import TopicReader
from devstack.processes import WorkerProcess

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "webhooks"
REGISTRY = REPO / "deploy" / "bots.toml"
BROKEN = [
    ("whatsapp", b"{not json"),
    ("facebook", b'{"object": "page", "entry": "not a list"}'),
    ("instagram", b"\xff\xfe binary"),
    ("whatsapp", b'{"object": "page", "entry": []}'),   # a Messenger body on the WhatsApp topic
]
BROKEN_CONTROL = [b'{"type": "kill", "scope": "planet"}', b'{"type": "profile", "user_id": "u1", "tz": "Mars/Olympus"}']


def fixture_documents() -> list[tuple[str, bytes]]:
    return [(path.name.split("_")[0], path.read_bytes()) for path in sorted(FIXTURES.glob("*.json"))]


async def test_valid_duplicate_and_broken_webhooks_are_all_accounted_for(stack, topic_prefix, redis_db, tmp_path):
    registry = BotRegistry.load(REGISTRY)
    documents = fixture_documents()
    resent = documents[:3]  # the platforms re-send webhooks: forwarded again, dropped by the engine
    expected_events, expected_letters = 0, len(BROKEN) + len(BROKEN_CONTROL)
    for app, body in documents + resent:
        result = normalize_webhook(app, body, registry)
        expected_events += len(result.events)
        expected_letters += len(result.errors)
    assert expected_events > 15 and expected_letters > len(BROKEN) + len(BROKEN_CONTROL)

    worker = WorkerProcess(tmp_path, ["ingest"], broker=stack.bootstrap, redis_url=redis_db,
                           topic_prefix=topic_prefix, registry=REGISTRY, data_dir=tmp_path / "data").start()
    messages = await TopicReader(stack.bootstrap, topic_name(MESSAGES, topic_prefix), 4).start()
    letters = await TopicReader(stack.bootstrap, topic_name(DEADLETTER, topic_prefix), 1).start()
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    try:
        for app, body in documents + resent + BROKEN:
            await producer.send_and_wait(topic_name(RAW_BY_APP[app], topic_prefix), body)
        for body in BROKEN_CONTROL:
            await producer.send_and_wait(topic_name(CONTROL, topic_prefix), body, key=b"u1")
        await letters.wait_for(lambda got: worker.check_alive() and len(got) >= expected_letters, 60, "every dead letter")
        await messages.wait_for(lambda got: len(got) >= expected_events, 30, "every canonical event")

        events = [parse_message(orjson.loads(m.value)) for m in messages.records]
        assert len(events) == expected_events
        assert all(m.key == event.user_id.encode() for m, event in zip(messages.records, events))
        assert {event.direction for event in events} == {"inbound", "outbound"}

        dead = [orjson.loads(m.value) for m in letters.records]
        assert len(dead) == expected_letters
        originals = {letter.get("original") for letter in dead}
        assert "{not json" in originals and any("original_b64" in letter for letter in dead)
        assert all(letter["reason"] and letter["source_topic"].startswith(topic_prefix) and letter["offset"] is not None for letter in dead)
        assert any("no bot in the registry" in letter["reason"] for letter in dead)
        assert any("Mars/Olympus" in letter["reason"] for letter in dead)
    finally:
        await producer.stop()
        await messages.stop()
        await letters.stop()
        worker.stop()
