"""Every stop is bounded (issue 14): a worker exits within its grace period whatever the
broker does, and an interrupted test run leaves no process it started behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from devstack.localstack import LocalStack, free_port, pid_alive
from devstack.processes import RELANCE, WorkerProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parent.parent
GRACE_S = 3


def ready(worker: WorkerProcess) -> bool:
    worker.check_alive()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/health/ready", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def test_a_worker_whose_broker_is_gone_still_stops_within_its_grace_period(tmp_path):
    stack = LocalStack(tmp_path / "stack", kafka_port=free_port(), redis_port=free_port(), controller_port=free_port())
    stack.start()
    worker = WorkerProcess(tmp_path, ["ingest", "engine", "context", "generator"], broker=stack.bootstrap,
                           redis_url=stack.redis_url, data_dir=tmp_path / "data", clock="event",
                           shutdown_grace=f"{GRACE_S}s")
    try:
        worker.start()
        wait_for(lambda: ready(worker), 90, "the worker to be ready")
        feeding = subprocess.Popen([RELANCE, "simulate", "--clock", "event", "--users", "300", "--broker", stack.bootstrap],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: worker.metric("relance_events_in_total") > 0, 60, "traffic to flow")
        os.kill(stack.kafka.pid(), signal.SIGKILL)  # the broker is gone, mid-stream
        feeding.kill()
        feeding.wait()
        wait_for(lambda: stack.kafka.pid() is None, 30, "the broker to be gone")
        asked = time.monotonic()
        os.killpg(worker.pid, signal.SIGTERM)
        worker.process.wait(timeout=GRACE_S + 20)
        took = time.monotonic() - asked
        assert took <= GRACE_S + 5, f"stopped {took:.1f} s after SIGTERM, grace {GRACE_S} s"
    finally:
        worker.kill()
        stack.stop()


@pytest.mark.parametrize("interrupt, probe, processes", [
    (signal.SIGTERM, "test_wait_to_be_interrupted", 3), (signal.SIGINT, "test_wait_to_be_interrupted", 3),
    (signal.SIGTERM, "test_wait_to_be_interrupted_with_the_fault_rig", 7),  # tests/test_faults.py's rig
])
def test_an_interrupted_test_run_stops_every_process_it_started(tmp_path, interrupt, probe, processes):
    pid_file = tmp_path / "pids"
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{REPO / 'tests' / 'interrupt_probe.py'}::{probe}"],
        cwd=REPO, env={**os.environ, "PROBE_PIDS": str(pid_file)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: run.poll() is None and pid_file.exists() and pid_file.read_text(), 120,
                 "the probe's stack and worker to be up")
        pids = [int(pid) for pid in pid_file.read_text().split()]
        assert len(pids) == processes and all(pid_alive(pid) for pid in pids)
        run.send_signal(interrupt)
        run.wait(timeout=90)
        wait_for(lambda: not any(pid_alive(pid) for pid in pids), 30,
                 f"Kafka, Redis and the workers to be gone after {interrupt.name}")
    finally:
        if run.poll() is None:
            run.kill()
        output = run.stdout.read().decode(errors="replace") if run.stdout else ""
        run.wait()
    assert "Traceback" not in output or "KeyboardInterrupt" in output, output[-3000:]
