"""The shared send-rate limiter (streams/ratelimit.py) on a real Redis: spec section 9,
"a send rate that the sender never exceeds, whatever the number of sender workers"."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from domain.sendapi import rate_window
from streams.ratelimit import SendRateLimiter

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parent.parent


def most_in_any_window(times_us: list[int], window_us: int) -> int:
    """The largest number of admissions inside any span of ``window_us`` (half-open)."""
    times = sorted(times_us)
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= window_us:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_the_window_counter_counts():
    assert most_in_any_window([0, 10, 20, 30], 25) == 3
    assert most_in_any_window([0, 25, 50], 25) == 1


def test_two_processes_never_exceed_the_limit_together(redis_db):
    limit, window_ms, each = 40, 250, 120
    started = time.monotonic()
    processes = [subprocess.Popen([sys.executable, "-m", "tests.ratelimit_client", redis_db, "whatsapp", "106540352242922",
                                   str(limit), str(window_ms), str(each)], cwd=ROOT, stdout=subprocess.PIPE)
                 for _ in range(2)]
    try:
        outputs = [process.communicate(timeout=60)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    elapsed = time.monotonic() - started
    admitted = [orjson.loads(output) for output in outputs]
    assert [len(times) for times in admitted] == [each, each]
    merged = admitted[0] + admitted[1]
    assert most_in_any_window(merged, window_ms * 1000) <= limit
    # And the limit is used, not starved: 240 slots at 40 per 250 ms take about 1.5 s.
    spread_s = (max(merged) - min(merged)) / 1e6
    print(f"\n240 admissions from 2 processes over {spread_s:.2f}s ({elapsed:.1f}s with start-up), "
          f"at most {most_in_any_window(merged, window_ms * 1000)} in any {window_ms} ms")
    assert spread_s < 2 * window_ms / 1000 * (2 * each / limit)


async def test_a_paused_account_waits_and_others_do_not(redis_client):
    limiter = SendRateLimiter(redis_client)
    await limiter.pause("whatsapp", "A", 300)
    ok, wait_us = await limiter.try_acquire("whatsapp", "A", 10, 1000)
    assert not ok and 0 < wait_us <= 300_000
    assert (await limiter.try_acquire("whatsapp", "B", 10, 1000))[0]
    assert (await limiter.try_acquire("facebook", "A", 10, 1000))[0]  # the same id on another app
    slot = await limiter.acquire("whatsapp", "A", 10, 1000, max_wait_s=2)
    assert slot is not None and 0.1 < slot.waited < 1.0
    assert slot.age_s() < slot.waited  # aged from the request that got it, not from the first ask


async def test_acquire_gives_up_rather_than_wait_too_long(redis_client):
    limiter = SendRateLimiter(redis_client)
    assert await limiter.acquire("facebook", "P", 1, 10_000, max_wait_s=1) is not None
    assert await limiter.acquire("facebook", "P", 1, 10_000, max_wait_s=0.2) is None


def test_rates_become_a_count_per_window_with_slack():
    assert rate_window(80, 100) == (80, 1100)
    assert rate_window(300.7, 0) == (300, 1000)
    assert rate_window(0.5, 100) == (1, 2100)


async def test_a_slot_given_back_unused_makes_room_for_one_fresh_slot_only(redis_client):
    """A send held up past the slack takes a fresh slot and gives its old one back: the
    old one never carried a call, so the account's limit still bounds the calls."""
    limiter = SendRateLimiter(redis_client)
    held = await limiter.acquire("whatsapp", "H", 1, 10_000, max_wait_s=1)
    assert held is not None
    fresh = await limiter.acquire("whatsapp", "H", 1, 10_000, max_wait_s=0.2, replacing=held)
    assert fresh is not None and fresh.entry != held.entry
    assert await limiter.acquire("whatsapp", "H", 1, 10_000, max_wait_s=0.2) is None  # one call in the window
