"""The fault suite's rig (issue 14): the whole pipeline, its faults, and the accounting.

One private Kafka broker and redis-server (the faults kill them), one worker per stage
(ingest, engine, context, generator, sender: each can be killed alone), the fake LLM and
the fake Graph API in a background event loop of this process (so that the test itself
may block while they keep answering), and readers of the topics the accounting reads.

A case sends the same conversations (``conversations``), native webhooks on the raw
topics, then, once ingest has put every event on ``messages``, one tick per group of
users, which makes their silences due (event mode). Each case has its own users (a
prefix) and its own stretch of time (two days further on per case), so that cases share
the workers and their order cannot change what a case decides. The accounting compares
a case with the uninterrupted run of the same conversations (the reference), pair by pair
(user without its case prefix, bot): the spec says one follow-up per silence, sent at
most once, with one final outcome.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import orjson
from aiokafka import AIOKafkaProducer

from devstack.fake_graph import FakeGraph, accounts_from_registry
from devstack.localstack import LocalStack, free_port
from devstack.processes import WorkerProcess
from devstack.traffic import bot_accounts, webhook_of
from schemas.records import format_ts
from schemas.registry import BotRegistry
from streams.topics import (
    DEADLETTER, DELIVERY_BY_APP, DELIVERY_RETRY, FOLLOWUP_OUTCOMES, FOLLOWUPS_REQUESTED, FOLLOWUPS_RETRY, MESSAGES,
    RAW_BY_APP, CLOCK_HEADER, CONTROL, topic_name,
)
from tests.fake_llm import FakeLLM
from tests.loopthread import Background
from tests.kafkaread import TopicReader, group_lag
from tests.test_sender_kafka import registry_file
from tests.waiting import wait_for

START = 1_795_856_400_000  # 2026-11-28T09:00:00Z
MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
IDLE_DELAY = 12 * HOUR     # the default D: every session of a case ends within it, so nothing is due before the ticks
CASE_SPAN = 2 * DAY        # each case's records come this much later than the previous case's
GROUPS = 6                 # users start in six hours, one tick each
PARTITIONS = 4
PREFIX = "faults-"
ROLES = ("ingest", "engine", "context", "generator", "sender")
# Sender endings, and the generator's endings before a send (spec section 9, README).
ENDINGS = ("sent", "unknown", "failed", "cancelled", "dead_lettered")
# The LLM's timings a tenth of their defaults, so that a 6 s outage does what a minute does
# with the defaults; the generator's lease margin too, so a killed generator's claims
# are taken over in seconds, not in the default 50 s.
LLM_SCALE = dict(llm_timeout="2s", generation_backoff="500ms", llm_breaker_cooldown="3s",
                 generation_lease_margin="3s")
WORKER_SETTINGS = dict(clock="event", quiet_hours="off", partitions=PARTITIONS, topic_prefix=PREFIX,
                       shutdown_grace="3s", send_timeout="2s", send_backoff="200ms", send_backoff_max="1s",
                       llm_concurrency=4, **LLM_SCALE)
LLM_DELAY_S = 0.1          # each text takes this long: about 40 follow-ups a second, so a fault lands mid-flow


# -- the records -------------------------------------------------------------------------

@dataclass
class Script:
    """What one case sends, and what ingest must put on ``messages`` before the ticks."""

    case: int
    webhooks: list[tuple[str, bytes]] = field(default_factory=list)   # (app, body)
    controls: list[tuple[str, bytes]] = field(default_factory=list)   # (user, control event)
    ticks: list[bytes] = field(default_factory=list)
    events: set[tuple[str, str]] = field(default_factory=set)         # (app, event_id) expected on messages
    profiles: set[str] = field(default_factory=set)                   # users whose profile must reach messages

    @property
    def user_prefix(self) -> str:
        return f"9{self.case:03d}"

    def base(self, user_id: str) -> str:
        """The user without the case's prefix: the same person in every case."""
        return user_id[len(self.user_prefix):]


