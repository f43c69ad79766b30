"""``relance normalize`` as other programs run it: a subprocess, stdin to stdout."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from schemas.records import parse_message

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "webhooks"
RELANCE = Path(sys.executable).parent / "relance"


def run_normalize(app: str, stdin: bytes, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELANCE_")}
    return subprocess.run(
        [str(RELANCE), "normalize", "--app", app, *extra],
        input=stdin, capture_output=True, cwd=ROOT, env=env, timeout=60,
    )


def one_line(name: str) -> bytes:
    return orjson.dumps(orjson.loads((FIXTURES / f"{name}.json").read_bytes()))


def test_normalize_writes_events_and_reports_bad_lines_with_their_number():
    stdin = b"\n".join([
        one_line("whatsapp_text"),
        b"this is not JSON",
        one_line("whatsapp_statuses"),
        b"",
        one_line("whatsapp_unknown_number"),
        one_line("whatsapp_multi"),
    ]) + b"\n"
    done = run_normalize("whatsapp", stdin)
    assert done.returncode == 0
    events = [parse_message(orjson.loads(line)) for line in done.stdout.splitlines()]
    assert [e.user_id for e in events] == ["16505551234", "16505551234", "16505559876", "34612345678"]
    report = done.stderr.decode().splitlines()
    assert report[0].startswith("line 2: not JSON")
    assert report[1] == "line 5: entry[0].changes[0].value.messages[0]: no bot in the registry owns whatsapp phone_number_id 123"
    assert len(report) == 2


def test_normalize_reads_the_registry_given_on_the_command_line(tmp_path):
    registry = tmp_path / "bots.toml"
    registry.write_text(
        '[[bot]]\nid = "solo"\nname = "Solo"\npersona = "A test bot."\nlanguage = "en"\n'
        'facebook = ["112233445566778"]\n', encoding="utf-8",
    )
    done = run_normalize("facebook", one_line("facebook_text") + b"\n", "--registry", str(registry))
    assert done.returncode == 0
    assert orjson.loads(done.stdout)["bot_id"] == "solo"


def test_normalize_with_an_unusable_registry_exits_2_and_says_why(tmp_path):
    done = run_normalize("facebook", b"", "--registry", str(tmp_path / "absent.toml"))
    assert done.returncode == 2
    assert "no such registry file" in done.stderr.decode()
