"""Outages are logged when they start, at a bounded rate while they last, and when they
end (issue 14); the real broker and Redis stopped and started are in tests/test_faults.py."""
from __future__ import annotations

import asyncio
import logging

from devstack.localstack import free_port
from streams.outage import Reachability, kafka_error, redis_prober


def test_an_outage_is_three_kinds_of_line_however_long_it_lasts(caplog):
    now = [0.0]
    kafka = Reachability("kafka", clock=lambda: now[0], remind_s=30)
    with caplog.at_level(logging.INFO, logger="relance.outage"):
        for second in range(0, 100):  # a probe a second: up, down for 90 s, up
            now[0] = float(second)
            kafka.observe("refused" if 5 <= second < 95 else None)
    assert [record.getMessage() for record in caplog.records] == [
        "kafka unreachable: refused",
        "kafka still unreachable after 30 s: refused",
        "kafka still unreachable after 60 s: refused",
        "kafka reachable again after 90.0 s",
    ]


def test_probes_say_why_a_closed_port_is_unreachable():
    port = free_port()
    error = asyncio.run(kafka_error(f"127.0.0.1:{port}"))
    assert error and str(port) in error and "ConnectionRefused" in error

    async def redis_answer():
        return await redis_prober(f"redis://127.0.0.1:{port}/0")()
    assert "ConnectionError" in asyncio.run(redis_answer())