def conversations(case: int, users: int, accounts: dict[tuple[str, str], str]) -> Script:
    """The same users every case (per-user seeds), ids and times moved to the case's own.

    Realistic sessions on each user's home app, bot replies, photos without words, re-sent
    webhooks, users below N messages, stop words, signs of distress, minors, and users
    talking to two bots (the cap picks one). Every session ends within an hour of its
    group's start, so every silence is decided by its group's tick, after every message."""
    script = Script(case)
    shift = case * CASE_SPAN
    for index in range(users):
        rng = random.Random(index)
        user = f"{script.user_prefix}{index:06d}"
        group = index % GROUPS
        app = rng.choice(("whatsapp", "whatsapp", "facebook", "instagram"))
        pairs = [("maestro", app)] if rng.random() < 0.8 else [("chef-lucie", "whatsapp")]
        if rng.random() < 0.15:
            pairs = [("maestro", app), ("chef-lucie", "whatsapp")]
        ts = START + shift + group * HOUR + rng.randrange(0, 10 * MINUTE)
        if index % 23 == 7:
            script.controls.append((user, orjson.dumps({"type": "profile", "user_id": user, "minor": True})))
            script.profiles.add(user)
        for bot, pair_app in pairs:
            inbound = rng.choice((2, 4, 5, 5, 6, 7, 8))
            for n in range(inbound):
                text = rng.choice(("Any film music tips?", "What should I cook tonight?", "thanks!", "", "ok"))
                if n == inbound - 1 and index % 17 == 3:
                    text = "STOP"
                if n == 1 and index % 19 == 5:
                    text = "sometimes I want to die"
                ts += rng.randrange(MINUTE, 3 * MINUTE)
                _add(script, accounts, user, bot, pair_app, "inbound", ts, f"{index}.{bot}.{n}", text, resend=index % 29 == 11)
                if rng.random() < 0.8:
                    ts += rng.randrange(MINUTE, 2 * MINUTE)
                    _add(script, accounts, user, bot, pair_app, "outbound", ts, f"{index}.{bot}.{n}r", "Happy to help.")
    for group in range(GROUPS):
        due_by = START + shift + (group + 1) * HOUR + IDLE_DELAY + MINUTE
        script.ticks.append(orjson.dumps({"type": "tick", "ts": format_ts(due_by)}))
    return script


def _add(script: Script, accounts, user: str, bot: str, app: str, direction: str, ts: int, serial: str, text: str,
         resend: bool = False) -> None:
    event_id = (f"wamid.{script.case}.{serial}" if app == "whatsapp" else f"m_{script.case}.{serial}")
    record = {"event_id": event_id, "app": app, "user_id": user, "bot_id": bot, "direction": direction,
              "ts": format_ts(ts), "text": text}
    app_and_hook = webhook_of(record, accounts)
    if app_and_hook is None:
        return
    body = orjson.dumps(app_and_hook[1])
    script.webhooks += [(app, body)] * (2 if resend else 1)
    # Spec section 5: every message becomes an event, except WhatsApp's own business
    # messages, which arrive only as statuses (receipts, counted and dropped).
    if direction == "inbound" or app != "whatsapp":
        script.events.add((app, event_id))


# -- a background event loop for the stand-ins and the readers ---------------------------

# -- the rig ---------------------------------------------------------------------------------

