"""Everything Relance keeps in Redis about a user, named here, so erasure misses nothing.

Each stage erases what it holds when the erase record reaches it in its own ordered
stream: the context stage its context keys, the engine its ledger, leaving the erasure's
tombstone (``streams/ledger.py``: named by a digest of the user, not the user).

Every key carries the user in a hash tag (``{user}``), so a Redis Cluster keeps one
user's keys on one node and an erasure is one multi-key command.
"""
from __future__ import annotations

PREFIX = "relance"


def context_key(user_id: str, bot_id: str) -> str:
    """List: the pair's last messages (JSON), newest last, trimmed on write."""
    return f"{PREFIX}:ctx:{{{user_id}}}:{bot_id}"


def context_bots_key(user_id: str) -> str:
    """Set: the bots that have a context list for this user (to find them on erasure)."""
    return f"{PREFIX}:ctx-bots:{{{user_id}}}"


def last_inbound_key(user_id: str) -> str:
    """Hash: bot_id -> ts (ms) of the user's latest inbound message, for the stale check."""
    return f"{PREFIX}:last-in:{{{user_id}}}"


def safety_key(user_id: str) -> str:
    """String: the user's safety facts (opt-outs, age, distress cool-off) as
    ``domain.lastcheck.mirror_of`` encodes them, for the last-moment check. No expiry:
    an opt-out lasts until an opt-in."""
    return f"{PREFIX}:safety:{{{user_id}}}"


def ledger_key(user_id: str) -> str:
    """Hash: followup_id -> due ts, for every follow-up request published (emission ledger)."""
    return f"{PREFIX}:ledger:{{{user_id}}}"


KILLS_KEY = f"{PREFIX}:kills"  # Hash: "all" / "bot:<id>" / "app:<name>" -> "1"; not personal


async def context_stage_keys(redis, user_id: str) -> list[str]:
    """The keys the context stage holds for the user: its contexts, their bots, last
    inbound, safety facts."""
    bots = await redis.smembers(context_bots_key(user_id))
    return [context_bots_key(user_id), last_inbound_key(user_id), safety_key(user_id)] + [
        context_key(user_id, bot.decode() if isinstance(bot, bytes) else bot) for bot in bots]
