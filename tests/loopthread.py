"""An event loop in a thread of its own, for fakes that must answer (and note when calls
arrive) while the test blocks or its own loop is busy."""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Coroutine


class Background:
    """An event loop in a thread of its own: the fakes answer and the readers read while
    the test blocks (starting a broker, waiting for a condition)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-background", daemon=True)
        self.thread.start()

    def submit(self, coroutine: Coroutine) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def call(self, coroutine: Coroutine, timeout: float = 120) -> Any:
        return self.submit(coroutine).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
