"""Kafka administration: the catalog's topics created on a broker, and a sync bridge for CLI code.

``relance worker``, ``relance topics create``, the local stack and the test fixtures all
create topics through here, so a topic is made with the same partitions and configuration
whoever makes it.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from streams.kafkaclient import PLAINTEXT, KafkaSecurity, start
from streams.topics import CATALOG, TopicSpec, topic_name

T = TypeVar("T")


class TopicError(RuntimeError):
    """A topic could not be created or did not become visible in time."""


def run_sync(make_coro: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine from sync code, even when the caller already has a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    result: list[Any] = []

    def worker() -> None:
        try:
            result.append(("ok", asyncio.run(make_coro())))
        except BaseException as exc:  # handed back to the caller's thread
            result.append(("error", exc))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    kind, value = result[0]
    if kind == "error":
        raise value
    return value



async def _admin(bootstrap: str, security: KafkaSecurity):
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, **security.options())
    await asyncio.wait_for(start(admin, bootstrap, security), 15)
    return admin


async def list_topics(bootstrap: str, security: KafkaSecurity = PLAINTEXT) -> list[str]:
    admin = await _admin(bootstrap, security)
    try:
        return await asyncio.wait_for(admin.list_topics(), 5)
    finally:
        await admin.close()


async def acreate_topics(bootstrap: str, specs: Iterable[TopicSpec] = CATALOG,
                         prefix: str = "", partitions: int = 4,
                         timeout: float = 30.0, security: KafkaSecurity = PLAINTEXT) -> list[str]:
    """Create the topics that do not exist yet; return every name. Existing ones are fine."""
    from aiokafka.admin import NewTopic

    specs = list(specs)
    names = [topic_name(spec, prefix) for spec in specs]
    admin = await _admin(bootstrap, security)
    try:
        existing = set(await admin.list_topics())
        # Keyed topics get the partition count; the others are not split by user, so one.
        missing = [NewTopic(name, partitions if spec.keyed else 1, 1, topic_configs=spec.config())
                   for spec, name in zip(specs, names) if name not in existing]
        if missing:
            response = await admin.create_topics(missing, timeout_ms=int(timeout * 1000))
            for name, code, *message in response.topic_errors:
                if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (someone was quicker)
                    raise TopicError(f"could not create topic {name}: error {code} {message}")
        deadline = time.monotonic() + timeout
        while not set(names) <= set(await admin.list_topics()):  # metadata catches up
            if time.monotonic() > deadline:
                raise TopicError(f"topics not visible after {timeout:.0f}s: {names}")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    return names


def create_topics(bootstrap: str, specs: Iterable[TopicSpec] = CATALOG, prefix: str = "",
                  partitions: int = 4, security: KafkaSecurity = PLAINTEXT) -> list[str]:
    """Sync form of ``acreate_topics``, for CLI code and fixtures."""
    return run_sync(lambda: acreate_topics(bootstrap, specs, prefix, partitions, security=security))
