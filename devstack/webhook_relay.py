"""A stand-in for the gateway (``relance gateway``, spec section 9, "Webhooks in"), for the
sender's tests and the demo while the gateway is not in this tree: checks each webhook's
``X-Hub-Signature-256`` and writes the body as it came to ``raw.<app>``, answering 200 once
Kafka has acknowledged it. The fake Graph API posts its receipts here, on the gateway's own
paths (``/webhooks/<app>``), so the real gateway takes its place unchanged.

As a process (prints ``ready <url>`` once it listens; the secret is RELANCE_APP_SECRET)::

    python -m devstack.webhook_relay --port 8080 --broker 127.0.0.1:19092 --topic-prefix demo-
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import signal

from aiohttp import web
from aiokafka import AIOKafkaProducer

from streams.topics import RAW_BY_APP, topic_name


def hub_signature(secret: bytes, body: bytes) -> str:
    """``X-Hub-Signature-256`` of a body: ``sha256=`` and the hex HMAC-SHA256 under the app secret."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookRelay:
    def __init__(self, bootstrap: str, prefix: str, app_secret: str) -> None:
        self.secret = app_secret.encode()
        self.topics = {app: topic_name(spec, prefix) for app, spec in RAW_BY_APP.items()}
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        self.relayed = 0
        self.refused = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> "WebhookRelay":
        await self.producer.start()
        app = web.Application()
        app.router.add_post("/webhooks/{app}", self._webhook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def _webhook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        expected = hub_signature(self.secret, raw)
        topic = self.topics.get(request.match_info["app"])
        if topic is None or not hmac.compare_digest(request.headers.get("X-Hub-Signature-256", ""), expected):
            self.refused += 1
            return web.Response(status=401)
        await self.producer.send_and_wait(topic, raw)
        self.relayed += 1
        return web.Response(status=200)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.producer.stop()


async def _serve(args: argparse.Namespace) -> None:
    secret = os.environ.get("RELANCE_APP_SECRET", "").split(",")[0].strip()
    relay = await WebhookRelay(args.broker, args.topic_prefix, secret).start(args.port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    try:
        print(f"ready {relay.url}", flush=True)
        await stopping.wait()
    finally:
        await relay.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Signed webhooks to raw.<app>: a stand-in for the gateway.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--broker", default="127.0.0.1:19092")
    parser.add_argument("--topic-prefix", default="")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
