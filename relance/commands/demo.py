"""``relance demo``: the whole pipeline on this machine, with live traffic and a live view.

Starts Kafka and Redis (unless they already run on the ports), creates a fresh set of
topics, starts the project's fake Graph API (Meta's send APIs, which accept follow-ups and
post signed receipts back), two workers (ingest + engine + context, and generator +
sender), a gateway (the endpoint Meta posts to) and a simulator posting signed native
webhooks to it over HTTP in real time, the whole path a real deployment takes; then shows
what happens, twice a second: webhooks per second per app, pairs tracked, decisions by
outcome and reason, follow-ups written, sent, delivered and read per app, and the latest
follow-ups written. Ctrl-C stops everything it started, by pid: the simulator, the
workers and the gateway, the fake Graph API, then Kafka and Redis. The app secret is
RELANCE_APP_SECRET if set, else one made up for the run; each bot's token, a made-up one
unless its variable is set.

So that follow-ups happen within a minute, the demo shortens the rule: a pair is due 20
seconds after its last message (--idle-delay), 3 inbound messages are enough, the
messaging window is 10 minutes and quiet hours are off. The offline writer writes the
follow-ups unless RELANCE_LLM_BASE_URL names an OpenAI-compatible API.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from schemas.registry import BotRegistry

from relance.cliflags import add_setting_flags, load_settings
from devstack.processes import ChildProcess
from devstack.localstack import (
    REPO_ROOT, LocalStack, StackError, fetch_kafka, free_port, pid_alive, port_in_use, stop_pid,
)
from streams.admin import create_topics, run_sync
from streams.kafkaclient import KafkaSecurity
from relance.commands.simulate import topic_partitions
from foundation.settings import Settings, parse_duration
from schemas.records import APPS
from streams.topics import CATALOG, DELIVERY_BY_APP, FOLLOWUP_OUTCOMES, topic_name

DEMO_STATE = Path(".relance")
REFRESH_SECONDS = 0.5
READY_TIMEOUT_SECONDS = 120.0
RATE_WINDOW_SECONDS = 5.0
LATEST_SHOWN = 6
ENGINE_ROLES = ("ingest", "engine", "context")
GENERATOR_ROLES = ("generator", "sender")
DEFAULT_WEB_PORT = Settings().web_port


class DemoError(RuntimeError):
    """Something the demo needs did not start; the message says what and where its log is."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline locally with simulated users and watch it live",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, metavar="SECONDS",
                        help="stop by itself after this many seconds of traffic (default: run until Ctrl-C)")
    parser.add_argument("--rate", type=float, default=15.0, help="simulated messages per second (default 15)")
    parser.add_argument("--users", type=int, default=1000, help="simulated users (default 1000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulated traffic (default 1)")
    parser.add_argument("--idle-delay", default="20s",
                        help="quiet time before a follow-up is due, shortened for the demo (default 20s)")
    parser.add_argument("--web-port", type=int, default=DEFAULT_WEB_PORT,
                        help=f"web port of the engine worker; the generator worker gets the next one "
                        f"(default {DEFAULT_WEB_PORT}: `relance explain` asks it by default)")
    parser.add_argument("--gateway-port", type=int, default=Settings().gateway_port,
                        help=f"port of the gateway the simulator posts webhooks to (default {Settings().gateway_port})")
    parser.add_argument("--state-dir", default=str(DEMO_STATE / "stack"),
                        help="where a Kafka and Redis started by the demo keep their files (default .relance/stack)")
    add_setting_flags(parser, "broker", "redis_url", "partitions", "registry")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    parse_duration(args.idle_delay)  # refuse a bad value before starting anything
    demo: Demo | None = None
    previous = signal.signal(signal.SIGTERM, _interrupt)  # stopped by a supervisor: clean up as for Ctrl-C
    try:
        demo = Demo(args, settings)
        return demo.run()
    except KeyboardInterrupt:
        return 0
    except (DemoError, StackError) as exc:
        print(f"relance demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if demo is not None:
            demo.shutdown()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


# -- processes ---------------------------------------------------------------------------------

def start_child(name: str, args: list[str], env: dict[str, str], log_path: Path, web_port: int | None = None,
                module: str = "relance.cli") -> ChildProcess:
    return ChildProcess(name, [sys.executable, "-m", module, *args], env, log_path, web_port=web_port).start()


class Demo:
    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args, self.settings = args, settings
        self.prefix = f"demo-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:4]}-"
        self.run_dir = (DEMO_STATE / "demo" / self.prefix.rstrip("-")).resolve()
        self.stack = LocalStack.of(settings, Path(args.state_dir))
        self.registry = _registry_path(settings.registry)
        self.started_servers: list = []   # the stack's servers this run started (and so stops)
        # The gateway checks, and the simulator signs with, the operator's app secret, or one made up for the run.
        self.app_secret = settings.app_secret[0] if settings.app_secret else secrets.token_hex(16)
        # /explain answers only with a token: the operator's, or one made up for the run (in a file).
        self.explain_token = settings.explain_token or secrets.token_hex(16)
        self.explain_token_file = self.run_dir / "explain-token"
        self.workers: list[ChildProcess] = []
        self.simulator: ChildProcess | None = None
        self.fake_graph: ChildProcess | None = None
        self.topics_created = False
        self.tokens = demo_tokens(BotRegistry.load(self.registry))
        self.graph_url = ""

    def say(self, text: str) -> None:
        print(text, flush=True)

    # -- start -----------------------------------------------------------------------------

    def run(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.start_stack()
        create_topics(self.settings.broker, CATALOG, self.prefix, self.settings.partitions,
                      security=KafkaSecurity.of(self.settings))
        self.topics_created = True
        self.say(f"topics created with prefix {self.prefix!r}; logs in {self.run_dir}")
        self.start_fake_graph()
        self.start_workers()
        self.start_gateway()
        self.start_simulator()
        view = LiveView(self, duration=self.args.duration)
        return asyncio.run(view.run())

    def start_stack(self) -> None:
        missing = [server for server in (self.stack.redis, self.stack.kafka) if not port_in_use(server.port)]
        for server in (self.stack.redis, self.stack.kafka):
            if server not in missing:
                self.say(f"{server.name} already listens on {server.address}: using it (the demo leaves it running)")
        if self.stack.kafka in missing:
            fetch_kafka()  # prints each jar on the first run; instant afterwards
        for server in missing:
            began = time.monotonic()
            self.say(f"starting {server.name} on {server.address} (state in {server.state_dir}) ...")
            self.started_servers.append(server)
            server.start(timeout=90)
            self.say(f"{server.name} up in {time.monotonic() - began:.1f}s, pid {server.pid()}")

    def worker_env(self, web_port: int, app_id: str = "relance") -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "RELANCE_APP_ID": app_id, "RELANCE_REGISTRY": self.registry,
            "RELANCE_BROKER": self.settings.broker, "RELANCE_REDIS_URL": self.settings.redis_url,
            "RELANCE_TOPIC_PREFIX": self.prefix, "RELANCE_PARTITIONS": str(self.settings.partitions),
            "RELANCE_CLOCK": "wall", "RELANCE_WEB_PORT": str(web_port),
            "RELANCE_DATA_DIR": str(self.run_dir / f"data-{web_port}"),
            # The demo's short rule, so that follow-ups happen within a minute.
            "RELANCE_IDLE_DELAY": self.args.idle_delay, "RELANCE_MIN_INBOUND": "3",
            "RELANCE_MESSAGING_WINDOW": "10m", "RELANCE_QUIET_HOURS": "off",
            "RELANCE_GRAPH_BASE_URL": self.graph_url, "RELANCE_EXPLAIN_TOKEN": self.explain_token,
        })
        env.update(self.tokens)
        return env

    def start_fake_graph(self) -> None:
        """Meta's send APIs for the sender; their receipts, signed, go to the demo's gateway."""
        port = free_port()
        args = ["--port", str(port), "--registry", self.registry,
                "--callback-url", f"http://127.0.0.1:{self.args.gateway_port}"]
        env = {**os.environ, **self.tokens, "RELANCE_APP_SECRET": self.app_secret}
        self.fake_graph = start_child("fake Graph API", args, env, self.run_dir / "fake-graph.log", module="devstack.fake_graph")
        began = time.monotonic()
        while not port_in_use(port):
            if not self.fake_graph.alive or time.monotonic() - began > READY_TIMEOUT_SECONDS:
                raise DemoError(f"the fake Graph API did not start; last lines of {self.fake_graph.log_path}:\n"
                                f"{self.fake_graph.log_tail()}")
            time.sleep(0.1)
        self.graph_url = f"http://127.0.0.1:{port}"
        self.say(f"started fake Graph API on {self.graph_url}, pid {self.fake_graph.pid}")

    def start_workers(self) -> None:
        port = self.args.web_port
        for name, roles, web_port in (("engine worker", ENGINE_ROLES, port), ("generator worker", GENERATOR_ROLES, port + 1)):
            if port_in_use(web_port):
                raise DemoError(f"web port {web_port} for the {name} is in use; choose others with --web-port")
            args = ["worker"] + [item for role in roles for item in ("--role", role)]
            # One app id (so consumer groups) per kind of worker: should a role ever hold a
            # Faust table, Faust would give its workers another assignment protocol, and
            # Kafka refuses to mix two in one group (InconsistentGroupProtocolError).
            env = self.worker_env(web_port, app_id="relance-" + "-".join(roles))
            child = start_child(name, args, env, self.run_dir / f"worker-{web_port}.log", web_port)
            self.workers.append(child)
            self.say(f"started {name} ({' + '.join(roles)}), pid {child.pid}, http://127.0.0.1:{web_port}")
        self.explain_token_file.touch(mode=0o600)
        self.explain_token_file.write_text(self.explain_token + "\n")
        self.say(f"ask the engine worker why: RELANCE_EXPLAIN_TOKEN_FILE={self.explain_token_file} "
                 "relance explain USER BOT")
        for child in self.workers:
            self.wait_ready(child)

    def wait_ready(self, child: ChildProcess) -> None:
        began = time.monotonic()
        while not child.ready():
            if not child.alive:
                raise DemoError(f"the {child.name} exited with {child.process.returncode}; "
                                f"last lines of {child.log_path}:\n{child.log_tail()}")
            if time.monotonic() - began > READY_TIMEOUT_SECONDS:
                raise DemoError(f"the {child.name} was not ready after {READY_TIMEOUT_SECONDS:.0f}s; "
                                f"see {child.log_path}")
            time.sleep(0.2)
        self.say(f"{child.name} ready in {time.monotonic() - began:.1f}s")

    def start_gateway(self) -> None:
        """The endpoint Meta posts to; its health and metrics on a free port of its own."""
        port = self.args.gateway_port
        if port_in_use(port):
            raise DemoError(f"gateway port {port} is in use; choose another with --gateway-port")
        web_port = free_port()
        env = {**self.worker_env(web_port), "RELANCE_GATEWAY_PORT": str(port), "RELANCE_APP_SECRET": self.app_secret}
        child = start_child("gateway", ["gateway"], env, self.run_dir / f"gateway-{port}.log", web_port)
        self.workers.append(child)
        self.say(f"started gateway on http://127.0.0.1:{port}/webhooks/<app>, pid {child.pid}, "
                 f"health and metrics on http://127.0.0.1:{web_port}")
        self.wait_ready(child)

    def start_simulator(self) -> None:
        args = ["simulate", "--clock", "wall", "--format", "webhooks", "--rate", str(self.args.rate),
                "--users", str(self.args.users), "--seed", str(self.args.seed),
                "--gateway", f"http://127.0.0.1:{self.args.gateway_port}",
                "--broker", self.settings.broker, "--topic-prefix", self.prefix, "--registry", self.registry]
        env = {**os.environ, "RELANCE_APP_SECRET": self.app_secret}  # never on a command line
        self.simulator = start_child("simulator", args, env, self.run_dir / "simulator.log")
        self.say(f"started simulator ({self.args.rate:g} messages/s as signed webhooks to the gateway, "
                 f"{self.args.users} users), pid {self.simulator.pid}")

    # -- stop ------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop what this run started, by pid, in order: simulator, workers and gateway, the fake
        Graph API, topics, then the stack."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave half of it running
        try:
            if self.simulator is not None:
                stop_pid(self.simulator.pid, timeout=10)
            for child in self.workers:  # all at once: each worker takes seconds to leave its group
                if pid_alive(child.pid):
                    child.process.send_signal(signal.SIGTERM)
            for child in self.workers:
                stop_pid(child.pid, timeout=30)
            if self.fake_graph is not None:
                stop_pid(self.fake_graph.pid, timeout=10)
            if self.topics_created:
                self._delete_topics()
            for server in reversed(self.started_servers):  # Kafka before Redis
                server.stop()
            stopped = (len(self.workers) + (self.simulator is not None) + (self.fake_graph is not None)
                       + len(self.started_servers))
            if stopped:
                self.say(f"stopped {stopped} processes; logs kept in {self.run_dir}")
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _delete_topics(self) -> None:
        try:
            run_sync(lambda: _delete_topics(self.settings.broker, self.prefix, KafkaSecurity.of(self.settings)))
        except Exception as exc:  # the broker may already be gone: the topics go with its data
            self.say(f"could not delete the demo's topics: {exc}")


