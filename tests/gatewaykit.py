"""What the gateway tests share: a gateway in this process, signed posts, raw topics read back.

Signatures here are computed with hashlib and hmac directly, from the spec's words
(``sha256=`` and the hex HMAC-SHA256 of the raw body under the app secret), not with
the code under test.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.gateway import Gateway
from devstack.localstack import free_port
from foundation.settings import Settings
from streams.topics import RAW_BY_APP, topic_name

APPS = ("whatsapp", "facebook", "instagram")
SECRET, NEXT_SECRET, TOKEN = "app-5ecret-current-7f3a", "app-5ecret-next-91bc", "verify-t0ken-4d2e"


def signature(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-Hub-Signature-256": signature(body, secret)}


def gateway_settings(bootstrap: str, prefix: str, **overrides) -> Settings:
    return Settings.from_mapping({
        "broker": bootstrap, "topic_prefix": prefix, "gateway_port": free_port(), "web_port": free_port(),
        "app_secret": f"{SECRET},{NEXT_SECRET}", "verify_token": TOKEN, **overrides})


@asynccontextmanager
async def running_gateway(settings: Settings, idle_timeout: float = 75.0,
                          ready_within: float = 30.0) -> AsyncIterator[Gateway]:
    """A gateway in this event loop, ready (Kafka reachable, raw topics there); always stopped."""
    gateway = Gateway(settings, idle_timeout=idle_timeout)
    await gateway.start()
    try:
        deadline = time.monotonic() + ready_within
        while ready_within and not await gateway.raw.ready():
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway not ready after {ready_within}s")
            await asyncio.sleep(0.1)
        yield gateway
    finally:
        await gateway.stop()


def url(settings: Settings, path: str) -> str:
    return f"http://127.0.0.1:{settings.gateway_port}{path}"


async def post(session: aiohttp.ClientSession, settings: Settings, path: str, body: bytes,
               headers: dict[str, str] | None = None) -> int:
    async with session.post(url(settings, path), data=body, headers=headers or {}) as response:
        await response.read()
        return response.status


async def read_raw(bootstrap: str, prefix: str, app: str, until: bytes, timeout: float = 30.0) -> list[bytes]:
    """Every value on ``raw.<app>`` from the start, up to and including the record ``until``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic_name(RAW_BY_APP[app], prefix), 0)])  # raw topics have one partition
        await consumer.seek_to_beginning()
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while until not in values:
            if time.monotonic() > deadline:
                raise AssertionError(f"{until!r} not on raw.{app} after {timeout}s; read {values!r}")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                values.extend(record.value for record in records)
        return values
    finally:
        await consumer.stop()
