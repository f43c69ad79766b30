"""A stand-in for the gateway (``relance gateway``, spec section 9, "Webhooks in") in tests
of the sender: checks each webhook's ``X-Hub-Signature-256`` and writes the body as it came
to ``raw.<app>``, answering 200 once Kafka has acknowledged it. The fake Graph API posts
its receipts here."""
from __future__ import annotations

import hashlib
import hmac

from aiohttp import web
from aiokafka import AIOKafkaProducer

from streams.topics import RAW_BY_APP, topic_name


class WebhookRelay:
    def __init__(self, bootstrap: str, prefix: str, app_secret: str) -> None:
        self.secret = app_secret.encode()
        self.topics = {app: topic_name(spec, prefix) for app, spec in RAW_BY_APP.items()}
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        self.relayed = 0
        self.refused = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> "WebhookRelay":
        await self.producer.start()
        app = web.Application()
        app.router.add_post("/webhooks/{app}", self._webhook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def _webhook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        expected = "sha256=" + hmac.new(self.secret, raw, hashlib.sha256).hexdigest()
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