def demo_tokens(registry: BotRegistry) -> dict[str, str]:
    """A made-up token for each variable the registry names (unless set already): the fake
    Graph API accepts exactly these, and the sender sends with them."""
    return {ref.name: os.environ.get(ref.name) or f"demo-{ref.name.lower()}-{secrets.token_hex(6)}"
            for bot in registry for ref in bot.tokens.values() if ref.source == "env"}


def _registry_path(registry: str) -> str:
    """The registry as an absolute path; run outside the repository, the repository's own."""
    path = Path(registry)
    if not path.exists() and not path.is_absolute():
        path = REPO_ROOT / registry
    if not path.exists():
        raise DemoError(f"no bot registry at {registry}; give one with --registry")
    return str(path.resolve())


async def _delete_topics(bootstrap: str, prefix: str, security: KafkaSecurity) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000, **security.options())
    await admin.start()
    try:
        # Faust's own topics (changelogs, assignor) carry the prefix too: its app id has it.
        names = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if names:
            await admin.delete_topics(names, timeout_ms=10_000)
    finally:
        await admin.close()


# -- the live view -------------------------------------------------------------------------------

@dataclass
class Followup:
    seen_at: float
    app: str
    user_id: str
    bot_id: str
    text: str


@dataclass
class Observed:
    """What the view shows, gathered from the workers' /metrics and the output topics."""

    metrics: dict[str, dict[tuple, float]] = field(default_factory=dict)  # name -> labels -> value
    history: deque = field(default_factory=lambda: deque(maxlen=64))    # (time, events per app, webhooks per app)
    latest: deque = field(default_factory=lambda: deque(maxlen=LATEST_SHOWN))
    delivered_seen: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    first_delivery_after: float | None = None

    def total(self, name: str, **match: str) -> float:
        return sum(value for labels, value in self.metrics.get(name, {}).items()
                   if all(dict(labels).get(k) == v for k, v in match.items()))

    def by(self, name: str, *label_names: str) -> dict[tuple, float]:
        grouped: dict[tuple, float] = {}
        for labels, value in self.metrics.get(name, {}).items():
            key = tuple(dict(labels).get(label, "") for label in label_names)
            grouped[key] = grouped.get(key, 0.0) + value
        return grouped

    def per_second(self, index: int, app: str) -> float:
        """Rate over the last few seconds of one counter per app (index 1: events, 2: webhooks)."""
        if len(self.history) < 2:
            return 0.0
        newest = self.history[-1]
        oldest = next((entry for entry in self.history if newest[0] - entry[0] <= RATE_WINDOW_SECONDS), newest)
        span = newest[0] - oldest[0]
        return (newest[index].get(app, 0) - oldest[index].get(app, 0)) / span if span > 0 else 0.0


