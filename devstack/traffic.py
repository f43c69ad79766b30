"""Synthetic but realistic chat traffic: many users, several bots, three apps, weeks long.

Used by ``relance simulate``, the benchmarks and the integration tests. Deterministic for
a seed. Users talk in sessions (bursts of inbound messages, each answered by the bot),
come back after hours or days, sometimes write from another app, and the platforms
sometimes re-send a webhook or deliver one late. A few users send stop words or signs of
distress; profiles, opt-outs, kill switches and ticks are mixed in.
"""
from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from schemas.records import APPS, format_ts, parse_ts

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


# -- native webhooks -------------------------------------------------------------------------
# The canonical records above, as each platform would post them (spec section 5). The
# receiving account (phone_number_id, page id, Instagram account id) is the bot's first
# account on that app in the bot registry, so the ingest stage finds the bot back.

WHATSAPP_ACCOUNT_ID = "102290129340398"  # the WhatsApp Business Account that holds the numbers


def webhook_of(record: dict, accounts: Mapping[tuple[str, str], str]) -> tuple[str, dict] | None:
    """(app, webhook document) posting one canonical message, or None if the bot is not on that app.

    ``accounts`` maps (bot_id, app) to the receiving account id (see ``bot_accounts``).
    WhatsApp posts no webhook for the business's own messages, only their delivery
    status: a bot reply on WhatsApp becomes a ``statuses`` receipt, which the ingest
    stage counts and drops.
    """
    app, bot_id = record["app"], record["bot_id"]
    account = accounts.get((bot_id, app))
    if account is None:
        return None
    ts = parse_ts(record["ts"])
    if app == "whatsapp":
        return app, _whatsapp_webhook(record, account, ts)
    return app, _messaging_webhook(record, account, ts, "page" if app == "facebook" else "instagram")


def bot_accounts(registry: Iterable[Any]) -> dict[tuple[str, str], str]:
    """(bot_id, app) -> the bot's first account id on that app, from a ``BotRegistry``."""
    return {(bot.id, app): bot.accounts_on(app)[0] for bot in registry for app in APPS if bot.accounts_on(app)}


