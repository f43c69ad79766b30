"""What every stage of a worker shares: the Faust app, topics, metrics, health, Redis,
the batch stages' producer, and dead letters.

The composition root (``relance/app.py``) makes one ``Wiring`` and hands it to each role's
``install``; a stage registers on it what it serves. Every role shares it, so a topic, a
dead letter or a metric means the same thing in every process.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
import redis.asyncio as aioredis

from foundation.metrics import CONTENT_TYPE, Metrics, label, new_metrics, render
from foundation.settings import Settings
from schemas.records import DeadLetter
from streams.kafkaloop import new_producer
from streams.topics import CATALOG, DEADLETTER, TopicSpec, topic_name

log = logging.getLogger("relance")



@dataclass
class Wiring:
    """What every agent of a worker shares."""

    settings: Settings
    app: faust.App
    metrics: Metrics
    topics: dict[str, faust.TopicT] = field(default_factory=dict)
    _redis: aioredis.Redis | None = None
    _producer: Any = None
    ready: bool = False

    def topic(self, spec: TopicSpec) -> faust.TopicT:
        return self.topics[spec.name]

    @property
    def redis(self) -> aioredis.Redis:
        # Created on first use, inside the worker's event loop.
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(self.settings.redis_url)
        return self._redis

    async def producer(self) -> Any:
        """The aiokafka producer the batch stages share, started on first use."""
        if self._producer is None:
            self._producer = new_producer(self.settings.broker)
            await self._producer.start()
        return self._producer

    def observe_lag(self, loop: Any) -> None:
        """Consumer lag of a KafkaLoop, per topic and partition, into the metrics."""
        for tp, lag in loop.lag().items():
            self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)

    async def dead_letter(self, stage: str, reason_label: str, reason: str, event: Any) -> None:
        """Keep an unusable record whole, with where it came from and why."""
        message = event.message
        original = message.value if isinstance(message.value, bytes) else orjson.dumps(message.value)
        letter = DeadLetter(
            reason=reason, source_topic=message.topic, partition=message.partition,
            offset=message.offset, original=original, stage=stage,
        )
        self.metrics.dead_letters.labels(stage=stage, reason=label(reason_label)).inc()
        log.warning("dead letter", extra={"stage": stage, "reason": reason, "topic": message.topic,
                                          "partition": message.partition, "offset": message.offset})
        await self.topic(DEADLETTER).send(value=letter.to_json())


_REASON_LABELS = (
    ("not json", "not_json"), ("missing field", "missing_field"), ("must be a json object", "not_object"),
    ("ahead of the clock", "future_ts"), ("no bot in the registry", "unknown_bot"),
)


def dead_letter_label(reason: str) -> str:
    """The bounded metric label of a readable dead-letter reason (foundation/metrics.py)."""
    text = reason.lower()
    return next((name for needle, name in _REASON_LABELS if needle in text), "invalid_field")


def dead_letter_for(stage: str, reason: str, record: Any) -> bytes:
    """The dead letter of a record a batch stage could not use (an aiokafka record)."""
    return DeadLetter(reason=reason, source_topic=record.topic, partition=record.partition,
                      offset=record.offset, original=record.value or b"", stage=stage).to_json()


def faust_app(settings: Settings) -> faust.App:
    return faust.App(
        settings.topic_prefix + settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.broker.split(",")],
        datadir=settings.data_dir,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        key_serializer="raw",
        value_serializer="raw",  # records are orjson bytes; tables inherit this
        web_port=settings.web_port,
        web_bind="0.0.0.0",
        consumer_auto_offset_reset="earliest",
        # A crashed worker's partitions move after 10 s instead of Kafka's 45 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        producer_linger_ms=5,
        stream_wait_empty=False,
        table_standby_replicas=0,
        loghandlers=[],
    )


def new_wiring(settings: Settings) -> Wiring:
    """A worker's Faust app with every topic of the catalog, and its metrics and health pages."""
    app = faust_app(settings)
    wiring = Wiring(settings=settings, app=app, metrics=new_metrics())
    for spec in CATALOG:
        wiring.topics[spec.name] = app.topic(
            topic_name(spec, settings.topic_prefix), key_type=bytes, value_type=bytes,
            key_serializer="raw", value_serializer="raw",
        )
    _install_web(wiring)
    return wiring


def _install_web(wiring: Wiring) -> None:
    """Metrics and health pages, and the commit sensor, every worker serves."""
    app = wiring.app

    @app.page("/metrics")
    async def metrics_page(web, request):
        body, _ = render(wiring.metrics)
        # A header, not content_type=: aiohttp refuses a charset inside content_type.
        return web.bytes(body, headers={"Content-Type": CONTENT_TYPE})

    @app.page("/health/live")
    async def live(web, request):
        return web.json({"live": True})

    @app.page("/health/ready")
    async def ready(web, request):
        ok = wiring.ready and not app.rebalancing
        return web.json({"ready": ok}, status=200 if ok else 503)

    @app.page("/health")
    async def health(web, request):
        return web.json({"live": True, "ready": wiring.ready and not app.rebalancing})

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs):
        wiring.ready = True

    class CommitSensor(faust.Sensor):
        def on_commit_completed(self, consumer, state):
            wiring.metrics.last_commit.set(time.time())

    app.sensors.add(CommitSensor())

    @app.timer(interval=5.0)
    async def consumer_lag():
        consumer = app.consumer
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            position = consumer._committed_offset.get(tp)  # faust keeps no public accessor
            if highwater is not None and position is not None:
                wiring.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, highwater - position))
