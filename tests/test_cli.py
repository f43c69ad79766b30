"""The command line: every sub-command explains itself, and the tools fit together."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from domain.normalize import normalize_webhook
from relance.cli import build_parser, main
from foundation.settings import Settings
from devstack.traffic import LiveShape, LiveTraffic, TrafficShape, bot_accounts, generate, webhook_of
from schemas.records import EncodedDecision, parse_followup, parse_ts
from schemas.registry import BotRegistry
from agents.explain import RecentDecisions, explain

RELANCE = str(Path(sys.executable).with_name("relance"))
REGISTRY = BotRegistry.load("deploy/bots.toml")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def _every_command() -> list[list[str]]:
    commands = []
    for name, parser in _subcommands(build_parser()).items():
        commands.append([name])
        commands += [[name, action] for action in _subcommands(parser)]
    return commands


def test_there_are_the_operating_commands():
    names = {command[0] for command in _every_command()}
    assert {"demo", "simulate", "control", "explain", "worker", "replay", "broker", "normalize"} <= names


@pytest.mark.parametrize("command", _every_command(), ids=" ".join)
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command + ["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: relance " + " ".join(command))
    # More than a usage line: a description a newcomer can read, and every option explained.
    description = text.split("\n\n")[1]
    assert len(description.split()) >= 6, text
    assert "  -h, --help" in text


# -- simulate -------------------------------------------------------------------------------------

def test_simulated_weeks_piped_to_replay_give_followups():
    simulate = subprocess.Popen([RELANCE, "simulate", "--days", "14", "--users", "150", "--seed", "3", "--out", "-"],
                                stdout=subprocess.PIPE)
    replay = subprocess.run([RELANCE, "replay", "-"], stdin=simulate.stdout, capture_output=True, timeout=120)
    simulate.stdout.close()
    assert simulate.wait(timeout=30) == 0
    assert replay.returncode == 0, replay.stderr.decode()
    assert replay.stderr == b""  # the simulator writes only valid records
    requests = [parse_followup(orjson.loads(line)) for line in replay.stdout.splitlines()]
    assert len(requests) > 30
    assert len({request.followup_id for request in requests}) == len(requests)


def test_simulate_event_output_is_what_generate_gives():
    out = subprocess.run([RELANCE, "simulate", "--days", "2", "--users", "20", "--seed", "5", "--out", "-"],
                         capture_output=True, check=True, timeout=60).stdout
    assert [orjson.loads(line) for line in out.splitlines()] == generate(TrafficShape(users=20, days=2), seed=5)


def test_simulate_wall_clock_writes_records_stamped_now():
    began = time.time() * 1000
    out = subprocess.run([RELANCE, "simulate", "--clock", "wall", "--rate", "40", "--users", "30",
                          "--duration", "1.5", "--out", "-"], capture_output=True, check=True, timeout=60).stdout
    records = [orjson.loads(line) for line in out.splitlines()]
    messages = [record for record in records if "type" not in record]
    assert messages, "a second and a half at 40 a second gives messages"
    assert all(began - 1000 <= parse_ts(record["ts"]) <= time.time() * 1000 for record in messages)


def test_simulate_refuses_webhooks_on_standard_output():
    result = subprocess.run([RELANCE, "simulate", "--format", "webhooks", "--out", "-"], capture_output=True, timeout=60)
    assert result.returncode == 2 and b"canonical" in result.stderr


def test_every_simulated_message_posts_as_a_webhook_the_ingest_reads_back():
    accounts = bot_accounts(REGISTRY)
    records = [r for r in generate(TrafficShape(users=40, days=3), seed=2) if "type" not in r]
    live = LiveTraffic(LiveShape(users=40, rate=50), seed=2, now_ms=1_795_856_400_000)
    records += [r for r in live.due(1_795_856_460_000) if "type" not in r]
    receipts = 0
    for record in records:
        app, document = webhook_of(record, accounts)
        result = normalize_webhook(app, document, REGISTRY)
        assert result.errors == []
        if app == "whatsapp" and record["direction"] == "outbound":
            assert result.events == [] and result.dropped == 1  # a delivery status, not a message
            receipts += 1
            continue
        [event] = result.events
        ts = parse_ts(record["ts"])
        assert (event.event_id, event.user_id, event.bot_id, event.direction, event.text) == (
            record["event_id"], record["user_id"], record["bot_id"], record["direction"], record["text"])
        assert event.ts == (ts // 1000 * 1000 if app == "whatsapp" else ts)  # WhatsApp posts seconds
    assert receipts > 0


def test_live_traffic_keeps_its_rate_and_answers_some_followups():
    start = 1_795_856_400_000
    live = LiveTraffic(LiveShape(users=500, rate=20, answer_share=1.0), seed=4, now_ms=start)
    live.due(start + 60_000)  # the first minute warms up: sessions are only starting
    messages = [r for second in range(61, 241) for r in live.due(start + second * 1000) if "type" not in r]
    assert 16 <= len(messages) / 180 <= 24
    assert live.answer("u00001", "maestro", "facebook", start + 240_000) or "u00001" in live._busy
    answers = [r for r in live.due(start + 260_000) if r.get("user_id") == "u00001" and r["bot_id"] == "maestro"]
    assert any(r["direction"] == "inbound" for r in answers)


# -- control --------------------------------------------------------------------------------------

@pytest.mark.parametrize("command, event", [
    (["opt-out", "u-42", "--bot", "maestro"], {"type": "opt_out", "user_id": "u-42", "bot_id": "maestro"}),
    (["opt-in", "u-42"], {"type": "opt_in", "user_id": "u-42", "bot_id": None}),
    (["profile", "u-42", "--tz", "Europe/Paris", "--adult"], {"type": "profile", "user_id": "u-42", "tz": "Europe/Paris", "minor": False}),
    (["profile", "u-42"], {"type": "profile", "user_id": "u-42", "tz": None}),
    (["kill", "app", "whatsapp"], {"type": "kill", "scope": "app", "id": "whatsapp", "on": True}),
    (["kill", "all", "--off"], {"type": "kill", "scope": "all", "id": None, "on": False}),
    (["erase", "u-42"], {"type": "erase", "user_id": "u-42"}),
    (["tick", "2026-11-29T08:00:00Z"], {"type": "tick", "ts": "2026-11-29T08:00:00.000Z"}),
])
def test_control_builds_the_spec_events(command, event, capsys):
    assert main(["control", *command, "--dry-run"]) == 0
    assert orjson.loads(capsys.readouterr().out) == event


@pytest.mark.parametrize("command", [
    ["kill", "all", "maestro"], ["kill", "bot"], ["kill", "app", "telegram"],
    ["profile", "u-42", "--tz", "Mars/Olympus"],
])
def test_control_refuses_what_the_workers_would_refuse(command, capsys):
    assert main(["control", *command, "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith(f"relance control {command[0]}:")


# -- explain --------------------------------------------------------------------------------------

def test_a_worker_that_does_not_own_the_pair_says_which_partition_does():
    engine = SimpleNamespace(cores={}, owned=lambda: [])
    status, body = explain(Settings(), engine, RecentDecisions(), "u-42", "maestro")
    assert status == 404 and body["partition"] in range(4)
    assert "owned by another worker" in body["error"] and body["owned_partitions"] == []


def test_recent_decisions_keep_the_last_few_per_pair_and_a_bounded_number_of_pairs():
    recent = RecentDecisions(per_pair=2, max_pairs=2)

    def decision(user_id: str, json: bytes) -> EncodedDecision:
        return EncodedDecision(json, user_id, "b", "suppressed", "engaged", 0)
    for n in range(3):
        recent.add(decision("u1", orjson.dumps({"n": n})))
    recent.add(decision("u2", b"{}"))
    recent.add(decision("u3", b"{}"))
    assert recent.of("u1", "b") == [] and len(recent) == 2  # u1 was the least recently used
    recent.add(decision("u2", orjson.dumps({"n": 9})))
    assert recent.of("u2", "b") == [{}, {"n": 9}]
    assert recent.forget_users(lambda user: user != "u2") == 1 and recent.of("u2", "b") == []


def test_explain_without_a_worker_says_who_could_not_answer():
    result = subprocess.run([RELANCE, "explain", "u-42", "maestro", "--worker", "http://127.0.0.1:9"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "http://127.0.0.1:9: unreachable" in result.stderr


# -- replay ---------------------------------------------------------------------------------------

def test_replay_reads_a_file_writes_requests_and_decisions_and_reports_invalid_lines(tmp_path):
    # Spec section 8: FILE by path, --decisions PATH, invalid lines on standard error
    # (skipped, the rest goes on), settings from the environment.
    def inbound(n: int, ts: str) -> bytes:
        return orjson.dumps({"event_id": f"e{n}", "app": "facebook", "user_id": "u1", "bot_id": "maestro",
                             "direction": "inbound", "ts": ts, "text": "hi"})
    records = tmp_path / "records.jsonl"
    records.write_bytes(b"\n".join([
        inbound(1, "2026-11-28T09:00:00Z"),
        b"{not json",
        orjson.dumps({"event_id": "e2", "app": "facebook", "user_id": "u1", "bot_id": "maestro", "direction": "inbound"}),
        inbound(3, "2026-11-28T09:05:00Z"),
        b"",
        orjson.dumps({"type": "tick", "ts": "2026-11-28T09:10:00Z"}),
        orjson.dumps({"type": "kill", "scope": "galaxy", "on": True}),
    ]) + b"\n")
    decisions = tmp_path / "decisions.jsonl"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RELANCE_")},
           "RELANCE_MIN_INBOUND": "2", "RELANCE_IDLE_DELAY": "300", "RELANCE_QUIET_HOURS": "off"}
    result = subprocess.run([RELANCE, "replay", str(records), "--decisions", str(decisions)],
                            capture_output=True, env=env, timeout=60)
    assert result.returncode == 0
    [request] = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert (request["due_ts"], request["inbound_in_window"], request["app"]) == ("2026-11-28T09:10:00.000Z", 2, "facebook")
    [decision] = [orjson.loads(line) for line in decisions.read_bytes().splitlines()]
    assert (decision["followup_id"], decision["outcome"]) == (request["followup_id"], "emitted")
    errors = result.stderr.decode().splitlines()
    assert [line.split(":")[0] for line in errors] == ["line 2", "line 3", "line 7"]
    assert "not JSON" in errors[0] and "missing field text" in errors[1] and "scope" in errors[2]


def test_explain_is_off_without_a_token_and_answers_only_its_bearer():
    from agents.explain import refusal

    assert refusal(None, "Bearer anything")[0] == 403  # off: no token configured
    assert refusal("t0ken", None)[0] == 401
    assert refusal("t0ken", "Basic t0ken")[0] == 401
    assert refusal("t0ken", "Bearer t0ke")[0] == 401
    assert refusal("t0ken", "Bearer t0ken") is None and refusal("t0ken", "bearer  t0ken") is None
