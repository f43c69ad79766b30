"""A live engine worker: its /metrics move as records flow, `relance explain` reads its state."""
from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.records import format_ts
from devstack.feeder import feed
from devstack.processes import WorkerProcess
from waiting import wait_for

pytestmark = pytest.mark.kafka

RELANCE = str(Path(sys.executable).with_name("relance"))
T0 = 1_795_856_400_000  # 2026-11-28T09:00:00Z
MINUTE, HOUR = 60_000, 3_600_000
EXPLAIN_TOKEN = "explain-token-of-the-live-test"  # /explain answers only its bearers
RULES = {"min_inbound": 5, "idle_delay": "12h", "messaging_window": "24h", "quiet_hours": "off"}


def message(n: int, user: str, bot: str, app: str, ts: int, direction: str = "inbound") -> dict:
    return {"event_id": f"e-{n}", "app": app, "user_id": user, "bot_id": bot, "direction": direction,
            "ts": format_ts(ts), "text": "hello"}


def traffic() -> list[dict]:
    engaged = [message(n, "u-a", "maestro", "whatsapp", T0 + n * MINUTE) for n in range(5)]
    engaged.append(message(5, "u-a", "maestro", "whatsapp", T0 + 6 * MINUTE, "outbound"))
    too_few = [message(10 + n, "u-b", "maestro", "facebook", T0 + n * MINUTE) for n in range(2)]
    resent = message(20, "u-c", "chef-lucie", "instagram", T0)
    return engaged + too_few + [resent, dict(resent)] + [{"type": "tick", "ts": format_ts(T0 + 2 * 24 * HOUR)}]


def scrape(worker: WorkerProcess) -> dict[tuple, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def total(metrics: dict, name: str) -> float:
    """A metric summed over every label set."""
    return sum(value for (sample, _), value in metrics.items() if sample == name)


def ready(worker: WorkerProcess) -> bool:
    worker.check_alive()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/health", timeout=2) as response:
            return orjson.loads(response.read())["ready"]
    except OSError:
        return False


def explain(worker: WorkerProcess, user: str, bot: str, *options: str) -> subprocess.CompletedProcess:
    # An unreachable worker first: the command must go on to the next one.
    return subprocess.run([RELANCE, "explain", user, bot, "--worker", "http://127.0.0.1:9",
                           "--worker", f"http://127.0.0.1:{worker.web_port}", *options],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "RELANCE_EXPLAIN_TOKEN": EXPLAIN_TOKEN})


@pytest.fixture
def engine_worker(stack, topic_prefix, redis_db, tmp_path):
    worker = WorkerProcess(tmp_path, ["engine"], broker=stack.bootstrap, redis_url=redis_db,
                           topic_prefix=topic_prefix, partitions=4, clock="event",
                           data_dir=tmp_path / "data", explain_token=EXPLAIN_TOKEN, **RULES).start()
    try:
        wait_for(lambda: ready(worker), 60, "the engine worker to be ready")
        yield worker
    finally:
        worker.stop()


async def test_metrics_move_by_what_was_fed_and_explain_reads_the_pair(stack, topic_prefix, engine_worker):
    before = scrape(engine_worker)
    summary = await feed([orjson.dumps(record) for record in traffic()], stack.bootstrap, topic_prefix)
    assert summary.errors == []

    def moved(name: str, **labels: str) -> float:
        return value(scrape(engine_worker), name, **labels) - value(before, name, **labels)

    def all_decided() -> bool:
        engine_worker.check_alive()
        # A request is counted once Kafka and the ledger hold it, a moment after its decision.
        return (moved("relance_decisions_total", outcome="suppressed", reason="engaged") == 2
                and moved("relance_decisions_total", outcome="emitted", reason="none") == 1
                and moved("relance_followups_requested_total", app="whatsapp") == 1)

    wait_for(all_decided, 30, "one follow-up published and two unengaged pairs decided")
    assert moved("relance_events_in_total", app="whatsapp") == 6
    assert moved("relance_events_in_total", app="facebook") == 2
    assert moved("relance_events_in_total", app="instagram") == 2  # the re-sent one is read, then dropped
    assert total(scrape(engine_worker), "relance_duplicates_total") - total(before, "relance_duplicates_total") == 1
    assert moved("relance_followups_requested_total", app="whatsapp") == 1  # and not counted twice
    wait_for(lambda: value(scrape(engine_worker), "relance_pairs_tracked") == 3, 15, "pairs_tracked to count 3 pairs")

    answer = wait_for(lambda: _decided(explain(engine_worker, "u-a", "maestro", "--json")), 15,
                      "explain to show the pair's decision")
    pair = answer["pair"]
    assert len(pair["inbound_in_window"]) == 5
    assert pair["last_inbound_ts"] == format_ts(T0 + 4 * MINUTE)
    assert pair["last_ts"] == format_ts(T0 + 6 * MINUTE)
    assert pair["emitted_at"] == format_ts(T0 + 6 * MINUTE + 12 * HOUR) and pair["due"] is None
    assert [d["outcome"] for d in answer["decisions"]] == ["emitted"]
    assert answer["user"]["sends"] == [pair["emitted_at"]]

    readable = explain(engine_worker, "u-b", "maestro")
    assert readable.returncode == 0, readable.stderr
    assert "inbound in window  2 of 5 needed" in readable.stdout
    assert "suppressed, stopped by engaged (2 of 5 inbound messages in the window)" in readable.stdout

    await feed([orjson.dumps({"type": "erase", "user_id": "u-a"})], stack.bootstrap, topic_prefix)
    erased = wait_for(lambda: _forgotten(explain(engine_worker, "u-a", "maestro", "--json")), 15,
                      "the erasure to reach the engine")
    assert erased["decisions"] == []
    wait_for(lambda: value(scrape(engine_worker), "relance_pairs_tracked") == 2, 15, "pairs_tracked to drop the erased pair")
    for line in engine_worker.log_path.read_text().splitlines():
        assert {"ts", "level", "logger", "message"} <= set(orjson.loads(line)), line  # every log line is JSON


def _decided(result: subprocess.CompletedProcess) -> dict | None:
    assert result.returncode == 0, result.stderr
    answer = orjson.loads(result.stdout)
    return answer if answer["decisions"] else None


def _forgotten(result: subprocess.CompletedProcess) -> dict | None:
    assert result.returncode == 0, result.stderr
    answer = orjson.loads(result.stdout)
    return answer if answer["user"] is None else None