class FaultRig:
    """The stack, the five workers, the fakes and the readers, started and stopped together."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.stack = LocalStack(workdir / "stack", kafka_port=free_port(), redis_port=free_port(),
                                controller_port=free_port())
        self.registry = registry_file(workdir)
        self.accounts = bot_accounts(BotRegistry.load(self.registry))
        self.background = Background()
        self.llm = FakeLLM(ok_delay=LLM_DELAY_S)
        self.graph = FakeGraph(accounts_from_registry(BotRegistry.load(self.registry)))
        self.workers: dict[str, WorkerProcess] = {}
        self.restarts: collections.Counter[str] = collections.Counter()  # workers found dead and started again
        self.readers: dict[str, TopicReader] = {}
        self._parsed: dict[str, list] = collections.defaultdict(list)  # topic -> values read so far, decoded

    def start(self) -> "FaultRig":
        self.stack.start()
        from streams.admin import create_topics
        from streams.topics import CATALOG
        create_topics(self.stack.bootstrap, CATALOG, PREFIX, PARTITIONS)
        self.background.call(self.llm.start())
        self.background.call(self.graph.start())
        for role in ROLES:
            self.workers[role] = self._worker(role).start()
        for spec, partitions in ((MESSAGES, PARTITIONS), (FOLLOWUPS_REQUESTED, PARTITIONS),
                                 (FOLLOWUP_OUTCOMES, PARTITIONS), (DEADLETTER, 1)):
            self.readers[spec.name] = self.background.call(
                TopicReader(self.stack.bootstrap, topic_name(spec, PREFIX), partitions).start())
        for worker in self.workers.values():
            worker.wait_ready(120)
        return self

    def stop(self) -> None:
        try:
            for worker in self.workers.values():
                worker.stop(timeout=10)
            for reader in self.readers.values():
                self.background.call(reader.stop(), timeout=30)
            self.background.call(self.llm.stop(), timeout=30)
            self.background.call(self.graph.stop(), timeout=30)
        finally:
            for worker in self.workers.values():
                worker.kill()
            self.background.close()
            self.stack.stop()

    def _worker(self, role: str) -> WorkerProcess:
        (self.workdir / "data").mkdir(exist_ok=True)
        return WorkerProcess(
            self.workdir, [role], broker=self.stack.bootstrap, redis_url=self.stack.redis_url,
            app_id=f"relance-{role}", data_dir=self.workdir / "data" / role, registry=self.registry,
            graph_base_url=self.graph.base_url, llm_base_url=self.llm.base_url, **WORKER_SETTINGS)

    def restart_worker(self, role: str) -> float:
        """As a supervisor would: the same stage again, at once."""
        self.workers[role].kill()
        restarted = time.monotonic()
        self.workers[role] = self._worker(role).start()
        return restarted

    def log_lines(self, after: dict[Path, int] | None = None) -> dict[str, list[dict]]:
        """Each worker's log (JSON lines; one that is not JSON as its message), past the
        line counts ``after`` gives per log file (a restarted worker writes a new one)."""
        lines = {}
        for role, worker in self.workers.items():
            text = worker.log_path.read_text(errors="replace") if worker.log_path.exists() else ""
            lines[role] = [_log_line(line) for line in text.splitlines()[(after or {}).get(worker.log_path, 0):]]
        return lines

    def log_marks(self) -> dict[Path, int]:
        return {self.workers[role].log_path: len(lines) for role, lines in self.log_lines().items()}

    def supervise(self) -> None:
        """Start again any worker that died (a crash the harness did not cause), and count it."""
        for role, worker in self.workers.items():
            if not worker.alive:
                self.restarts[role] += 1
                self.workers[role] = self._worker(role).start()

    # -- what the topics say --------------------------------------------------------------

    def records(self, spec) -> list:
        return list(self.readers[spec.name].records)

    def values(self, spec) -> list:
        """The decoded values read so far (None for an empty or unreadable one), decoded once."""
        parsed, records = self._parsed[spec.name], self.readers[spec.name].records
        for message in records[len(parsed):len(records)]:
            try:
                parsed.append(orjson.loads(message.value) if message.value else None)
            except orjson.JSONDecodeError:
                parsed.append(None)
        return list(parsed)

    def dropped(self, **labels: str) -> float:
        """Records the workers dropped under a named count (all stages and reasons, or those labels)."""
        return sum(worker.metric("relance_records_dropped_total", **labels) for worker in self.workers.values())

    async def _produce(self, items: list[tuple[str, bytes | None, bytes | None, list]], pace_s: float = 0.0,
                       chunks: int = 1) -> list:
        producer = AIOKafkaProducer(bootstrap_servers=self.stack.bootstrap, acks="all", linger_ms=5,
                                    max_request_size=1_100_000, request_timeout_ms=60_000)
        await producer.start()
        try:
            sent = []
            size = max(1, -(-len(items) // chunks))
            for start in range(0, len(items), size):
                futures = [await producer.send(topic, value, key=key, headers=headers)
                           for topic, key, value, headers in items[start:start + size]]
                sent += [await future for future in futures]
                if pace_s:
                    await asyncio.sleep(pace_s)
            return sent
        finally:
            await producer.stop()

    def produce(self, items: list[tuple[str, bytes | None, bytes | None, list]]) -> list:
        """Records written now, acknowledged; their metadata (partition, offset)."""
        return self.background.call(self._produce(items))

    async def drive(self, script: Script) -> None:
        """Webhooks at a realistic pace, then (every event on ``messages``) the ticks."""
        raw = [(topic_name(RAW_BY_APP[app], PREFIX), None, body, []) for app, body in script.webhooks]
        control = [(topic_name(CONTROL, PREFIX), user.encode(), body, []) for user, body in script.controls]
        await self._produce(control + raw, pace_s=0.2, chunks=10)
        while not self.ingested(script):
            await asyncio.sleep(0.05)
        ticks = [(topic_name(CONTROL, PREFIX), None, tick, []) for tick in script.ticks]
        await self._produce(ticks, pace_s=0.3, chunks=len(ticks))

    def ingested(self, script: Script) -> bool:
        """Every event and profile of the script is on ``messages``."""
        seen_events, seen_profiles = set(), set()
        for value in self.values(MESSAGES):
            if not isinstance(value, dict):
                continue
            if "event_id" in value:
                seen_events.add((value["app"], value["event_id"]))
            elif value.get("type") == "profile":
                seen_profiles.add(value["user_id"])
        return script.events <= seen_events and script.profiles <= seen_profiles

    def caught_up(self) -> bool:
        """Everything consumed and committed by the engine, the generator and the sender."""
        groups = [(f"{PREFIX}relance-engine.engine", MESSAGES), (f"{PREFIX}relance-context", MESSAGES),
                  (f"{PREFIX}relance-generator", FOLLOWUPS_REQUESTED),
                  (f"{PREFIX}relance-generator", FOLLOWUPS_RETRY), (f"{PREFIX}relance-sender", DELIVERY_RETRY),
                  *((f"{PREFIX}relance-sender", spec) for spec in DELIVERY_BY_APP.values())]

        async def lags() -> list:
            return [await group_lag(self.stack.bootstrap, group, topic_name(spec, PREFIX), PARTITIONS)
                    for group, spec in groups]
        try:
            return all(lag in (0, None) for lag in self.background.call(lags(), timeout=30))
        except Exception:  # the broker is not back yet
            return False


def _log_line(line: str) -> dict:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return {"message": line}


# -- the accounting ----------------------------------------------------------------------------

@dataclass
class Accounting:
    """One case, pair by pair (the user without its case prefix, and the bot)."""

    requested: dict[tuple[str, str], set[str]]          # pair -> follow-up ids requested
    requested_twice: int                                 # ids published more than once on followups.requested
    final: dict[tuple[str, str], str]                    # pair -> its one final outcome ("" none, "a+b" two)
    republished: int                                     # the same outcome published again (README choice 22)
    sent_at_fake: dict[tuple[str, str], int]             # pair -> messages the fake Graph API accepted
    dead_letters: list[dict]                             # the case's dead letters
    dropped: float                                       # records dropped under a named count meanwhile

    def against(self, reference: "Accounting") -> dict[str, Any]:
        """The table's row: what differs from the reference, and how often anything happened twice."""
        pairs = set(reference.requested) | set(self.requested)
        return {
            "requested": len(self.requested),
            "missing": sorted(p for p in reference.requested if p not in self.requested),
            "extra": sorted(p for p in self.requested if p not in reference.requested),
            "ids_twice": self.requested_twice + sum(len(ids) > 1 for ids in self.requested.values()),
            "sent": sum(1 for p in self.sent_at_fake if self.sent_at_fake[p]),
            "sent_twice": sorted(p for p, n in self.sent_at_fake.items() if n > 1),
            "no_final": sorted(p for p in self.requested if not self.final.get(p)),
            "two_finals": sorted(p for p, f in self.final.items() if "+" in f),
            "other_final": sorted(p for p in pairs if p in self.final and "+" not in self.final[p]
                                  and self.final[p] != reference.final.get(p)),
            "republished": self.republished,
            "dead_letters": len(self.dead_letters),
            "dropped": self.dropped,
        }


