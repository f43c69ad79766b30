"""Not collected by the suite (no test_ prefix): tests/test_stops.py runs it in a pytest of
its own and interrupts that pytest while the stack and a worker are up."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from devstack.processes import WorkerProcess
from tests.faultkit import FaultRig


@pytest.mark.kafka
def test_wait_to_be_interrupted(stack, topic_prefix, tmp_path):
    worker = WorkerProcess(tmp_path, ["ingest"], broker=stack.bootstrap, redis_url=stack.redis_url,
                           topic_prefix=topic_prefix, data_dir=tmp_path / "data").start()
    pids = [stack.kafka.pid(), stack.redis.pid(), worker.pid]
    Path(os.environ["PROBE_PIDS"]).write_text(" ".join(map(str, pids)))
    threading.Event().wait(300)  # until the outer test interrupts this pytest


def test_wait_to_be_interrupted_with_the_fault_rig(tmp_path):
    """The fault suite's rig: its own Kafka and Redis, a worker per stage, and the fakes in a thread."""
    rig = FaultRig(tmp_path)
    try:
        rig.start()
        pids = [rig.stack.kafka.pid(), rig.stack.redis.pid(), *(worker.pid for worker in rig.workers.values())]
        Path(os.environ["PROBE_PIDS"]).write_text(" ".join(map(str, pids)))
        threading.Event().wait(300)
    finally:
        rig.stop()
