"""The ingest agents: native webhooks and control events into the one ordered stream.

- ``raw.<app>`` webhooks become canonical events on ``messages``, keyed by ``user_id``,
  in a batch stage of a ``KafkaLoop`` (the hot path: see ``streams/kafkaloop.py``);
  ``normalize_encoded`` gives each webhook's events already as key and JSON (the common
  shapes on its compiled path), so no record object is built between the two.
- Receipts of follow-ups (WhatsApp ``statuses``, Messenger and Instagram ``delivery``,
  ``read`` and echoes, spec section 9) become steps of their stories on
  ``followups.outcomes``, through the ledger (``streams/ledger.py``). Only batches that
  hold such receipts ask Redis anything: two round trips, around their publication.
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

from domain.normalize import normalize_encoded
from schemas.records import FollowupOutcome, InvalidRecord, Kill, Receipt, control_to_dict, loads, parse_control
from schemas.registry import RegistryFile
from streams.wiring import Wiring
from streams.kafkaloop import KafkaLoop
from streams.ledger import Ledger, ledger_ttl_s
from streams.outbox import Outbox
from streams.topics import CONTROL, DEADLETTER, FOLLOWUP_OUTCOMES, MESSAGES, RAW_BY_APP, routes_on_messages, topic_name
from streams.rediskeys import KILLS_KEY


class WebhookIngest:
    """Native webhooks of the three apps to canonical events: a batch stage, no state."""

    def __init__(self, wiring: Wiring, registry: RegistryFile) -> None:
        self.wiring, self.registry, self.metrics = wiring, registry, wiring.metrics
        prefix = wiring.settings.topic_prefix
        self.app_of_topic = {topic_name(spec, prefix): app for app, spec in RAW_BY_APP.items()}
        self._messages = topic_name(MESSAGES, prefix)
        self._deadletter = topic_name(DEADLETTER, prefix)
        self._outcomes = topic_name(FOLLOWUP_OUTCOMES, prefix)
        self.outbox: Outbox | None = None
        self.outcomes_out: Outbox | None = None  # apart: flushed inline, before the ledger records receipts
        self.ledger: Ledger | None = None
        self.loop: KafkaLoop | None = None

    async def on_assigned(self, partitions: list[int]) -> None:
        """Stateless: nothing to restore when partitions come, nothing to drop when they go."""

    on_revoked = on_assigned

    async def idle(self) -> None:
        """Nothing here depends on the time between batches."""

    async def process(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        registry = self.registry.current()
        add, messages = self.outbox.add, self._messages
        webhooks, dropped = collections.Counter(), collections.Counter()
        receipts: list[Receipt] = []
        for tp, records in batch.items():
            app = self.app_of_topic[tp.topic]
            webhooks[app] += len(records)
            dropped_here = 0
            for record in records:
                try:
                    events, dropped_of_one, errors, found = normalize_encoded(app, record.value or b"", registry)
                except InvalidRecord as exc:
                    self.wiring.batch_dead_letter(self.outbox, "ingest", record, exc)
                    continue
                dropped_here += dropped_of_one
                for key, value in events:
                    add(messages, value, key)
                if found:
                    receipts += found
                for error in errors:
                    self.wiring.batch_dead_letter(self.outbox, "ingest", record, error)
            dropped[app] += dropped_here
        for app, count in webhooks.items():
            self.metrics.webhooks_in.labels(app=app).inc(count)
        await self.outbox.send()
        if receipts:
            await self._settle_receipts(receipts, dropped)
        for app, count in dropped.items():
            self.metrics.receipts_dropped.labels(app=app).inc(count)

    async def _settle_receipts(self, receipts: list[Receipt], dropped: collections.Counter) -> None:
        """Each receipt's new steps published, then the receipts recorded in the ledger: a
        crash in between publishes them again rather than never."""
        found = await self.ledger.receipt_outcomes(receipts, apply=False)
        published = set()
        for receipt, steps in zip(receipts, found):
            fresh = [(followup_id, outcome) for followup_id, outcome in steps if (followup_id, outcome) not in published]
            if not fresh:
                dropped[receipt.app] += 1
            for followup_id, outcome in fresh:
                published.add((followup_id, outcome))
                reason = (receipt.error_code or "undelivered") if outcome == "failed" else None
                step = FollowupOutcome(followup_id, receipt.user_id, receipt.bot_id, receipt.app, outcome, reason, 0, receipt.ts)
                self.outcomes_out.add(self._outcomes, step.to_json(), key=receipt.user_id.encode())
                self.metrics.receipts.labels(app=receipt.app, outcome=outcome).inc()
        await self.outcomes_out.flush()
        await self.ledger.receipt_outcomes(receipts, apply=True)

    def checkpoint(self) -> Callable[[], Awaitable[None]]:
        """Every event of the batches so far acknowledged: the outbox holds them in order."""
        return self.outbox.flush


def install(wiring: Wiring) -> None:
    app, settings = wiring.app, wiring.settings
    messages = wiring.topic(MESSAGES)
    ingest = WebhookIngest(wiring, RegistryFile(settings.registry))

    async def prepare(producer) -> None:
        ingest.outbox = Outbox(producer)
        await ingest.outbox.know(ingest._messages, ingest._deadletter)
        ingest.outcomes_out = Outbox(producer)
        await ingest.outcomes_out.know(ingest._outcomes)
        ingest.ledger = Ledger(wiring.redis, ledger_ttl_s(settings))

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
            for key, partition in routes_on_messages(record, wiring.settings.partitions):
                await messages.send(key=key, value=body, partition=partition)


async def _mirror_kill(wiring: Wiring, kill: Kill) -> None:
    field = "all" if kill.scope == "all" else f"{kill.scope}:{kill.id}"
    if kill.on:
        await wiring.redis.hset(KILLS_KEY, field, "1")
    else:
        await wiring.redis.hdel(KILLS_KEY, field)