def _whatsapp_webhook(record: dict, phone_number_id: str, ts: int) -> dict:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "1555" + phone_number_id[-7:], "phone_number_id": phone_number_id},
    }
    seconds = str(ts // 1000)
    if record["direction"] == "outbound":
        value["statuses"] = [{"id": record["event_id"], "status": "delivered", "timestamp": seconds,
                              "recipient_id": record["user_id"]}]
    else:
        message: dict[str, Any] = {"from": record["user_id"], "id": record["event_id"], "timestamp": seconds}
        if record["text"]:
            message.update(type="text", text={"body": record["text"]})
        else:  # a photo with no caption: a message with no words
            message.update(type="image", image={"mime_type": "image/jpeg", "id": record["event_id"][-12:]})
        value["contacts"] = [{"profile": {"name": record["user_id"]}, "wa_id": record["user_id"]}]
        value["messages"] = [message]
    return {"object": "whatsapp_business_account",
            "entry": [{"id": WHATSAPP_ACCOUNT_ID, "changes": [{"value": value, "field": "messages"}]}]}


def _messaging_webhook(record: dict, account: str, ts: int, kind: str) -> dict:
    user = record["user_id"]
    echo = record["direction"] == "outbound"
    message: dict[str, Any] = {"mid": record["event_id"]}
    if echo:
        message["is_echo"] = True
    if record["text"]:
        message["text"] = record["text"]
    else:
        message["attachments"] = [{"type": "image", "payload": {"url": "https://example.invalid/photo.jpg"}}]
    sender, recipient = (account, user) if echo else (user, account)
    item = {"sender": {"id": sender}, "recipient": {"id": recipient}, "timestamp": ts, "message": message}
    return {"object": kind, "entry": [{"id": account, "time": ts, "messaging": [item]}]}


# -- live traffic, in real time ----------------------------------------------------------------

@dataclass(frozen=True)
class LiveShape:
    """Real-time traffic for ``relance simulate --clock wall`` and the demo.

    Conversations are compressed: messages of a session come seconds apart, and a user
    comes back after seconds to minutes, so a worker with a short idle delay (the demo
    uses 20 s) makes follow-ups within a minute.
    """

    users: int = 500
    bots: tuple[str, ...] = TrafficShape.bots
    rate: float = 20.0              # messages per second, on average
    answer_share: float = 0.35      # share of delivered follow-ups a user answers
    resend_share: float = 0.02      # webhooks the platform posts twice
    profile_share: float = 0.6      # users whose profile (time zone, age) is known


SESSION_LENGTHS = (1, 2, 3, 3, 4, 4, 5, 6)          # inbound messages per session
SESSION_END = "end"  # a queue entry that frees the user for a new session, not a message
_MEAN_SESSION_RECORDS = sum(SESSION_LENGTHS) / len(SESSION_LENGTHS) * 1.9  # each with a reply 90% of the time


class LiveTraffic:
    """Sessions start as a Poisson process sized to ``rate``; ``due(now)`` hands out what is due.

    Every record is stamped with the time it is handed out (wall clock). ``answer`` makes
    a user reply to a follow-up a few seconds later, as people sometimes do.
    """

    def __init__(self, shape: LiveShape, seed: int, now_ms: int) -> None:
        self.shape = shape
        self.rng = random.Random(seed)
        self.users = [f"u{index:05d}" for index in range(shape.users)]
        self._profiles = {user: self._user_habits(user) for user in self.users}
        self._busy: set[str] = set()
        self._queue: list[tuple[int, int, dict]] = []   # (due ms, sequence, partial record)
        self._sequence = 0
        self._session_rate = shape.rate / _MEAN_SESSION_RECORDS  # sessions per second
        self._next_session = now_ms
        self._pending_controls = self._initial_controls()
        self._run_tag = f".{now_ms:x}"
        self.answers = 0

    def _user_habits(self, user: str) -> tuple[tuple[str, ...], str]:
        bots = tuple(self.rng.sample(self.shape.bots, k=min(len(self.shape.bots), self.rng.choice((1, 1, 2, 3)))))
        return bots, self.rng.choice(APPS)

    def _initial_controls(self) -> list[dict]:
        controls = []
        zones = (None, "Europe/Paris", "America/Sao_Paulo", "Asia/Tokyo", "America/New_York")
        for user in self.users:
            if self.rng.random() < self.shape.profile_share:
                profile = {"type": "profile", "user_id": user, "tz": self.rng.choice(zones)}
                minor = self.rng.choice((False, False, False, False, None, True))
                if minor is not None:
                    profile["minor"] = minor
                controls.append(profile)
            if self.rng.random() < 0.02:
                controls.append({"type": "opt_out", "user_id": user, "bot_id": self.rng.choice(self.shape.bots + (None,))})
        return controls

    def due(self, now_ms: int) -> list[dict]:
        """Records due by ``now_ms``, in order, stamped ``now_ms``."""
        out, self._pending_controls = self._pending_controls, []
        while self._next_session <= now_ms:
            self._start_session(self._next_session, self.rng.choice(SESSION_LENGTHS))
            self._next_session += int(self.rng.expovariate(self._session_rate) * 1000) + 1
        while self._queue and self._queue[0][0] <= now_ms:
            _, number, partial = heapq.heappop(self._queue)
            if partial["direction"] == SESSION_END:
                self._busy.discard(partial["user"])
                continue
            record = _message(self.rng, number, partial["user"], partial["bot"], partial["app"],
                              partial["direction"], now_ms)
            record["event_id"] += self._run_tag  # another run's ids must not look like re-sends
            out.append(record)
            if self.rng.random() < self.shape.resend_share:
                out.append(dict(record))
        return out

    def next_due_ms(self) -> int:
        return min(self._next_session, self._queue[0][0]) if self._queue else self._next_session

    def answer(self, user: str, bot: str, app: str, now_ms: int) -> bool:
        """Maybe (``answer_share``) schedule ``user``'s reply to a follow-up; True if so."""
        if user in self._busy or self.rng.random() >= self.shape.answer_share:
            return False
        self._schedule_session(user, bot, app, now_ms + self.rng.randrange(2_000, 10_000), self.rng.choice((1, 2, 3)))
        self.answers += 1
        return True

    def _start_session(self, at: int, length: int) -> None:
        idle = [user for user in self.rng.sample(self.users, k=min(8, len(self.users))) if user not in self._busy]
        if not idle:
            return  # everyone sampled is mid-conversation: skip this start
        user = idle[0]
        bots, home_app = self._profiles[user]
        app = home_app if self.rng.random() < 0.85 else self.rng.choice(APPS)
        self._schedule_session(user, self.rng.choice(bots), app, at, length)

    def _schedule_session(self, user: str, bot: str, app: str, at: int, length: int) -> None:
        self._busy.add(user)
        for _ in range(length):
            self._push(at, {"user": user, "bot": bot, "app": app, "direction": "inbound"})
            at += self.rng.randrange(1_000, 3_000)
            if self.rng.random() < 0.9:
                self._push(at, {"user": user, "bot": bot, "app": app, "direction": "outbound"})
            at += self.rng.randrange(2_000, 8_000)
        self._push(at, {"user": user, "direction": SESSION_END})

    def _push(self, at: int, partial: dict) -> None:
        self._sequence += 1
        heapq.heappush(self._queue, (at, self._sequence, partial))
