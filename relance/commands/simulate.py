"""``relance simulate``: realistic chat traffic, for a demo, a load test or a replay file.

Users talk to the bots of the registry in sessions (bursts of messages, each answered by
the bot), come back later, sometimes from another app; platforms sometimes re-send a
webhook; a few users write a stop word or show signs of distress; profiles (time zone,
age) and opt-outs are mixed in.

Two clocks:
  --clock event  weeks of traffic (--days) at once, timestamps in the past, with ticks.
                 To Kafka with the feeder's semantics (the same follow-ups as `relance
                 replay` of the same records), or with --out as JSON lines for replay.
  --clock wall   N messages a second (--rate), stamped now, for --duration seconds or
                 until Ctrl-C. Simulated users answer some delivered follow-ups (it reads
                 the delivery.<app> topics), as people do.

Two formats on Kafka:
  canonical  message events on `messages`, control events on `control`;
  webhooks   each platform's native webhook JSON on raw.whatsapp, raw.facebook and
             raw.instagram (receiving ids from the bot registry), control events on
             `control`. WhatsApp posts no webhook for a bot's own reply, only its delivery
             status, so on WhatsApp only the user's messages move a pair's silence.
             With --gateway URL, the webhooks are posted to a `relance gateway` instead,
             as the platforms post them: signed with the app secret (RELANCE_APP_SECRET,
             the first one during a rotation), one after the other, again after a 503.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from typing import IO

import orjson
from aiokafka.errors import KafkaError

from relance.cliflags import add_setting_flags, load_settings
from foundation.clock import wall_ms
from foundation.settings import Settings
from domain.signature import SIGNATURE_HEADER, sign
from devstack.traffic import LiveShape, LiveTraffic, TrafficShape, bot_accounts, generate, webhook_of
from schemas.registry import BotRegistry, RegistryError
from streams.kafkaclient import KafkaSecurity, start
from streams.topics import CONTROL, DELIVERY_BY_APP, MESSAGES, RAW_BY_APP, topic_name

PROGRESS_EVERY_SECONDS = 10.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="send realistic chat traffic to Kafka (or write it as JSON lines for replay)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  relance simulate --days 14 --users 200 --out - | relance replay -\n"
        "  relance simulate --clock wall --rate 20 --format webhooks --duration 60",
    )
    parser.add_argument("--clock", choices=("event", "wall"), default="event",
                        help="event: weeks of traffic at once (default); wall: in real time")
    parser.add_argument("--format", choices=("canonical", "webhooks"), default="canonical",
                        help="canonical events on `messages`, or native webhooks on raw.<app> (default canonical)")
    parser.add_argument("--users", type=int, default=200, help="number of simulated users (default 200)")
    parser.add_argument("--days", type=float, default=14.0, help="event clock: days of traffic (default 14)")
    parser.add_argument("--seed", type=int, default=1, help="random seed: the same seed gives the same traffic (default 1)")
    parser.add_argument("--rate", type=float, default=20.0, help="wall clock: messages per second, on average (default 20)")
    parser.add_argument("--duration", type=float, metavar="SECONDS",
                        help="wall clock: stop after this many seconds (default: until Ctrl-C)")
    parser.add_argument("--answer-share", type=float, default=LiveShape.answer_share,
                        help=f"wall clock: share of delivered follow-ups a user answers (default {LiveShape.answer_share})")
    parser.add_argument("--out", metavar="PATH",
                        help="write canonical records as JSON lines to PATH (- for standard output) "
                        "instead of sending them to Kafka; the input of `relance replay`")
    parser.add_argument("--gateway", metavar="URL",
                        help="post the webhooks, signed, to the relance gateway at URL (http://host:port) "
                        "instead of writing them to raw.<app>; needs --format webhooks")
    add_setting_flags(parser, "broker", "topic_prefix", "registry")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if args.out and args.format == "webhooks":
        print("relance simulate: --out writes canonical records (replay's input); drop --format webhooks",
              file=sys.stderr)
        return 2
    if args.gateway and args.format != "webhooks":
        print("relance simulate: --gateway posts native webhooks; add --format webhooks", file=sys.stderr)
        return 2
    if args.gateway and not settings.app_secret:
        print("relance simulate: --gateway signs webhooks with the app secret: set RELANCE_APP_SECRET",
              file=sys.stderr)
        return 2
    if args.users < 1 or args.rate <= 0:
        print("relance simulate: --users and --rate must be positive", file=sys.stderr)
        return 2
    try:
        registry = BotRegistry.load(settings.registry)
    except RegistryError as exc:
        print(f"relance simulate: {exc}", file=sys.stderr)
        return 2
    bots = tuple(bot.id for bot in registry)
    try:
        if args.clock == "event":
            return asyncio.run(simulate_event(args, settings, registry, bots))
        return asyncio.run(simulate_wall(args, settings, registry, bots))
    except (OSError, KafkaError, GatewayRefused) as exc:  # the broker or the gateway cannot take it
        print(f"relance simulate: {exc}", file=sys.stderr)
        return 1


# -- where records go ------------------------------------------------------------------------

class LineSink:
    """Canonical records as JSON lines on a file or standard output."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.sent = out, 0

    async def send(self, record: dict) -> None:
        self.out.write(orjson.dumps(record) + b"\n")
        self.sent += 1

    async def stop(self) -> None:
        self.out.flush()