class LiveView:
    def __init__(self, demo: Demo, duration: float | None) -> None:
        self.demo, self.duration = demo, duration
        self.observed = Observed()
        self.began = time.monotonic()
        self.interactive = sys.stdout.isatty()
        self.unprinted: list[Followup] = []   # plain output: delivered since the last print
        writer = os.environ.get("RELANCE_LLM_BASE_URL")
        self.writer = f"LLM at {writer}" if writer else "offline writer"

    async def run(self) -> int:
        import aiohttp

        self.began = time.monotonic()
        reader = asyncio.create_task(self.read_outputs())
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
                if self.interactive:
                    await self._run_live(http)
                else:
                    await self._run_plain(http)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        self.print_summary()
        return 0

    def _over(self) -> bool:
        for child in self.demo.workers + [self.demo.simulator, self.demo.fake_graph]:
            if child is not None and not child.alive:
                raise DemoError(f"the {child.name} stopped (exit {child.process.returncode}); "
                                f"last lines of {child.log_path}:\n{child.log_tail()}")
        return self.duration is not None and time.monotonic() - self.began >= self.duration

    async def _run_live(self, http) -> None:
        from rich.live import Live

        with Live(self.render(), refresh_per_second=4, screen=False) as live:
            while not self._over():
                await self.scrape(http)
                live.update(self.render())
                await asyncio.sleep(REFRESH_SECONDS)

    async def _run_plain(self, http) -> None:
        """Not a terminal (a log, a test): one line per follow-up, a status line every 10 s."""
        status_at = self.began + 10
        while not self._over():
            await self.scrape(http)
            for followup in self.unprinted:
                print(f"follow-up written +{followup.seen_at - self.began:5.1f}s  {followup.app:<9} "
                      f"{followup.user_id} <- {followup.bot_id}: {_short(followup.text, 90)}", flush=True)
            self.unprinted.clear()
            if time.monotonic() >= status_at:
                status_at += 10
                print(self.status_line(), flush=True)
            await asyncio.sleep(REFRESH_SECONDS)

    # -- gathering ---------------------------------------------------------------------------

    async def scrape(self, http) -> None:
        import aiohttp
        from prometheus_client.parser import text_string_to_metric_families

        metrics: dict[str, dict[tuple, float]] = {}
        for child in self.demo.workers:
            try:
                async with http.get(f"http://127.0.0.1:{child.web_port}/metrics") as response:
                    if response.status != 200:
                        return  # keep the last numbers; the worker's log says what went wrong
                    text = await response.text()
            except (aiohttp.ClientError, asyncio.TimeoutError):  # a worker busy rebalancing: keep the last numbers
                return
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    series = metrics.setdefault(sample.name, {})
                    labels = tuple(sorted(sample.labels.items()))
                    series[labels] = series.get(labels, 0.0) + sample.value
        observed = self.observed
        observed.metrics = metrics
        observed.history.append((
            time.monotonic(),
            {app: observed.total("relance_events_in_total", app=app) for app in APPS},
            {app: observed.total("relance_webhooks_in_total", app=app) for app in APPS},
        ))

    async def read_outputs(self) -> None:
        """Every record of the delivery topics and of followups.outcomes, from the start of the run."""
        from aiokafka import AIOKafkaConsumer

        prefix, settings = self.demo.prefix, self.demo.settings
        outcomes_topic = topic_name(FOLLOWUP_OUTCOMES, prefix)
        topics = [topic_name(spec, prefix) for spec in DELIVERY_BY_APP.values()] + [outcomes_topic]
        security = KafkaSecurity.of(settings)
        partitions = await topic_partitions(settings.broker, topics, security)
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker, enable_auto_commit=False,
                                    auto_offset_reset="earliest", **security.options())
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_beginning()
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for tp, messages in batches.items():
                    for message in messages:
                        self._observe(tp.topic == outcomes_topic, message.value)
        finally:
            await consumer.stop()

    def _observe(self, is_outcome: bool, value: bytes) -> None:
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError:
            return
        observed = self.observed
        if is_outcome:
            outcome = str(record.get("outcome", "unknown")).split(":")[0]
            observed.outcomes[outcome] = observed.outcomes.get(outcome, 0) + 1
            return
        now = time.monotonic()
        if observed.first_delivery_after is None:
            observed.first_delivery_after = now - self.began
        observed.delivered_seen += 1
        followup = Followup(now, record.get("app", "?"), record.get("user_id", "?"),
                            record.get("bot_id", "?"), record.get("text", ""))
        observed.latest.append(followup)
        self.unprinted.append(followup)

    # -- showing -----------------------------------------------------------------------------

    def status_line(self) -> str:
        o = self.observed
        events = sum(o.per_second(1, app) for app in APPS)
        decisions = o.by("relance_decisions_total", "outcome")
        accepted = int(o.total("relance_gateway_requests_total", status="200"))
        return (f"+{time.monotonic() - self.began:.0f}s  {accepted} webhooks accepted by the gateway, {events:.1f} events/s, "
                f"{int(o.total('relance_pairs_tracked'))} pairs tracked, decisions "
                + (", ".join(f"{k[0]} {int(v)}" for k, v in sorted(decisions.items())) or "none")
                + f", {o.delivered_seen} follow-ups written, " + self.sent_delivered_read())

    def sent_delivered_read(self) -> str:
        """What the platforms say of the follow-ups: sent (accepted by the send API), then
        delivered and read (their receipts, back through the gateway)."""
        o = self.observed
        return (f"{int(o.total('relance_sends_total', result='sent'))} sent, "
                f"{int(o.total('relance_receipts_total', outcome='delivered'))} delivered, "
                f"{int(o.total('relance_receipts_total', outcome='read'))} read")

    def render(self):
        from rich.console import Group
        from rich.table import Table

        o = self.observed
        elapsed = time.monotonic() - self.began
        title = (f"Relance demo  ·  {elapsed:.0f}s  ·  topics {self.demo.prefix}*  ·  {self.writer}  ·  "
                 + ("Ctrl-C stops everything" if self.duration is None else f"ends after {self.duration:g}s"))
        apps = Table(title="traffic and follow-ups per app", expand=True)
        for column in ("app", "posted (200)", "webhooks/s", "events/s", "events", "follow-ups requested", "written",
                       "sent", "delivered", "read"):
            apps.add_column(column, justify="left" if column == "app" else "right")
        for app in APPS:
            apps.add_row(app, f"{int(o.total('relance_gateway_requests_total', app=app, status='200'))}",
                         f"{o.per_second(2, app):.1f}", f"{o.per_second(1, app):.1f}",
                         f"{int(o.total('relance_events_in_total', app=app))}",
                         f"{int(o.total('relance_followups_requested_total', app=app))}",
                         f"{int(o.total('relance_followups_generated_total', app=app))}",
                         f"{int(o.total('relance_sends_total', app=app, result='sent'))}",
                         f"{int(o.total('relance_receipts_total', app=app, outcome='delivered'))}",
                         f"{int(o.total('relance_receipts_total', app=app, outcome='read'))}")
        decisions = Table(title=f"decisions  ·  {int(o.total('relance_pairs_tracked'))} pairs tracked", expand=True)
        for column in ("outcome", "stopped by", "count"):
            decisions.add_column(column, justify="right" if column == "count" else "left")
        for (outcome, reason), count in sorted(o.by("relance_decisions_total", "outcome", "reason").items(),
                                               key=lambda item: -item[1]):
            decisions.add_row(outcome, "" if reason == "none" else reason, f"{int(count)}")
        outcomes = ", ".join(f"{name} {count}" for name, count in sorted(o.outcomes.items())) or "none yet"
        first = f"first after {o.first_delivery_after:.1f}s" if o.first_delivery_after is not None else "waiting for the first"
        latest = Table(title=f"latest follow-ups  ·  outcomes: {outcomes}  ·  {first}", expand=True)
        for column, ratio in (("age", 1), ("app", 2), ("user <- bot", 4), ("text", 14)):
            latest.add_column(column, ratio=ratio, overflow="fold")
        for followup in reversed(o.latest):
            latest.add_row(f"{time.monotonic() - followup.seen_at:.0f}s", followup.app,
                           f"{followup.user_id} <- {followup.bot_id}", followup.text)
        return Group(title, apps, decisions, latest)

    def print_summary(self) -> None:
        o = self.observed
        first = f"{o.first_delivery_after:.1f}s" if o.first_delivery_after is not None else "none"
        print(self.status_line())
        print(f"summary: {o.delivered_seen} follow-ups written, {self.sent_delivered_read()} "
              f"(outcomes: {', '.join(f'{k} {v}' for k, v in sorted(o.outcomes.items())) or 'none'}); "
              f"first follow-up written after {first} of traffic", flush=True)


def _short(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
