"""Waiting with a deadline: tests poll for a condition instead of sleeping a guessed time."""
from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Awaitable, Callable

POLL_INTERVAL = 0.05


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll predicate until it returns something truthy (returned); AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL_INTERVAL)


async def async_wait_for(predicate: Callable[[], Any | Awaitable[Any]], timeout: float = 30.0,
                         what: str = "condition") -> Any:
    """Like wait_for, for the event loop; predicate may be sync or async."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL)
