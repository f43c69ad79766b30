"""The gateway: the platforms' signed webhooks over HTTP, straight into ``raw.<app>``
(spec section 9, "Webhooks in").

Two HTTP servers in one process, no state shared with any other process:

- on ``gateway_port``, the only one exposed to the internet (through the TLS proxy),
  ``/webhooks/whatsapp``, ``/webhooks/facebook`` and ``/webhooks/instagram``: ``GET``
  answers the verification handshake; ``POST`` checks ``X-Hub-Signature-256`` and
  writes the body, byte for byte, to ``raw.<app>``;
- on ``web_port``, like every worker: ``/health/live``, ``/health/ready`` (Kafka
  reachable and the raw topics there) and ``/metrics``.

A post is answered 200 only once Kafka has acknowledged its record (``acks=all``), 503
when it did not within ``gateway_ack_timeout`` (the platform retries), 401 unsigned or
wrongly signed, 413 over ``gateway_max_body``, 408 when the body takes longer than
``gateway_read_timeout`` to arrive. A record that outlived its deadline stays in the
idempotent producer and is written once Kafka is back: with the platform's retry, the
topic then holds the body twice, and the engine drops the second copy by its
``(app, event_id)`` (spec section 4). While such a record waits, new posts get 503 at
once instead of queueing behind it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from domain.signature import SIGNATURE_HEADER, signature_matches, token_matches
from foundation.metrics import CONTENT_TYPE, Metrics, new_metrics, render
from foundation.settings import SettingError, Settings
from schemas.records import APPS
from streams.kafkaclient import KafkaSecurity, diagnose
from streams.kafkaloop import new_producer
from streams.topics import RAW_BY_APP, topic_name

log = logging.getLogger("relance.gateway")

ENDPOINTS = {f"/webhooks/{app}": app for app in APPS}
# Longer than the 60 s an nginx proxy keeps idle upstream connections, so the proxy never
# reuses one the gateway has just closed. aiohttp also closes a connection that has not
# sent a whole request's headers within it: the bound on a slow client's headers.
IDLE_TIMEOUT_SECONDS = 75.0
# A record's framing in a Kafka request (batch and record headers) on top of its body.
RECORD_FRAMING_BYTES = 16 * 1024
READY_PROBE_SECONDS = 2.0
PRODUCER_STOP_SECONDS = 10.0
CONNECT_RETRY_MAX_SECONDS = 10.0


class KafkaUnavailable(Exception):
    """Kafka did not acknowledge in time, or cannot be reached yet: the platform must retry."""


class RawTopics:
    """Webhook bodies to ``raw.<app>`` through one idempotent producer with ``acks=all``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.security = KafkaSecurity.of(settings)
        self.topics = {app: topic_name(spec, settings.topic_prefix) for app, spec in RAW_BY_APP.items()}
        self.timeout = settings.gateway_ack_timeout / 1000
        self.producer: AIOKafkaProducer | None = None
        self._overdue = 0   # records past their deadline, still waiting for Kafka

    async def connect(self, stop: asyncio.Event) -> None:
        """Start the producer, trying again until Kafka answers; until then posts get 503."""
        delay = 0.5
        while not stop.is_set():
            # linger 0: every post waits for its acknowledgement, and records queue up into
            # the next batch while one request is in flight anyway (measured: 1.3k posts/s
            # at p50 0.7 ms one at a time, against 150 at 7 ms with a 5 ms linger).
            producer = new_producer(
                self.settings.broker, self.security, linger_ms=0, request_timeout_ms=int(self.settings.gateway_ack_timeout),
                max_request_size=self.settings.gateway_max_body + RECORD_FRAMING_BYTES)
            try:
                await producer.start()
            except KafkaError as exc:
                await producer.stop()  # a producer that failed to start still holds a client
                log.warning("kafka not reachable: webhooks get 503 until it is",
                            extra={"broker": self.settings.broker, "error": str(exc),
                                   "why": await diagnose(self.settings.broker, self.security, self.timeout)})
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except asyncio.TimeoutError:
                    delay = min(delay * 2, CONNECT_RETRY_MAX_SECONDS)
                continue
            self.producer = producer
            log.info("kafka producer started", extra={"broker": self.settings.broker})
            return

    async def write(self, app: str, body: bytes) -> None:
        """Return once Kafka has acknowledged ``body`` on ``raw.<app>``.

        Raises KafkaUnavailable when it did not in time, and MessageSizeTooLargeError when
        the record can never fit.
        """
        if self.producer is None or self._overdue:
            raise KafkaUnavailable("kafka is not taking records")
        ack = None
        try:
            async with asyncio.timeout(self.timeout):
                # Cancelled inside send() (waiting for metadata or room), nothing is queued.
                ack = await self.producer.send(self.topics[app], body)
                await asyncio.shield(ack)
        except TimeoutError:
            if ack is not None and not ack.done():
                self._wait_for_late(ack)
            raise KafkaUnavailable("no acknowledgement in time") from None
        except MessageSizeTooLargeError:
            raise
        except KafkaError as exc:
            log.warning("kafka refused a webhook", extra={"app": app, "error": repr(exc)})
            raise KafkaUnavailable(type(exc).__name__) from None

    def _wait_for_late(self, ack: asyncio.Future) -> None:
        if self._overdue == 0:
            log.warning("kafka did not acknowledge in time: webhooks get 503 until it does",
                        extra={"timeout_seconds": self.timeout})
        self._overdue += 1
        ack.add_done_callback(self._acknowledged_late)

    def _acknowledged_late(self, ack: asyncio.Future) -> None:
        self._overdue -= 1
        if not ack.cancelled() and ack.exception() is not None:
            log.warning("a late record failed", extra={"error": repr(ack.exception())})
        if self._overdue == 0:
            log.warning("kafka acknowledges again: webhooks accepted")

    async def ready(self) -> bool:
        """Kafka answers a metadata request in time, and every raw topic is there."""
        if self.producer is None or self._overdue:
            return False
        try:
            async with asyncio.timeout(READY_PROBE_SECONDS):
                metadata = await self.producer.client.fetch_all_metadata()
        except (KafkaError, TimeoutError):
            return False
        return set(self.topics.values()) <= metadata.topics()

    async def close(self) -> None:
        if self.producer is None:
            return
        try:
            async with asyncio.timeout(PRODUCER_STOP_SECONDS):
                await self.producer.stop()  # sends what is queued: each one's post is waiting or got 503
        except TimeoutError:
            log.warning("kafka producer not stopped in time: records not yet acknowledged are "
                        "dropped; their posts were answered 503, so the platform sends them again")


