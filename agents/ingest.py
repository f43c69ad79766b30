"""The ingest agents: native webhooks and control events into the one ordered stream.

- ``raw.<app>`` webhooks become canonical events on ``messages``, keyed by ``user_id``,
  in a batch stage of a ``KafkaLoop`` (the hot path: see ``streams/kafkaloop.py``).
- ``control`` events join the same stream, so each partition's engine sees messages and
  controls in one order: per-user events go to their user's partition, global ones
  (kill switches, ticks) to every partition. Kill switches are also mirrored in Redis,
  where the generator checks them before anything leaves.
"""
from __future__ import annotations

import collections
from typing import Awaitable, Callable

import orjson
from aiokafka import ConsumerRecord, TopicPartition

from domain.normalize import normalize_webhook
from schemas.records import InvalidRecord, Kill, Tick, control_to_dict, loads, parse_control
from schemas.registry import RegistryFile
from streams.wiring import Wiring
from streams.kafkaloop import KafkaLoop
from streams.outbox import Outbox
from streams.topics import CONTROL, DEADLETTER, MESSAGES, RAW_BY_APP, topic_name
from streams.rediskeys import KILLS_KEY


class WebhookIngest:
    """Native webhooks of the three apps to canonical events: a batch stage, no state."""

    def __init__(self, wiring: Wiring, registry: RegistryFile) -> None:
        self.wiring, self.registry, self.metrics = wiring, registry, wiring.metrics
        prefix = wiring.settings.topic_prefix
        self.app_of_topic = {topic_name(spec, prefix): app for app, spec in RAW_BY_APP.items()}
        self._messages = topic_name(MESSAGES, prefix)
        self._deadletter = topic_name(DEADLETTER, prefix)
        self.outbox: Outbox | None = None
        self.loop: KafkaLoop | None = None

    async def on_assigned(self, partitions: list[int]) -> None:
        """Stateless: nothing to restore when partitions come, nothing to drop when they go."""

    on_revoked = on_assigned

    async def idle(self) -> None:
        """Nothing here depends on the time between batches."""

    async def process(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        registry = self.registry.current()
        webhooks, receipts = collections.Counter(), collections.Counter()
        for tp, records in batch.items():
            app = self.app_of_topic[tp.topic]
            webhooks[app] += len(records)
            for record in records:
                try:
                    result = normalize_webhook(app, record.value or b"", registry)
                except InvalidRecord as exc:
                    self.wiring.batch_dead_letter(self.outbox, "ingest", record, exc)
                    continue
                receipts[app] += result.dropped
                for event in result.events:
                    self.outbox.add(self._messages, event.to_json(), key=event.user_id.encode())
                for error in result.errors:
                    self.wiring.batch_dead_letter(self.outbox, "ingest", record, error)
        for app, count in webhooks.items():
            self.metrics.webhooks_in.labels(app=app).inc(count)
        for app, count in receipts.items():
            self.metrics.receipts_dropped.labels(app=app).inc(count)
        await self.outbox.send()

    def checkpoint(self) -> Callable[[], Awaitable[None]]:
        """Every event of the batches so far acknowledged: the outbox holds them in order."""
        return self.outbox.flush


def install(wiring: Wiring) -> None:
    app, settings = wiring.app, wiring.settings
    messages = wiring.topic(MESSAGES)
    ingest = WebhookIngest(wiring, RegistryFile(settings.registry))

    async def prepare() -> None:
        ingest.outbox = Outbox(await wiring.producer())
        await ingest.outbox.know(ingest._messages, ingest._deadletter)

    wiring.install_batch_stage("ingest", list(ingest.app_of_topic), ingest, prepare)

    @app.agent(wiring.topic(CONTROL), name="control")
    async def control(stream):
        async for event in stream.events():
            try:
                record = parse_control(loads(event.value))
            except InvalidRecord as exc:
                await wiring.dead_letter("ingest", exc.kind, str(exc), event)
                continue
            body = orjson.dumps(control_to_dict(record))
            if isinstance(record, Kill):
                await _mirror_kill(wiring, record)
            if isinstance(record, (Kill, Tick)):
                for partition in range(wiring.settings.partitions):
                    await messages.send(value=body, partition=partition)
            else:
                await messages.send(key=record.user_id.encode(), value=body)


async def _mirror_kill(wiring: Wiring, kill: Kill) -> None:
    field = "all" if kill.scope == "all" else f"{kill.scope}:{kill.id}"
    if kill.on:
        await wiring.redis.hset(KILLS_KEY, field, "1")
    else:
        await wiring.redis.hdel(KILLS_KEY, field)
