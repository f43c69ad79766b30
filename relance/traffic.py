"""Synthetic but realistic chat traffic: many users, several bots, three apps, weeks long.

Used by ``relance simulate``, the benchmarks and the integration tests. Deterministic for
a seed. Users talk in sessions (bursts of inbound messages, each answered by the bot),
come back after hours or days, sometimes write from another app, and the platforms
sometimes re-send a webhook or deliver one late. A few users send stop words or signs of
distress; profiles, opt-outs, kill switches and ticks are mixed in.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

from schemas.records import format_ts

APPS = ("whatsapp", "facebook", "instagram")
USER_LINES = (
    "Any film music tips?", "I loved the Interstellar score", "What should I cook tonight?",
    "Can you suggest a workout?", "How do I say this in Portuguese?", "thanks!", "haha",
    "Tell me more about Ennio Morricone", "What's a good pasta sauce?", "", "ok",
)
BOT_LINES = ("Great question!", "Here is an idea for you.", "Glad you liked it.", "Happy to help.")
STOP_TEXTS = ("STOP", "Arrêter", "parar")
DISTRESS_TEXTS = ("sometimes I want to die", "j'ai envie de mourir")
HOUR = 3_600_000
MINUTE = 60_000


@dataclass(frozen=True)
class TrafficShape:
    users: int = 200
    bots: tuple[str, ...] = ("maestro", "chef-lucie", "coach-mateo", "professora-ana")
    days: float = 14.0
    start_ms: int = 1_795_856_400_000  # 2026-11-28T09:00:00Z
    resend_share: float = 0.02
    late_share: float = 0.02
    controls: bool = True
    tick_every_ms: int = 6 * HOUR


def _message(rng: random.Random, n: int, user: str, bot: str, app: str, direction: str, ts: int) -> dict:
    if direction == "inbound":
        roll = rng.random()
        text = STOP_TEXTS[n % 3] if roll < 0.004 else DISTRESS_TEXTS[n % 2] if roll < 0.007 else rng.choice(USER_LINES)
    else:
        text = rng.choice(BOT_LINES)
    prefix = "wamid." if app == "whatsapp" else "m_"
    return {"event_id": f"{prefix}{n:09d}", "app": app, "user_id": user, "bot_id": bot,
            "direction": direction, "ts": format_ts(ts), "text": text}


def _sessions(rng: random.Random, shape: TrafficShape, user: str) -> Iterator[tuple[int, dict]]:
    """(ts, partial message) for one user's sessions over the period."""
    end = shape.start_ms + int(shape.days * 24 * HOUR)
    bots = rng.sample(shape.bots, k=rng.choice((1, 1, 2, 3)))
    home_app = rng.choice(APPS)
    ts = shape.start_ms + rng.randrange(0, 48 * HOUR)
    while ts < end:
        bot = rng.choice(bots)
        app = home_app if rng.random() < 0.85 else rng.choice(APPS)
        for _ in range(rng.choice((1, 2, 3, 4, 5, 6, 8))):
            yield ts, {"user": user, "bot": bot, "app": app, "direction": "inbound"}
            ts += rng.randrange(10_000, 3 * MINUTE)
            if rng.random() < 0.9:
                yield ts, {"user": user, "bot": bot, "app": app, "direction": "outbound"}
                ts += rng.randrange(5_000, 2 * MINUTE)
        ts += rng.choice((2 * HOUR, 9 * HOUR, 20 * HOUR, 30 * HOUR, 3 * 24 * HOUR)) + rng.randrange(0, HOUR)


def _controls(rng: random.Random, shape: TrafficShape, users: list[str]) -> Iterator[tuple[int, dict]]:
    zones = (None, "Europe/Paris", "America/Sao_Paulo", "Asia/Tokyo", "America/New_York")
    for user in users:
        if rng.random() < 0.6:
            minor = rng.choice((False, False, False, None, True))
            profile = {"type": "profile", "user_id": user, "tz": rng.choice(zones)}
            if minor is not None:
                profile["minor"] = minor
            yield shape.start_ms - 1, profile
        if rng.random() < 0.03:
            yield shape.start_ms + rng.randrange(0, int(shape.days * 24 * HOUR)), {"type": "opt_out", "user_id": user, "bot_id": rng.choice(shape.bots + (None,))}
    span = int(shape.days * 24 * HOUR)
    killed_at = shape.start_ms + span // 3
    yield killed_at, {"type": "kill", "scope": "bot", "id": shape.bots[-1], "on": True}
    yield killed_at + 2 * 24 * HOUR, {"type": "kill", "scope": "bot", "id": shape.bots[-1], "on": False}


def generate(shape: TrafficShape = TrafficShape(), seed: int = 1) -> list[dict]:
    """Records in arrival order: canonical events, with controls and ticks mixed in."""
    rng = random.Random(seed)
    users = [f"u{index:05d}" for index in range(shape.users)]
    timeline: list[tuple[int, int, dict]] = []
    for user in users:
        for ts, partial in _sessions(rng, shape, user):
            timeline.append((ts, len(timeline), partial))
    if shape.controls:
        for ts, control in _controls(rng, shape, users):
            timeline.append((ts, len(timeline), control))
    end = shape.start_ms + int(shape.days * 24 * HOUR)
    for ts in range(shape.start_ms, end + 2 * 24 * HOUR, shape.tick_every_ms):
        timeline.append((ts, len(timeline), {"type": "tick", "ts": format_ts(ts)}))
    timeline.sort(key=lambda item: (item[0], item[1]))
    return list(_deliver(rng, shape, timeline))


def _deliver(rng: random.Random, shape: TrafficShape, timeline: list) -> Iterator[dict]:
    """The platforms' delivery: mostly in order, some re-sent, some late."""
    held: list[dict] = []
    for number, (ts, _, item) in enumerate(timeline):
        if "type" in item:
            yield item
            continue
        record = _message(rng, number, item["user"], item["bot"], item["app"], item["direction"], ts)
        if rng.random() < shape.late_share:
            held.append(record)
            continue
        yield record
        if rng.random() < shape.resend_share:
            yield dict(record)
        if held and rng.random() < 0.2:
            yield held.pop(0)
    yield from held