# -- the webhooks server ----------------------------------------------------------------------

def _answer(status: int, text: str, close: bool = False) -> web.Response:
    headers = {"Connection": "close"} if close else None
    return web.Response(status=status, text=text, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _observed(metrics: Metrics) -> Callable:
    """Count every answer by app endpoint and status, and time it."""

    def count(app: str, status: int, started: float) -> None:
        metrics.gateway_requests.labels(app=app, status=str(status)).inc()
        metrics.gateway_request.labels(app=app).observe(time.perf_counter() - started)

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        app = ENDPOINTS.get(request.path, "other")
        started = time.perf_counter()
        with metrics.gateway_in_flight.track_inprogress():
            try:
                response = await handler(request)
            except web.HTTPException as exc:   # routing's 404 and 405
                count(app, exc.status, started)
                raise
            except asyncio.CancelledError:     # the server is stopping: no answer to count
                raise
            except Exception:
                count(app, 500, started)
                raise
        count(app, response.status, started)
        return response

    return observe


class Webhooks:
    """The handlers of one app's endpoint: the handshake and the signed posts."""

    def __init__(self, app: str, settings: Settings, raw: RawTopics, metrics: Metrics) -> None:
        self.app, self.raw, self.metrics = app, raw, metrics
        self.secrets, self.verify_token = settings.app_secret, settings.verify_token
        self.max_body = settings.gateway_max_body
        self.read_timeout = settings.gateway_read_timeout / 1000

    async def handshake(self, request: web.Request) -> web.Response:
        query = request.query
        if query.get("hub.mode") == "subscribe" and token_matches(query.get("hub.verify_token"), self.verify_token):
            return web.Response(text=query.get("hub.challenge", ""), headers={"X-Content-Type-Options": "nosniff"})
        return _answer(403, "forbidden")

    async def receive(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > self.max_body:
            return _answer(413, "too large", close=True)
        try:
            async with asyncio.timeout(self.read_timeout):
                body = await request.read()
        except TimeoutError:
            return _answer(408, "too slow", close=True)
        except web.HTTPRequestEntityTooLarge:  # no Content-Length (chunked), or a false one
            return _answer(413, "too large", close=True)
        except (HttpProcessingError, ConnectionError):  # a broken body: bad chunks, cut short
            return _answer(400, "bad request", close=True)
        signatures = request.headers.getall(SIGNATURE_HEADER, [])
        if len(signatures) != 1 or not signature_matches(body, signatures[0], self.secrets):
            reason = "missing" if not signatures else "mismatch"
            self.metrics.gateway_signature_failures.labels(app=self.app, reason=reason).inc()
            return _answer(401, "unauthorized")
        try:
            await self.raw.write(self.app, body)
        except MessageSizeTooLargeError:  # over what the topic takes: retrying would not help
            return _answer(413, "too large")
        except KafkaUnavailable:
            return _answer(503, "unavailable")
        self.metrics.gateway_forwarded_bytes.labels(app=self.app).inc(len(body))
        return _answer(200, "ok")


def webhooks_app(settings: Settings, raw: RawTopics, metrics: Metrics) -> web.Application:
    """The public server: one endpoint per app, nothing else."""
    application = web.Application(client_max_size=settings.gateway_max_body, middlewares=[_observed(metrics)])
    for path, app in ENDPOINTS.items():
        webhooks = Webhooks(app, settings, raw, metrics)
        resource = application.router.add_resource(path)
        resource.add_route("GET", webhooks.handshake)
        resource.add_route("POST", webhooks.receive)
    return application


def operations_app(raw: RawTopics, metrics: Metrics) -> web.Application:
    """Health and metrics, on the internal port every worker serves them on."""

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(request: web.Request) -> web.Response:
        ok = await raw.ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"live": True, "ready": await raw.ready()})

    async def metrics_page(request: web.Request) -> web.Response:
        body, _ = render(metrics)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    application = web.Application()
    application.router.add_get("/health/live", live)
    application.router.add_get("/health/ready", ready)
    application.router.add_get("/health", health)
    application.router.add_get("/metrics", metrics_page)
    return application


