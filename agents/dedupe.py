"""Duplicate webhooks: platforms re-send, and two events with one (app, event_id) are one.

``SeenEvents`` is the in-memory part: pure, bounded, no I/O. It remembers each key with
the event's ``ts`` and forgets keys older than ``horizon_ms`` behind the newest ``ts`` it
has seen. The horizon is the spec's window W: an event older than the clock minus W
changes nothing anyway (spec section 4), so forgetting it cannot let a duplicate count.
The newest ``ts`` seen is never ahead of the engine's clock, so this forgets no sooner
than the engine would.

Memory is bounded by ``max_keys``: past it, the keys with the oldest ``ts`` go first, and
``evicted_early`` counts keys dropped while still inside the horizon (a duplicate of one of
those would pass; a metric on it tells the operator to raise the bound).
"""
from __future__ import annotations

import heapq

__all__ = ["SeenEvents"]


class SeenEvents:
    __slots__ = ("horizon_ms", "max_keys", "newest_ts", "evicted_early", "_ts_by_key", "_by_age")

    def __init__(self, horizon_ms: int, max_keys: int = 1_000_000):
        if horizon_ms <= 0 or max_keys <= 0:
            raise ValueError("horizon_ms and max_keys must be positive")
        self.horizon_ms = horizon_ms
        self.max_keys = max_keys
        self.newest_ts: int | None = None
        self.evicted_early = 0
        self._ts_by_key: dict[tuple[str, str], int] = {}
        # (ts, app, event_id), oldest first; each remembered key is in it exactly once.
        self._by_age: list[tuple[int, str, str]] = []

    def __len__(self) -> int:
        return len(self._ts_by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._ts_by_key

    def seen_before(self, app: str, event_id: str, ts: int) -> bool:
        """True if (app, event_id) was seen inside the horizon; else remember it, False.

        An event already older than the horizon is not remembered: it changes nothing,
        and keeping it would only push out keys that still matter.
        """
        # Move the horizon first: a key that this event's ts pushes out of the horizon
        # is forgotten before the lookup, so the answer never depends on call order.
        if self.newest_ts is None or ts > self.newest_ts:
            self.newest_ts = ts
            self._forget_older_than(ts - self.horizon_ms)
        key = (app, event_id)
        if key in self._ts_by_key:
            return True
        if ts < self.newest_ts - self.horizon_ms:
            return False
        self._remember(key, ts)
        return False

    def _remember(self, key: tuple[str, str], ts: int) -> None:
        self._ts_by_key[key] = ts
        heapq.heappush(self._by_age, (ts, key[0], key[1]))
        if len(self._ts_by_key) > self.max_keys:
            self._evict_oldest()
            self.evicted_early += 1

    def _forget_older_than(self, cutoff: int) -> None:
        by_age = self._by_age
        while by_age and by_age[0][0] < cutoff:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        _, app, event_id = heapq.heappop(self._by_age)
        del self._ts_by_key[(app, event_id)]
