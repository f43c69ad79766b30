"""`relance demo`, the README's main command: it delivers follow-ups, then leaves nothing running."""
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
    assert re.search(r"^follow-up delivered ", result.stdout, re.M), output[-4000:]
    delivered = int(re.search(r"summary: (\d+) follow-ups delivered", result.stdout).group(1))
    assert delivered >= 1
    # The webhooks reached Kafka only through the gateway, signed and accepted.
    assert int(re.findall(r"(\d+) webhooks accepted by the gateway", result.stdout)[-1]) > 0
    started = [int(pid) for pid in re.findall(r"pid (\d+)", result.stdout)]
    assert len(started) == 6, output  # redis, kafka, two workers, the gateway, the simulator
    assert [pid for pid in started if pid_alive(pid)] == []
    assert not any(port_in_use(port) for port in
                   (kafka_port, kafka_port + 1, redis_port, web_port, web_port + 1, gateway_port))
