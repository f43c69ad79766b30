"""What every stage of a worker shares: the Faust app, topics, metrics, health, Redis,
the batch stages' producer, and dead letters.

The composition root (``relance/app.py``) makes one ``Wiring`` and hands it to each role's
``install``; a stage registers on it what it serves. Every role shares it, so a topic, a
dead letter or a metric means the same thing in every process.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Awaitable, Callable, Protocol

import faust
import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError
from aiokafka import ConsumerRecord

from foundation.metrics import CONTENT_TYPE, Metrics, label, new_metrics, render
from foundation.settings import Settings
from schemas.records import DeadLetter, InvalidRecord
from streams.kafkaclient import KafkaSecurity
from streams.kafkaloop import KafkaLoop, Stage, new_producer
from streams.outage import PROBE_INTERVAL_S, Reachability, kafka_error, redis_prober
from streams.outbox import Outbox
from streams.redisclient import redis_options
from streams.topics import CATALOG, DEADLETTER, TopicSpec, topic_name

log = logging.getLogger("relance")
REDIS_RETRIES = 20
# A transaction lives from a checkpoint's first record to its commit (milliseconds); one a
# crash left open holds read_committed readers back until the broker aborts it after this.
TRANSACTION_TIMEOUT_MS = 15_000



class BatchStage(Stage, Protocol):
    loop: KafkaLoop | None  # set when the loop starts


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

    @cached_property
    def kafka_security(self) -> KafkaSecurity:
        return KafkaSecurity.of(self.settings)

    def topic(self, spec: TopicSpec) -> faust.TopicT:
        return self.topics[spec.name]

    @property
    def redis(self) -> aioredis.Redis:
        # Created on first use, inside the worker's event loop.
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(
                self.settings.redis_url,
                # A restarted Redis leaves every pooled connection stale: each command
                # retries on a fresh one for about 15 s before the stage gives up and crashes.
                retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), REDIS_RETRIES),
                retry_on_error=[RedisConnectionError, RedisTimeoutError],
                health_check_interval=30, **redis_options(self.settings),
            )
        return self._redis

    async def producer(self) -> Any:
        """The aiokafka producer the batch stages share, started on first use."""
        if self._producer is None:
            self._producer = new_producer(self.settings.broker, self.kafka_security)
            await self._producer.start()
        return self._producer

    def install_batch_stage(self, name: str, topics: list[str], stage: BatchStage,
                            prepare: Callable[[Any], Awaitable[None]] | None = None, transactional: bool = False,
                            **loop_options) -> None:
        """Run ``stage`` in this worker on a ``KafkaLoop`` of its own consumer group
        (``<prefix><app_id>.<name>``): ``prepare`` first (given the producer its outboxes
        use: the shared one, or with ``transactional`` one of the stage's own, each
        checkpoint a transaction), then the loop. Its commits are timestamped and its lag
        observed every 5 s."""
        settings, metrics = self.settings, self.metrics
        group = f"{settings.topic_prefix}{settings.app_id}.{name}"

        async def start() -> None:
            transactions = None
            if transactional:
                # Its own id per process: two live workers never fence each other.
                transactions = new_producer(settings.broker, self.kafka_security, transactional_id=f"{group}.{uuid.uuid4().hex}",
                                            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS)
                await transactions.start()
            if prepare is not None:
                await prepare(transactions or await self.producer())
            stage.loop = KafkaLoop(bootstrap=settings.broker, topics=topics, group=group, stage=stage,
                                   transactions=transactions, security=self.kafka_security, **loop_options)
            stage.loop.on_commit = metrics.last_commit.set_to_current_time
            stage.loop.on_checkpoint = metrics.checkpoint_seconds.labels(stage=name).observe
            await self.app.add_runtime_dependency(stage.loop)
            self.ready = True

        async def observe_lag() -> None:
            if stage.loop is None:
                return
            for tp, lag in stage.loop.lag().items():
                metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)

        self.app.task(start)
        self.app.timer(interval=5.0, name=f"{name}_lag")(observe_lag)

    async def dead_letter(self, stage: str, kind: str, reason: str, event: Any) -> None:
        """A Faust agent's unusable record, kept whole with where it came from and why."""
        await self.record_dead_letter(stage, kind, reason, event.message)

    async def record_dead_letter(self, stage: str, kind: str, reason: str, record: Any) -> None:
        """An unusable record (a Faust message or a ``ConsumerRecord``), published now and acknowledged."""
        original = record.value if isinstance(record.value, bytes) else orjson.dumps(record.value)
        letter = self._dead_letter(stage, kind, reason, record.topic, record.partition, record.offset, original)
        await (await self.topic(DEADLETTER).send(value=letter, force=True))

    def batch_dead_letter(self, outbox: Outbox, stage: str, record: ConsumerRecord, error: InvalidRecord) -> None:
        """A batch stage's unusable record, into its outbox: acknowledged before the next commit."""
        letter = self._dead_letter(stage, error.kind, str(error), record.topic, record.partition,
                                   record.offset, record.value or b"")
        outbox.add(topic_name(DEADLETTER, self.settings.topic_prefix), letter)  # unkeyed, as cataloged

    def _dead_letter(self, stage: str, kind: str, reason: str, topic: str, partition: int, offset: int,
                     original: bytes) -> bytes:
        self.metrics.dead_letters.labels(stage=stage, reason=label(kind)).inc()
        log.warning("dead letter: %s", reason, extra={"stage": stage, "topic": topic, "partition": partition,
                                                      "offset": offset})
        return DeadLetter(reason=reason, source_topic=topic, partition=partition, offset=offset,
                          original=original, stage=stage).to_json()


def faust_app(settings: Settings) -> faust.App:
    return faust.App(
        settings.topic_prefix + settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.broker.split(",")],
        broker_credentials=KafkaSecurity.of(settings).faust_credentials(),
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
    _install_outage_watch(wiring)
    return wiring


def _install_outage_watch(wiring: Wiring) -> None:
    """The broker and Redis probed every second: an outage logged when it starts, while it
    lasts (bounded) and when it ends (``streams/outage.py``)."""
    kafka, redis = Reachability("kafka"), Reachability("redis")
    probes: list = []  # the Redis probe's client is made inside the worker's event loop

    @wiring.app.timer(interval=PROBE_INTERVAL_S)
    async def watch_dependencies():
        if not probes:
            probes.append(redis_prober(wiring.settings.redis_url))
        kafka.observe(await kafka_error(wiring.settings.broker))
        redis.observe(await probes[0]())


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