async def _copy(mapping: dict) -> dict:
    return dict(mapping)


def account(rig: FaultRig, script: Script, letters_from: int, dropped_before: float) -> Accounting:
    prefix = script.user_prefix
    requested: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    pair_of: dict[str, tuple[str, str]] = {}
    copies = collections.Counter()
    for request in rig.values(FOLLOWUPS_REQUESTED):
        if isinstance(request, dict) and str(request.get("user_id")).startswith(prefix) and "followup_id" in request:
            pair = (script.base(request["user_id"]), request["bot_id"])
            requested[pair].add(request["followup_id"])
            pair_of[request["followup_id"]] = pair
            copies[request["followup_id"]] += 1
    stories: dict[str, list[str]] = collections.defaultdict(list)
    for outcome in rig.values(FOLLOWUP_OUTCOMES):
        if outcome["user_id"].startswith(prefix):
            stories[outcome["followup_id"]].append(outcome["outcome"])
    final, republished = {}, 0
    for followup_id, pair in pair_of.items():
        story = stories.get(followup_id, [])
        endings = [step for step in dict.fromkeys(story) if step in ENDINGS]
        republished += len(story) - len(set(story))
        final[pair] = "+".join(endings)
    # The fake counts in the background loop's thread: copied there, not while it writes.
    accepted = rig.background.call(_copy(rig.graph.accepted))
    sent = {pair_of[fid]: count for fid, count in accepted.items() if fid in pair_of}
    letters = rig.values(DEADLETTER)[letters_from:]
    return Accounting(dict(requested), sum(n > 1 for n in copies.values()), final, republished, sent, letters,
                      rig.dropped() - dropped_before)


