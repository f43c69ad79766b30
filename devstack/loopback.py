"""A small HTTP server on 127.0.0.1 for the stand-ins of outside services (the fake Graph
API here, the fake LLM in the tests): routes from the subclass, the lifecycle here."""
from __future__ import annotations

import asyncio
import signal
from typing import Any

from aiohttp import web


class LoopbackServer:
    """``start()`` listens on ``port`` (0: a free one, then the one taken); ``stop()`` stops
    listening and keeps what the server counted, so it can ``start()`` again on that port."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._runner: web.AppRunner | None = None

    base_url: str  # the subclass says where it answers

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self.routes(app)
        # handler_cancellation: a request the client gave up on (timeout) stops here too;
        # a short shutdown does not wait for slow handlers.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def serve_until_signalled(self) -> None:
        """As a process of its own: serve until SIGINT or SIGTERM, after saying where."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        async with self:
            print(f"ready {self.base_url}", flush=True)
            await stopping.wait()

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()
