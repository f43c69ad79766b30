"""The ingest agents: native webhooks and control events into the one ordered stream.

- ``raw.<app>`` webhooks become canonical events on ``messages``, keyed by ``user_id``.
- ``control`` events join the same stream, so each partition's engine sees messages and
  controls in one order: per-user events go to their user's partition, global ones
  (kill switches, ticks) to every partition. Kill switches are also mirrored in Redis,
  where the generator checks them before anything leaves.
"""
from __future__ import annotations

import orjson

from agents.normalize import normalize_webhook
from schemas.records import InvalidRecord, Kill, Tick, control_to_dict, loads, parse_control
from schemas.registry import RegistryFile
from streams.app import Wiring
from streams.topics import CONTROL, MESSAGES, RAW_BY_APP
from streams.userdata import KILLS_KEY


def _unknown_bot(reason: str) -> bool:
    return "no bot in the registry" in reason


def install(wiring: Wiring) -> None:
    app, metrics = wiring.app, wiring.metrics
    registry = RegistryFile(wiring.settings.registry)
    messages = wiring.topic(MESSAGES)

    def make_webhook_agent(app_name: str):
        async def ingest(stream):
            async for event in stream.events():
                metrics.webhooks_in.labels(app=app_name).inc()
                try:
                    result = normalize_webhook(app_name, event.value, registry.current())
                except InvalidRecord as exc:
                    reason = str(exc)
                    await wiring.dead_letter("ingest", "not_json" if reason.startswith("not JSON") else "invalid_field", reason, event)
                    continue
                if result.dropped:
                    metrics.receipts_dropped.labels(app=app_name).inc(result.dropped)
                for canonical in result.events:
                    await messages.send(key=canonical.user_id.encode(), value=canonical.to_json())
                for reason in result.errors:
                    await wiring.dead_letter("ingest", "unknown_bot" if _unknown_bot(reason) else "invalid_field", reason, event)
        ingest.__name__ = f"ingest_{app_name}"
        return ingest

    for app_name, spec in RAW_BY_APP.items():
        app.agent(wiring.topic(spec), name=f"ingest-{app_name}")(make_webhook_agent(app_name))

    @app.agent(wiring.topic(CONTROL), name="control")
    async def control(stream):
        async for event in stream.events():
            try:
                record = parse_control(loads(event.value))
            except InvalidRecord as exc:
                await wiring.dead_letter("ingest", "invalid_field", str(exc), event)
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
