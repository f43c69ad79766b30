"""One process taking send slots of one account as fast as the shared limiter lets it.

    python -m tests.ratelimit_client REDIS_URL APP ACCOUNT LIMIT WINDOW_MS COUNT

prints one JSON list: the admission time (µs, Redis clock) of each slot it got.
"""
from __future__ import annotations

import asyncio
import sys

import orjson
import redis.asyncio as aioredis

from streams.ratelimit import SendRateLimiter


async def take(url: str, app: str, account: str, limit: int, window_ms: int, count: int) -> list[int]:
    redis = aioredis.Redis.from_url(url)
    limiter = SendRateLimiter(redis)
    admitted = []
    try:
        while len(admitted) < count:
            ok, value = await limiter.try_acquire(app, account, limit, window_ms)
            if ok:
                admitted.append(value)
            else:
                await asyncio.sleep(value / 1e6)
    finally:
        await redis.aclose()
    return admitted


def main() -> None:
    url, app, account, limit, window_ms, count = sys.argv[1:7]
    times = asyncio.run(take(url, app, account, int(limit), int(window_ms), int(count)))
    sys.stdout.write(orjson.dumps(times).decode() + "\n")


if __name__ == "__main__":
    main()
