"""Outages of what a worker depends on, logged as an operator wants to read them.

Every second each worker probes the Kafka broker (a TCP connection to a bootstrap server)
and Redis (a PING on a connection of its own, which never retries). An outage is logged
once when it starts, then at most every ``REMIND_S`` while it lasts, and once when it
ends, with how long it lasted: "kafka unreachable: ...", "kafka still unreachable after
40 s", "kafka reachable again after 52.3 s". The clients' own error lines (aiokafka's,
thousands a second in an outage) are bounded by ``foundation.logs.RepeatLimit``.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger("relance.outage")

PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 1.0
REMIND_S = 30.0


class Reachability:
    """What is known of one dependency, and the log lines its changes make."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic, remind_s: float = REMIND_S) -> None:
        self.name, self.clock, self.remind_s = name, clock, remind_s
        self.down_since: float | None = None
        self._reminded = 0.0

    def observe(self, error: str | None) -> None:
        """The latest probe's answer: None when the dependency answered, else why not."""
        now = self.clock()
        if error is None:
            if self.down_since is not None:
                log.warning("%s reachable again after %.1f s", self.name, now - self.down_since,
                            extra={"dependency": self.name, "outage_s": round(now - self.down_since, 1)})
                self.down_since = None
        elif self.down_since is None:
            self.down_since = self._reminded = now
            log.warning("%s unreachable: %s", self.name, error, extra={"dependency": self.name})
        elif now - self._reminded >= self.remind_s:
            self._reminded = now
            log.warning("%s still unreachable after %.0f s: %s", self.name, now - self.down_since, error,
                        extra={"dependency": self.name, "outage_s": round(now - self.down_since, 1)})


async def kafka_error(bootstrap: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if a bootstrap server accepts a connection, else the last refusal."""
    error = "no bootstrap server"
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            error = f"{server.strip()}: {exc.__class__.__name__}: {exc}".rstrip(": ")
            continue
        writer.close()
        return None
    return error


def redis_prober(url: str, timeout: float = PROBE_TIMEOUT_S) -> Callable[[], Awaitable[str | None]]:
    """A probe of Redis on a client of its own: one PING with short timeouts, tried again
    once at once on a fresh connection (the pooled one is stale after a restart)."""
    client = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                     retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError])

    async def redis_error() -> str | None:
        try:
            await client.ping()
        except Exception as exc:  # any failure to answer is the outage's reason
            return f"{exc.__class__.__name__}: {exc}".rstrip(": ")
        return None
    return redis_error
