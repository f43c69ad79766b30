"""`relance demo`, the README's main command: it writes and sends follow-ups, gets their
receipts back, then leaves nothing running."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.localstack import free_port, pid_alive, port_in_use

pytestmark = pytest.mark.kafka

RELANCE = str(Path(sys.executable).with_name("relance"))


def free_port_pair() -> int:
    """A port that is free, and so is the next one (Kafka's controller; the generator worker)."""
    while True:
        port = free_port()
        if port < 65535 and not port_in_use(port + 1):
            return port


def test_demo_delivers_followups_and_stops_everything_it_started(tmp_path):
    kafka_port, redis_port, web_port, gateway_port = free_port_pair(), free_port(), free_port_pair(), free_port()
    result = subprocess.run(
        [RELANCE, "demo", "--duration", "60", "--broker", f"127.0.0.1:{kafka_port}",
         "--redis-url", f"redis://127.0.0.1:{redis_port}/0", "--web-port", str(web_port),
         "--gateway-port", str(gateway_port), "--state-dir", str(tmp_path / "stack")],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "kafka up in" in output and "redis up in" in output  # it started its own stack
    assert re.search(r"^follow-up written ", result.stdout, re.M), output[-4000:]
    summary = re.search(r"summary: (\d+) follow-ups written, (\d+) sent, (\d+) delivered, (\d+) read", result.stdout)
    written, sent, delivered, read = (int(n) for n in summary.groups())
    # Written, sent to the (fake) platform, and its receipts back through the gateway (spec section 9).
    assert written >= 1 and sent >= 1 and delivered >= 1, summary.group(0)
    # The webhooks reached Kafka only through the gateway, signed and accepted.
    assert int(re.findall(r"(\d+) webhooks accepted by the gateway", result.stdout)[-1]) > 0
    started = [int(pid) for pid in re.findall(r"pid (\d+)", result.stdout)]
    assert len(started) == 7, output  # redis, kafka, the fake Graph API, two workers, the gateway, the simulator
    assert [pid for pid in started if pid_alive(pid)] == []
    assert not any(port_in_use(port) for port in
                   (kafka_port, kafka_port + 1, redis_port, web_port, web_port + 1, gateway_port))
