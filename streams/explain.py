"""``GET /explain?user=U&bot=B``: why a pair did or did not get a follow-up, asked of a live worker.

The page answers from the engine's own memory: the pair's state in the decision core of
the partition that holds the user, the user's profile, opt-outs and cap history, and the
pair's last decision records. A worker that does not own the user's partition answers
404 with the partition, so a client (``relance explain``) asks the next worker.

The last decisions come from the engine's ``decision_listeners``. They are kept for a
bounded number of pairs, and a user's are forgotten as soon as the engine no longer holds
the user (erased, expired, or partition moved): at once when the pair is asked about,
and within ``SWEEP_SECONDS`` otherwise.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

import orjson

from schemas.records import format_ts
from streams.app import Wiring
from streams.outbox import partition_for

DECISIONS_PER_PAIR = 5
MAX_PAIRS = 20_000          # ~5 decisions of ~700 bytes each: about 70 MB at most
SWEEP_SECONDS = 10.0


class RecentDecisions:
    """The last few decision records (JSON bytes) of each pair, least recently used dropped first."""

    def __init__(self, per_pair: int = DECISIONS_PER_PAIR, max_pairs: int = MAX_PAIRS) -> None:
        self.per_pair, self.max_pairs = per_pair, max_pairs
        self._pairs: OrderedDict[tuple[str, str], deque[bytes]] = OrderedDict()

    def add(self, user_id: str, bot_id: str, record: bytes) -> None:
        key = (user_id, bot_id)
        kept = self._pairs.get(key)
        if kept is None:
            kept = self._pairs[key] = deque(maxlen=self.per_pair)
        self._pairs.move_to_end(key)
        kept.append(record)
        while len(self._pairs) > self.max_pairs:
            self._pairs.popitem(last=False)

    def of(self, user_id: str, bot_id: str) -> list[dict]:
        return [orjson.loads(record) for record in self._pairs.get((user_id, bot_id), ())]

    def forget_users(self, keep: Any) -> int:
        """Drop every pair whose user fails ``keep(user_id)``; returns how many pairs went."""
        gone = [key for key in self._pairs if not keep(key[0])]
        for key in gone:
            del self._pairs[key]
        return len(gone)

    def __len__(self) -> int:
        return len(self._pairs)


def install_explain(wiring: Wiring) -> RecentDecisions:
    """Register ``/explain`` on the worker's web server; returns the decision memory."""
    app = wiring.app
    recent = RecentDecisions()
    if wiring.engine is not None:  # a worker without the engine role answers 404
        wiring.engine.decision_listeners.append(
            lambda decision, encoded: recent.add(decision.user_id, decision.bot_id, encoded))

    @app.page("/explain")
    async def explain_page(web, request):
        user_id, bot_id = request.query.get("user"), request.query.get("bot")
        if not user_id or not bot_id:
            return web.json({"error": "ask with ?user=USER_ID&bot=BOT_ID"}, status=400)
        status, body = explain(wiring, recent, user_id, bot_id)
        return web.json(body, status=status)

    @app.timer(interval=SWEEP_SECONDS)
    async def forget_users_the_engine_dropped():
        engine = wiring.engine
        if engine is not None:
            recent.forget_users(lambda user_id: any(core.has_user(user_id) for core in engine.cores.values()))

    return recent


def explain(wiring: Wiring, recent: RecentDecisions, user_id: str, bot_id: str) -> tuple[int, dict]:
    """(HTTP status, body) of the explain page for one pair."""
    settings = wiring.settings
    partition = partition_for(user_id.encode(), settings.partitions)
    where = {"user_id": user_id, "bot_id": bot_id, "partition": partition}
    engine = wiring.engine
    if engine is None:
        return 404, {**where, "error": "this worker runs no engine role"}
    owned = sorted(engine.owned())
    if partition not in owned:
        return 404, {**where, "owned_partitions": owned,
                     "error": f"partition {partition} of messages is owned by another worker"}
    core = engine.cores.get(partition)
    user = core.user(user_id) if core is not None else None
    if user is None:
        recent.forget_users(lambda held: held != user_id)  # erased or expired: nothing may remain
        return 200, {**where, "clock": _ts(core.clock if core else None), "rules": _rules(settings),
                     "known": False, "user": None, "pair": None, "decisions": []}
    pair = user.pairs.get(bot_id)
    return 200, {
        **where, "clock": _ts(core.clock), "rules": _rules(settings), "known": pair is not None,
        "kills": core.kills.to_dict(), "user": _user(user),
        "pair": _pair(pair, core.clock, settings.window) if pair is not None else None,
        "decisions": recent.of(user_id, bot_id),
    }


def _rules(settings) -> dict:
    return {
        "min_inbound": settings.min_inbound, "window_ms": settings.window,
        "idle_delay_ms": settings.idle_delay, "messaging_window_ms": settings.messaging_window,
        "clock": settings.clock,
    }


def _user(user) -> dict:
    return {
        "tz": user.tz, "minor": user.minor, "opt_out_all": user.opt_out_all,
        "opt_out_bots": sorted(user.opt_out_bots), "opt_in_bots": sorted(user.opt_in_bots),
        "distress_until": _ts(user.distress_until if user.distress_until >= 0 else None),
        "sends": [_ts(ts) for ts in user.sends], "bots": sorted(user.pairs),
    }


def _pair(pair, clock: int, window: int) -> dict:
    in_window = [ts for ts in pair.inbound_times() if ts > clock - window]
    return {
        "app": pair.app,
        "inbound_in_window": [_ts(ts) for ts in in_window],
        "last_ts": _ts(pair.last_ts if pair.last_ts >= 0 else None),
        "last_inbound_ts": _ts(pair.last_inbound_ts if pair.last_inbound_ts >= 0 else None),
        "due": _ts(pair.due), "emitted_at": _ts(pair.emitted_at),
    }


def _ts(ms: int | None) -> str | None:
    return None if ms is None or ms < 0 else format_ts(ms)