def complete(rig: FaultRig, script: Script, reference: Accounting | None) -> bool:
    """Every pair of the reference (or, for the reference, every request) has its final outcome."""
    now = account(rig, script, len(rig.records(DEADLETTER)), 0)
    wanted = reference.requested if reference else now.requested
    return bool(wanted) and all(now.final.get(pair) for pair in wanted)


# -- one case ---------------------------------------------------------------------------------

@dataclass
class Fault:
    """What happens to the running pipeline, and when: ``trigger`` says the case has got far
    enough (a third of the way, where the fault matters); ``inject`` does it and returns when
    the fault ends (the killed thing started again, the LLM answering again)."""

    name: str
    trigger: Callable[[FaultRig, Script, "Accounting"], bool]
    inject: Callable[[FaultRig], float]


@dataclass
class CaseResult:
    name: str
    accounting: Accounting
    row: dict[str, Any]
    recovery_s: float | None     # fault end (the restart issued) to every final outcome in
    at_fault: str                # how far the case had got when the fault came
    took_s: float
    restarts: dict[str, int]     # workers that died on their own and were started again
    poisoned: list = field(default_factory=list)  # the poison records written, where they landed
    logs: dict[str, list[dict]] = field(default_factory=dict)  # each worker's lines from the fault to the end

    def outage_lines(self, role: str) -> list[str]:
        return [line["message"] for line in self.logs.get(role, []) if line.get("logger") == "relance.outage"]


