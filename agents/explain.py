"""The engine's ``GET /explain?user=U&bot=B``: why a pair did or did not get a follow-up.

The engine stage registers this page on its worker. It answers from the engine's own
memory: what the decision core of the partition that holds the user knows of the pair
(``DecisionCore.describe``), and the pair's last decision records. A worker that does not
own the user's partition answers 404 with the partition, so a client (``relance explain``)
asks the next worker; a worker without the engine role has no such page.

The last decisions are kept for a bounded number of pairs, and a user's are forgotten as
soon as the engine no longer holds the user (erased, expired, or partition moved): at
once when the pair is asked about, and within ``SWEEP_SECONDS`` otherwise.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Callable

import orjson

from domain.signature import token_matches
from foundation.settings import Settings
from schemas.records import EncodedDecision
from streams.ledger import Ledger
from streams.outbox import partition_for
from streams.wiring import Wiring

if TYPE_CHECKING:  # the engine imports this module to register the page
    from agents.engine import Engine

DECISIONS_PER_PAIR = 5
MAX_PAIRS = 20_000          # ~5 decisions of ~700 bytes each: about 70 MB at most
SWEEP_SECONDS = 10.0


class RecentDecisions:
    """The last few decision records (JSON bytes) of each pair, least recently used dropped first."""

    def __init__(self, per_pair: int = DECISIONS_PER_PAIR, max_pairs: int = MAX_PAIRS) -> None:
        self.per_pair, self.max_pairs = per_pair, max_pairs
        self._pairs: OrderedDict[tuple[str, str], deque[bytes]] = OrderedDict()

    def add(self, decision: EncodedDecision) -> None:
        key = (decision.user_id, decision.bot_id)
        kept = self._pairs.get(key)
        if kept is None:
            kept = self._pairs[key] = deque(maxlen=self.per_pair)
        self._pairs.move_to_end(key)
        kept.append(decision.json)
        while len(self._pairs) > self.max_pairs:
            self._pairs.popitem(last=False)

    def of(self, user_id: str, bot_id: str) -> list[dict]:
        return [orjson.loads(record) for record in self._pairs.get((user_id, bot_id), ())]

    def forget_users(self, keep: Callable[[str], bool]) -> int:
        """Drop every pair whose user fails ``keep(user_id)``; returns how many pairs went."""
        gone = [key for key in self._pairs if not keep(key[0])]
        for key in gone:
            del self._pairs[key]
        return len(gone)

    def __len__(self) -> int:
        return len(self._pairs)


def install_explain(wiring: Wiring, engine: Engine) -> RecentDecisions:
    """Register ``/explain`` on the worker's web server; returns the decision memory."""
    app = wiring.app
    recent = RecentDecisions()
    engine.decision_listeners.append(recent.add)

    @app.page("/explain")
    async def explain_page(web, request):
        refused = refusal(wiring.settings.explain_token, request.headers.get("Authorization"))
        if refused is not None:
            status, error = refused
            return web.json({"error": error}, status=status, headers={"WWW-Authenticate": "Bearer"})
        user_id, bot_id = request.query.get("user"), request.query.get("bot")
        if not user_id or not bot_id:
            return web.json({"error": "ask with ?user=USER_ID&bot=BOT_ID"}, status=400)
        status, body = explain(wiring.settings, engine, recent, user_id, bot_id)
        if status == 200 and engine.ledger is not None:
            await add_where_followups_stand(engine.ledger, body)
        return web.json(body, status=status)

    @app.timer(interval=SWEEP_SECONDS)
    async def forget_users_the_engine_dropped():
        recent.forget_users(engine.holds_user)

    return recent


async def add_where_followups_stand(ledger: Ledger, body: dict) -> None:
    """Each emitted decision's follow-up as the ledger holds it: sent, unknown, failed...
    and the furthest receipt (delivered, read): the end of its story (spec section 9)."""
    emitted = [decision for decision in body["decisions"] if decision["outcome"] == "emitted"]
    stands = await ledger.where_they_stand(body["user_id"], [decision["followup_id"] for decision in emitted])
    for decision in emitted:
        decision["followup"] = stands[decision["followup_id"]]


def explain(settings: Settings, engine: Engine, recent: RecentDecisions, user_id: str, bot_id: str) -> tuple[int, dict]:
    """(HTTP status, body) of the explain page for one pair."""
    partition = partition_for(user_id.encode(), settings.partitions)
    where = {"user_id": user_id, "bot_id": bot_id, "partition": partition}
    owned = sorted(engine.owned())
    core = engine.cores.get(partition)
    if partition not in owned or core is None:
        return 404, {**where, "owned_partitions": owned,
                     "error": f"partition {partition} of messages is owned by another worker"}
    described = core.describe(user_id, bot_id)
    if described["user"] is None:
        recent.forget_users(lambda held: held != user_id)  # erased or expired: nothing may remain
    return 200, {**where, **described, "rules": _rules(settings),
                 "decisions": recent.of(user_id, bot_id) if described["user"] is not None else []}


def _rules(settings: Settings) -> dict:
    return {
        "min_inbound": settings.min_inbound, "window_ms": settings.window,
        "idle_delay_ms": settings.idle_delay, "messaging_window_ms": settings.messaging_window,
        "clock": settings.clock,
    }


def refusal(token: str | None, authorization: str | None) -> tuple[int, str] | None:
    """Why ``/explain`` refuses a request, or None. It tells a person's age flag, time zone,
    opt-outs and decisions, so it answers only a bearer of ``explain_token`` (compared in
    constant time); without one set, it is off. /metrics and health stay open."""
    if not token:
        return 403, "explain is off on this worker: set explain_token (RELANCE_EXPLAIN_TOKEN or its _FILE)"
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token_matches(given.strip(), token):
        return 401, "explain needs Authorization: Bearer <explain_token>"
    return None
