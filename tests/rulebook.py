"""Small builders for rule tests: records at readable times, and a core to feed them to."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from domain.native import NativeDecisionCore
from domain.rules import DecisionCore
from foundation.settings import Settings
from schemas.records import (
    DecisionRecord, Erase, FollowupRequest, Kill, MessageEvent, OptIn, OptOut, Profile, Tick,
    parse_ts,
)

HOUR = 3_600_000
MINUTE = 60_000
DAY = 24 * HOUR
_ids = itertools.count()

# Quiet hours and caps are off unless a test is about them, so each test sees one rule.
PLAIN = dict(quiet_hours="off", user_cap_day=0, user_cap_week=0, clock="event")


def at(text: str) -> int:
    """``"11-28 09:30"`` in 2026, UTC, as epoch ms."""
    return parse_ts(f"2026-{text.replace(' ', 'T')}:00Z")


def msg(user: str, bot: str, ts: int, *, direction: str = "inbound", app: str = "whatsapp",
        text: str = "hello", event_id: str | None = None) -> MessageEvent:
    return MessageEvent(
        event_id=event_id or f"e{next(_ids)}", app=app, user_id=user, bot_id=bot,
        direction=direction, ts=ts, text=text,
    )


def burst(user: str, bot: str, start: int, count: int, *, step: int = MINUTE, app: str = "whatsapp") -> list[MessageEvent]:
    return [msg(user, bot, start + i * step, app=app) for i in range(count)]


def tick(ts: int) -> Tick:
    return Tick(ts=ts)


# Which core a Run drives: the ``each_core`` fixture (tests/conftest.py) runs a module's
# tests once on each.
CORES = {"python": DecisionCore, "native": NativeDecisionCore}
core_kind = "python"


@dataclass
class Run:
    """A core fed record by record, keeping everything it emitted."""

    settings: Settings
    core: DecisionCore | NativeDecisionCore = field(init=False)
    requests: list[FollowupRequest] = field(default_factory=list)
    decisions: list[DecisionRecord] = field(default_factory=list)
    erased: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.core = CORES[core_kind](self.settings)

    def feed(self, *records, now: int | None = None) -> "Run":
        for record in records:
            if isinstance(record, list):
                self.feed(*record, now=now)
                continue
            self.core.feed(record, now=now)
            requests, decisions, erased, _ = self.core.drain()
            self.requests += requests
            self.decisions += decisions
            self.erased += erased
        return self

    def decisions_for(self, user: str, bot: str) -> list[DecisionRecord]:
        return [d for d in self.decisions if d.user_id == user and d.bot_id == bot]


def run(**overrides) -> Run:
    return Run(Settings.from_mapping({**PLAIN, **overrides}))


__all__ = [
    "DAY", "HOUR", "MINUTE", "Erase", "Kill", "OptIn", "OptOut", "Profile", "Run", "at",
    "burst", "msg", "run", "tick",
]