def run_case(rig: FaultRig, case: int, users: int, fault: Fault | None = None, reference: Accounting | None = None,
             poison: Callable[[FaultRig, Script], list] | None = None, timeout: float = 180) -> CaseResult:
    script = conversations(case, users, rig.accounts)
    letters_from, dropped_before = len(rig.records(DEADLETTER)), rig.dropped()
    rig.restarts.clear()
    started = time.monotonic()
    driving = rig.background.submit(rig.drive(script))
    fault_end, at_fault, logged_before = None, "", {}
    poisoned = poison(rig, script) if poison else []
    if fault:
        wait_for(lambda: fault.trigger(rig, script, reference) or _failed(driving), 120, f"{fault.name}: its moment")
        now = account(rig, script, len(rig.records(DEADLETTER)), 0)
        at_fault = f"{len(now.requested)} requested, {sum(1 for n in now.sent_at_fake.values() if n)} sent"
        logged_before = rig.log_marks()
        fault_end = fault.inject(rig)
    caught = []

    def done() -> bool:
        rig.supervise()
        if not caught and driving.done() and complete(rig, script, reference):
            caught.append(time.monotonic())
        return caught and rig.caught_up()
    try:
        wait_for(lambda: done() or _failed(driving), timeout, f"case {case}: every follow-up ended and everything committed")
        timed_out = False
    except AssertionError:  # never caught up: the accounting says what is missing
        timed_out = True
    driving.result(0)
    accounting = account(rig, script, letters_from, dropped_before)
    row = {**accounting.against(reference or accounting), "timed_out": timed_out}
    name = fault.name if fault else ("poison" if poison else "reference")
    recovery = round(caught[0] - fault_end, 1) if fault_end and caught else None
    logs = rig.log_lines(after=logged_before)
    return CaseResult(name, accounting, row, recovery, at_fault, round(time.monotonic() - started, 1), dict(rig.restarts),
                      poisoned, logs if fault else {})


def _failed(future: concurrent.futures.Future) -> bool:
    if future.done() and future.exception() is not None:
        raise future.exception()
    return False


def print_table(results: list[CaseResult]) -> None:
    columns = ("requested", "missing", "extra", "ids_twice", "sent", "sent_twice", "no_final", "two_finals",
               "other_final", "republished", "dead_letters", "dropped")
    print(f"\n{'case':<22}" + "".join(f"{c:>13}" for c in columns) + f"{'recovery_s':>12}{'took_s':>8}  {'at the fault':<24} restarts")
    for result in results:
        cells = [len(v) if isinstance(v, list) else v for v in (result.row[c] for c in columns)]
        print(f"{result.name:<22}" + "".join(f"{c:>13g}" for c in cells)
              + f"{'' if result.recovery_s is None else result.recovery_s:>12}{result.took_s:>8}  {result.at_fault:<24} {result.restarts}")
        if result.logs:
            print(f"{'':<22}log lines from the fault on: "
                  + ", ".join(f"{role} {len(lines)}" for role, lines in result.logs.items()))


# -- the faults ---------------------------------------------------------------------------------

def share_sent(rig: FaultRig, script: Script, reference: Accounting) -> bool:
    now = account(rig, script, len(rig.records(DEADLETTER)), 0)
    return sum(1 for n in now.sent_at_fake.values() if n) >= len(reference.requested) // 3


def share_requested(rig: FaultRig, script: Script, reference: Accounting) -> bool:
    return len(account(rig, script, len(rig.records(DEADLETTER)), 0).requested) >= len(reference.requested) // 3


def share_generated(rig: FaultRig, script: Script, reference: Accounting) -> bool:
    prefix = script.user_prefix
    generated = sum(1 for outcome in rig.values(FOLLOWUP_OUTCOMES)
                    if outcome["outcome"] == "generated" and outcome["user_id"].startswith(prefix))
    return generated >= len(reference.requested) // 3


