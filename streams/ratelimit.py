"""The send rate of each business number, page and account, shared by every sender: Redis.

A sliding-window log per account, one sorted set of admission times: a send is admitted
when fewer than ``limit`` sends were admitted in the last ``window``, all in one Lua
script, on Redis's own clock (``TIME``). However many sender processes ask, admissions
never number more than ``limit`` in any span of ``window``. The window is a second plus
a slack: a request admitted at the end of one second and delayed on its way (a busy
event loop, the network) must not land in the platform's next second beside that
second's own. The sender spends that slack in two halves: a slot older than half of it
when its call is about to leave is replaced by a fresh one (``Slot.age_s``), so the other
half is left for the request's way out. The old slot, which no call used, is given back in
the same script: the limit bounds the calls that leave, and every one of them leaves on a
slot that was admitted against all the used ones before it.

A platform that says "slow down" (a throughput error) pauses the account for everyone.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

PREFIX = "relance:rate"
_JITTER_S = 0.005  # spreads the waiters of one account over a few milliseconds


def log_key(app: str, account_id: str) -> str:
    """Sorted set: admission times (µs, Redis clock) of the account's sends in the window."""
    return f"{PREFIX}:{{{app}:{account_id}}}"


def pause_key(app: str, account_id: str) -> str:
    """String with a time to live: the platform asked this account to slow down."""
    return f"{PREFIX}-pause:{{{app}:{account_id}}}"


# KEYS: log, pause. ARGV: limit, window µs, a slot given back unused ('' for none).
# Returns {1, admission time µs, slot} or {0, wait µs}.
# Times are written with %d: Lua turns a number into text with 14 significant digits,
# which would round today's microseconds to hundreds of them (and merge log entries).
_ACQUIRE_SCRIPT = """
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[1], ARGV[3]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return {0, paused * 1000} end
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now - window))
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  local stamp = string.format('%d', now)
  local slot = stamp .. ':' .. count
  redis.call('ZADD', KEYS[1], stamp, slot)
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return {1, now, slot}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now}
"""


@dataclass(frozen=True, slots=True)
class Slot:
    """One admission. ``asked_at`` (``time.monotonic``) is when the request that got it
    left, before Redis admitted it: an age counted from there is never too young."""

    waited: float   # seconds the caller waited for it
    asked_at: float
    entry: str      # its entry in the account's log

    def age_s(self) -> float:
        return time.monotonic() - self.asked_at


class SendRateLimiter:
    """Admissions per (app, account) at most ``limit`` per ``window_ms``, across processes
    (``domain.sendapi.rate_window`` turns a rate into the two)."""

    def __init__(self, redis, rng: random.Random | None = None) -> None:
        self.redis = redis
        self.rng = rng or random.Random()
        self._acquire = redis.register_script(_ACQUIRE_SCRIPT)

    async def try_acquire(self, app: str, account_id: str, limit: int, window_ms: int) -> tuple[bool, int]:
        """(True, admission time µs) or (False, µs to wait before asking again)."""
        admitted, value, _ = await self._ask(app, account_id, limit, window_ms, "")
        return admitted, value

    async def _ask(self, app: str, account_id: str, limit: int, window_ms: int, unused: str) -> tuple[bool, int, str]:
        answer = await self._acquire(keys=[log_key(app, account_id), pause_key(app, account_id)],
                                     args=[limit, window_ms * 1000, unused])
        return bool(answer[0]), int(answer[1]), answer[2].decode() if len(answer) > 2 else ""

    async def acquire(self, app: str, account_id: str, limit: int, window_ms: int, max_wait_s: float,
                      replacing: Slot | None = None) -> Slot | None:
        """A slot, or None when none came within ``max_wait_s`` (the caller puts the send
        off rather than hold a worker). ``replacing``: a slot no call used, given back."""
        started = time.monotonic()
        unused = replacing.entry if replacing is not None else ""
        while True:
            asked_at = time.monotonic()
            admitted, wait_us, entry = await self._ask(app, account_id, limit, window_ms, unused)
            unused = ""
            waited = time.monotonic() - started
            if admitted:
                return Slot(waited, asked_at, entry)
            pause = wait_us / 1e6 + self.rng.random() * _JITTER_S
            if waited + pause > max_wait_s:
                return None
            await asyncio.sleep(pause)

    async def pause(self, app: str, account_id: str, ms: int) -> None:
        """No admissions for the account during ``ms``: the platform asked to slow down."""
        await self.redis.set(pause_key(app, account_id), "1", px=max(1, ms))