class GatewayRefused(RuntimeError):
    """The gateway refused a webhook for good, or stayed unavailable through every retry."""


class GatewayPoster:
    """Webhooks posted to a ``relance gateway`` as the platforms post them: signed, one at a
    time (so in order), and sent again with a growing pause after a 503 or no answer."""

    ATTEMPTS = 6

    def __init__(self, base_url: str, secret: str) -> None:
        self.base_url, self.secret = base_url.rstrip("/"), secret
        self._session = None

    async def start(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def post(self, app: str, body: bytes) -> None:
        import aiohttp

        headers = {SIGNATURE_HEADER: sign(body, self.secret), "Content-Type": "application/json"}
        pause, problem = 0.25, ""
        for _ in range(self.ATTEMPTS):
            try:
                async with self._session.post(f"{self.base_url}/webhooks/{app}", data=body, headers=headers) as response:
                    if response.status == 200:
                        return
                    if response.status != 503:
                        raise GatewayRefused(f"the gateway answered {response.status} to a {app} webhook"
                                             + (" (is RELANCE_APP_SECRET the gateway's?)" if response.status == 401 else ""))
                    problem = "503"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                problem = repr(exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)
        raise GatewayRefused(f"the gateway at {self.base_url} did not take a {app} webhook "
                             f"after {self.ATTEMPTS} attempts ({problem})")

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()


class KafkaSink:
    """Records to the topics a platform and an operator would write them to; webhooks
    through a gateway when ``gateway_url`` is given."""

    def __init__(self, settings: Settings, registry: BotRegistry, webhooks: bool,
                 gateway_url: str | None = None) -> None:
        self.settings, self.webhooks = settings, webhooks
        self.accounts = bot_accounts(registry)
        self.sent = self.skipped = 0
        self._producer = None
        self._poster = GatewayPoster(gateway_url, settings.app_secret[0]) if gateway_url else None

    async def start(self) -> "KafkaSink":
        from aiokafka import AIOKafkaProducer

        # Control events go to Kafka whatever the webhooks' way: the gateway takes only webhooks.
        security = KafkaSecurity.of(self.settings)
        self._producer = AIOKafkaProducer(bootstrap_servers=self.settings.broker, linger_ms=5,
                                          request_timeout_ms=10_000, **security.options())
        try:
            await start(self._producer, self.settings.broker, security)
        except BaseException:
            await self._producer.stop()  # a producer that failed to start still holds a client
            raise
        if self._poster is not None:
            await self._poster.start()
        return self

    def _topic(self, spec) -> str:
        return topic_name(spec, self.settings.topic_prefix)

    async def send(self, record: dict) -> None:
        key = record["user_id"].encode() if record.get("user_id") else None
        if "type" in record:
            await self._producer.send(self._topic(CONTROL), orjson.dumps(record), key=key)
        elif not self.webhooks:
            await self._producer.send(self._topic(MESSAGES), orjson.dumps(record), key=key)
        else:
            posted = webhook_of(record, self.accounts)
            if posted is None:  # the bot has no account on that app in the registry
                self.skipped += 1
                return
            app, document = posted
            if self._poster is not None:
                await self._poster.post(app, orjson.dumps(document))
            else:
                await self._producer.send(self._topic(RAW_BY_APP[app]), orjson.dumps(document))
        self.sent += 1

    async def stop(self) -> None:
        if self._poster is not None:
            await self._poster.stop()
        if self._producer is not None:
            await self._producer.stop()


# -- event clock --------------------------------------------------------------------------------

async def simulate_event(args: argparse.Namespace, settings: Settings, registry: BotRegistry, bots: tuple[str, ...]) -> int:
    records = generate(TrafficShape(users=args.users, days=args.days, bots=bots), seed=args.seed)
    if args.out:
        return await _write_lines(records, args.out)
    if args.format == "canonical":
        from devstack.feeder import feed  # keeps the replay's order and clock per partition

        summary = await feed((orjson.dumps(record) for record in records), settings.broker, settings.topic_prefix,
                             KafkaSecurity.of(settings))
        print(f"sent {summary.sent} records ({args.days:g} days, {args.users} users) to "
              f"{topic_name(MESSAGES, settings.topic_prefix)}", file=sys.stderr)
        return 0
    sink = await KafkaSink(settings, registry, webhooks=True, gateway_url=args.gateway).start()
    try:
        for record in records:
            await sink.send(record)
    finally:
        await sink.stop()
    print(f"sent {sink.sent} webhooks and control events ({args.days:g} days, {args.users} users); "
          f"{sink.skipped} messages skipped (bot not on that app)", file=sys.stderr)
    return 0


async def _write_lines(records: list[dict], path: str) -> int:
    out = sys.stdout.buffer if path == "-" else open(path, "wb")
    sink = LineSink(out)
    try:
        for record in records:
            await sink.send(record)
    except BrokenPipeError:  # the reader (head, say) stopped early: not an error here
        return 0
    finally:
        await sink.stop()
        if out is not sys.stdout.buffer:
            out.close()
    return 0


# -- wall clock --------------------------------------------------------------------------------

async def simulate_wall(args: argparse.Namespace, settings: Settings, registry: BotRegistry, bots: tuple[str, ...]) -> int:
    shape = LiveShape(users=args.users, bots=bots, rate=args.rate, answer_share=args.answer_share)
    traffic = LiveTraffic(shape, args.seed, wall_ms())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    out = None
    if args.out:
        out = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")
        sink = LineSink(out)
    else:
        sink = await KafkaSink(settings, registry, webhooks=args.format == "webhooks", gateway_url=args.gateway).start()
    answers = None if args.out else asyncio.create_task(answer_followups(settings, traffic, stop))
    try:
        await _pace(traffic, sink, stop, args.duration)
    finally:
        if answers is not None:
            answers.cancel()
            await asyncio.gather(answers, return_exceptions=True)
        await sink.stop()
        if out is not None and out is not sys.stdout.buffer:
            out.close()
    return 0


async def _pace(traffic: LiveTraffic, sink, stop: asyncio.Event, duration: float | None) -> None:
    """Hand each record to the sink when it is due, until the duration is over or a signal."""
    began = time.monotonic()
    report_at = began + PROGRESS_EVERY_SECONDS
    while not stop.is_set():
        now = time.monotonic()
        if duration is not None and now - began >= duration:
            return
        for record in traffic.due(wall_ms()):
            await sink.send(record)
        if now >= report_at:
            report_at += PROGRESS_EVERY_SECONDS
            print(f"simulate: {sink.sent} records sent in {now - began:.0f}s "
                  f"({sink.sent / (now - began):.1f}/s), {traffic.answers} follow-ups answered",
                  file=sys.stderr, flush=True)
        pause = min(max((traffic.next_due_ms() - wall_ms()) / 1000, 0.0), 0.25)
        try:
            await asyncio.wait_for(stop.wait(), pause)
        except asyncio.TimeoutError:
            pass


async def answer_followups(settings: Settings, traffic: LiveTraffic, stop: asyncio.Event) -> None:
    """Read the follow-ups delivered from now on; the simulated users answer some of them."""
    from aiokafka import AIOKafkaConsumer

    topics = [topic_name(spec, settings.topic_prefix) for spec in DELIVERY_BY_APP.values()]
    security = KafkaSecurity.of(settings)
    partitions = await topic_partitions(settings.broker, topics, security)
    if not partitions:
        return  # no delivery topics: nothing to answer
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker, enable_auto_commit=False, **security.options())
    try:
        await consumer.start()
        consumer.assign(partitions)
        await consumer.seek_to_end()
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                for message in messages:
                    _maybe_answer(traffic, message.value)
    finally:
        await consumer.stop()


async def topic_partitions(bootstrap: str, topics: list[str], security: KafkaSecurity) -> list:
    """Every partition of the topics that exist, asked of the broker (a new consumer's
    metadata may not know them yet)."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000, **security.options())
    await start(admin, bootstrap, security)
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return [TopicPartition(topic["topic"], partition["partition"])
            for topic in described if topic["error_code"] == 0 for partition in topic["partitions"]]


def _maybe_answer(traffic: LiveTraffic, value: bytes) -> None:
    try:
        followup = orjson.loads(value)
        traffic.answer(followup["user_id"], followup["bot_id"], followup["app"], wall_ms())
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return  # not a follow-up this simulation can read: ignore it