def share_ingested(rig: FaultRig, script: Script, reference: Accounting) -> bool:
    seen = sum(1 for value in rig.values(MESSAGES)
               if isinstance(value, dict) and str(value.get("user_id", "")).startswith(script.user_prefix))
    return seen >= len(script.events) // 3


def kill_server(rig: FaultRig, server, down_s: float, keep_data: bool = True) -> float:
    pid = server.pid()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: server.pid() is None, 30, f"{server.name} gone")
    if not keep_data:
        shutil.rmtree(server.state_dir / "redis-data")
    time.sleep(down_s)  # the outage itself: how long it lasts is the fault, not a guess at timing
    restarted = time.monotonic()
    server.start(timeout=90)
    return restarted


def llm_down(rig: FaultRig, down_s: float) -> float:
    rig.background.call(rig.llm.stop())   # connections refused
    time.sleep(down_s)  # the outage itself
    rig.background.call(rig.llm.start())  # on the same port
    return time.monotonic()


BROKER_DOWN_S, REDIS_DOWN_S, LLM_DOWN_S = 5.0, 3.0, 6.0

FAULTS = {
    "broker_sigkill": Fault("broker_sigkill", share_sent, lambda rig: kill_server(rig, rig.stack.kafka, BROKER_DOWN_S)),
    "redis_sigkill_kept": Fault("redis_sigkill_kept", share_sent, lambda rig: kill_server(rig, rig.stack.redis, REDIS_DOWN_S)),
    "redis_sigkill_wiped": Fault("redis_sigkill_wiped", share_sent,
                                 lambda rig: kill_server(rig, rig.stack.redis, REDIS_DOWN_S, keep_data=False)),
    "ingest_sigkill": Fault("ingest_sigkill", share_ingested, lambda rig: rig.restart_worker("ingest")),
    "context_sigkill": Fault("context_sigkill", share_ingested, lambda rig: rig.restart_worker("context")),
    "engine_sigkill": Fault("engine_sigkill", share_requested, lambda rig: rig.restart_worker("engine")),
    "generator_sigkill": Fault("generator_sigkill", share_generated, lambda rig: rig.restart_worker("generator")),
    "sender_sigkill": Fault("sender_sigkill", share_sent, lambda rig: rig.restart_worker("sender")),
    "llm_down": Fault("llm_down", share_sent, lambda rig: llm_down(rig, LLM_DOWN_S)),
}


# -- poison -------------------------------------------------------------------------------------

# Every input topic of a stage (streams/topics.py), and one record of each kind of poison.
POISONED_TOPICS = (*RAW_BY_APP.values(), CONTROL, MESSAGES, FOLLOWUPS_REQUESTED, FOLLOWUPS_RETRY,
                   *DELIVERY_BY_APP.values(), DELIVERY_RETRY)
POISONS = {
    "oversized": (b'"' * 1_000_000, []),      # under the broker's limit, twice it escaped whole in a dead letter
    "unreadable": (b"\xff\xfe\x00{not json", []),
    "wrong_type": (b"[1, 2, 3]", []),
    "empty": (b"", []),
    "null": (None, []),
    "bad_headers": (b"{}", [(CLOCK_HEADER, b"soon"), ("x-junk", b"\xff\xfe")]),
}


@dataclass(frozen=True)
class Poison:
    topic: str
    kind: str
    partition: int
    offset: int


def poison_every_input_topic(rig: FaultRig, script: Script) -> list[Poison]:
    """One record of every kind on every input topic, keyed (where the topic is) by a user
    of the case, written while the case's conversations flow."""
    key = f"{script.user_prefix}000000".encode()
    items, kinds = [], []
    for spec in POISONED_TOPICS:
        for kind, (value, headers) in POISONS.items():
            items.append((topic_name(spec, PREFIX), key, value, headers))  # a null value needs a key
            kinds.append((topic_name(spec, PREFIX), kind))
    return [Poison(topic, kind, meta.partition, meta.offset) for (topic, kind), meta in zip(kinds, rig.produce(items))]