async def start_server(application: web.Application, port: int, *, reuse_port: bool = False,
                       shutdown_timeout: float = 10.0,
                       idle_timeout: float = IDLE_TIMEOUT_SECONDS) -> web.AppRunner:
    """Serve ``application`` on every interface; ``reuse_port`` lets several processes share the port."""
    runner = web.AppRunner(application, access_log=None, keepalive_timeout=idle_timeout,
                           shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, "0.0.0.0", port, reuse_port=reuse_port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


class Gateway:
    """What ``relance gateway`` runs: both servers and the producer, started and stopped together."""

    def __init__(self, settings: Settings, idle_timeout: float = IDLE_TIMEOUT_SECONDS) -> None:
        if not settings.app_secret:
            raise SettingError("setting app_secret: the gateway needs the Meta app secret to check "
                               "signatures: set RELANCE_APP_SECRET or RELANCE_APP_SECRET_FILE")
        self.settings, self.idle_timeout = settings, idle_timeout
        self.metrics = new_metrics()
        self.raw = RawTopics(settings)
        self.runners: list[web.AppRunner] = []
        self._stop = asyncio.Event()
        self._connecting: asyncio.Task | None = None

    async def start(self) -> None:
        settings = self.settings
        if not settings.verify_token:
            log.warning("no verify token (RELANCE_VERIFY_TOKEN): every verification handshake gets 403")
        self._connecting = asyncio.create_task(self.raw.connect(self._stop))
        # A request in flight when the gateway stops may wait for its acknowledgement.
        shutdown = settings.gateway_ack_timeout / 1000 + 1
        try:
            self.runners.append(await start_server(
                webhooks_app(settings, self.raw, self.metrics), settings.gateway_port,
                reuse_port=True, shutdown_timeout=shutdown, idle_timeout=self.idle_timeout))
            self.runners.append(await start_server(operations_app(self.raw, self.metrics), settings.web_port))
        except BaseException:
            await self.stop()
            raise
        log.info("gateway listening", extra={
            "webhooks_port": settings.gateway_port, "web_port": settings.web_port,
            "topics": sorted(self.raw.topics.values()), "app_secrets": len(settings.app_secret)})

    async def stop(self) -> None:
        """Refuse new connections, let requests in flight finish, then stop the producer."""
        self._stop.set()
        for runner in self.runners:
            await runner.cleanup()
        self.runners.clear()
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        await self.raw.close()
