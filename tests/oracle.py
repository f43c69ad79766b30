"""The spec's rule read straight from its text (sections 3, 4, 6 and 7), to judge the core.

``Oracle`` walks the records a decision core was fed, in the same order, and keeps what
the spec says is true at every point: the clock, each pair's distinct inbound and outbound
messages, its L, I and app, each user's time zone, age, opt-outs, distress and
follow-ups, the kill switches. Before each record takes effect it works out which
decisions are due (section 4), and for each one what every condition says (sections 3
and 6), and compares that with the decision records and requests the core emitted for the
same record.

Plain on purpose: the whole history is kept and scanned (no pruning, no packing, no
heap), times of day come from ``zoneinfo`` directly, the cap is tried on every span.
It shares no code with ``domain/``: a misreading there is not repeated here.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from foundation.settings import Settings
from schemas.records import (
    DecisionRecord, Erase, FollowupRequest, Kill, MessageEvent, OptIn, OptOut, Profile, Tick,
)

DAY = 86_400_000
WEEK = 7 * DAY
# Order in which the core lists its checks, and names the first that failed.
RULES = ("engaged", "one_per_silence", "messaging_window", "kill_switch", "opt_out", "age",
         "distress", "holdout", "quiet_hours", "user_cap")
# The texts the property streams use, read as the spec and the README read them.
STOP_WORDS = {"stop", "arrêter", "parar"}                 # "a message that is just the word"
DISTRESS_TEXTS = {"I want to die", "j'ai envie de mourir"}  # "signs of distress or self-harm"


class Disagreement(AssertionError):
    """The core did something the spec's text does not allow."""


@dataclass
class Message:
    ts: int
    inbound: bool
    app: str
    order: int          # arrival order: of two in the same ms, the later arrival is the latest


@dataclass
class Pair:
    messages: list[Message] = field(default_factory=list)
    first_ts: dict[tuple[str, str], int] = field(default_factory=dict)   # (app, event_id) -> ts of the first
    pending: int | None = None       # the time of the decision the spec says is next
    sent: list[int] = field(default_factory=list)   # send times of this pair's follow-ups

    def forgotten_after(self, settings: Settings) -> int:
        """README, choice 10: a silent pair is forgotten once the clock passes
        L + max(2W - D, W + D); nothing it held can matter any more, but the app of a later
        decision that never wrote would still come from a message it held."""
        window, delay = settings.window, settings.idle_delay
        return max(m.ts for m in self.messages) + max(2 * window - delay, window + delay) + 1

    def last(self, inbound_only: bool) -> Message | None:
        kept = [m for m in self.messages if m.inbound or not inbound_only]
        return max(kept, key=lambda m: (m.ts, m.order)) if kept else None


@dataclass
class User:
    tz: str | None = None
    minor: bool | None = None
    all_out: bool = False
    out: set[str] = field(default_factory=set)
    back_in: set[str] = field(default_factory=set)     # let back in after an opt-out of all bots
    opted_in_at: dict[str, int] = field(default_factory=dict)
    distress: list[int] = field(default_factory=list)
    sends: list[int] = field(default_factory=list)
    pairs: dict[str, Pair] = field(default_factory=dict)

    def opted_out(self, bot: str) -> bool:
        return bot in self.out or (self.all_out and bot not in self.back_in)


class Oracle:
    """Feed it each record with what the core emitted for it; it raises ``Disagreement``."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.clock = -1
        self.kill_all = False
        self.killed_bots: set[str] = set()
        self.killed_apps: set[str] = set()
        self.users: dict[str, User] = {}
        self.order = 0
        self.requests_checked = 0

    # -- one record ----------------------------------------------------------------------

    def step(self, record, decisions: list[DecisionRecord], requests: list[FollowupRequest]) -> None:
        ts = getattr(record, "ts", None)
        if isinstance(record, (MessageEvent, Tick)):
            self.clock = max(self.clock, ts)
        due_now = self._due(inclusive=isinstance(record, Tick))
        emitted = self._check_decisions(due_now, decisions)
        if [r.followup_id for r in requests] != [d.followup_id for d in emitted]:
            raise Disagreement(f"requests {requests} are not the emitted decisions {emitted}")
        for request, decision in zip(requests, emitted):
            self._check_request(request, decision)
        self._forget_silent_pairs(inclusive=isinstance(record, Tick))   # always after their decisions
        self._apply(record)

    def _forget_silent_pairs(self, inclusive: bool) -> None:
        for user in self.users.values():
            for bot_id, pair in list(user.pairs.items()):
                forgotten = pair.forgotten_after(self.s)
                if pair.pending is None and forgotten < self.clock or (inclusive and forgotten == self.clock):
                    del user.pairs[bot_id]

    def _due(self, inclusive: bool):
        """Yield (due, user, bot), earliest first (ties: user, then bot), while any is due."""
        while True:
            candidates = [(pair.pending, user_id, bot_id) for user_id, user in self.users.items()
                          for bot_id, pair in user.pairs.items() if pair.pending is not None]
            due = [c for c in candidates if c[0] < self.clock or (inclusive and c[0] == self.clock)]
            if not due:
                return
            yield min(due)

    def _check_decisions(self, due_now, decisions: list[DecisionRecord]) -> list[DecisionRecord]:
        emitted, left = [], list(decisions)
        for due, user_id, bot_id in due_now:
            if not left:
                raise Disagreement(f"no decision for ({user_id}, {bot_id}) due at {due}, clock {self.clock}")
            decision = left.pop(0)
            if (decision.due_ts, decision.user_id, decision.bot_id) != (due, user_id, bot_id):
                raise Disagreement(f"decision {decision} where the spec has ({user_id}, {bot_id}) due at {due}")
            if decision.decided_at != self.clock:
                raise Disagreement(f"decided at {decision.decided_at}, clock {self.clock}: {decision}")
            if self._judge(decision):
                emitted.append(decision)
        if left:
            raise Disagreement(f"decisions the spec does not make: {left}")
        return emitted

    # -- one decision --------------------------------------------------------------------

    def _judge(self, d: DecisionRecord) -> bool:
        """Check a decision against the spec; True if it emits a follow-up."""
        user = self.users[d.user_id]
        pair = user.pairs[d.bot_id]
        t = d.due_ts
        latest_in = pair.last(inbound_only=True)
        latest = latest_in or pair.last(inbound_only=False)
        I = latest_in.ts if latest_in else None
        count = sum(1 for m in pair.messages if m.inbound and t - self.s.window < m.ts <= t)
        quiet_end = self._quiet_end(t, user.tz)
        if quiet_end is not None and I is not None and quiet_end - I <= self.s.messaging_window:
            # "At T a decision record says only that the follow-up was deferred to T'."
            expect(d.outcome == "deferred" and d.send_ts == quiet_end and d.stopped_by is None, d,
                   f"a follow-up due at {t} in quiet hours must wait until {quiet_end}")
            expect([c.rule for c in d.checks] == ["quiet_hours"], d, "a deferral judges nothing else")
            pair.pending = quiet_end
            return False
        passed = {
            "engaged": count >= self.s.min_inbound,
            "one_per_silence": not any(sent >= I for sent in pair.sent) if I is not None else True,
            "messaging_window": I is not None and t - I <= self.s.messaging_window,
            "kill_switch": not (self.kill_all or d.bot_id in self.killed_bots or latest.app in self.killed_apps),
            "opt_out": not user.opted_out(d.bot_id),
            "age": not (user.minor is True or (user.minor is None and self.s.unknown_age == "deny")),
            "distress": not any(t < ts + self.s.distress_cooloff for ts in user.distress),
            "holdout": not in_holdout(d.user_id, d.bot_id, self.s.holdout),
            "quiet_hours": quiet_end is None,
            "user_cap": not over_cap(user.sends, t, self.s.user_cap_day, self.s.user_cap_week),
        }
        failed = next((rule for rule in RULES if not passed[rule]), None)
        expect({c.rule: c.passed for c in d.checks} == passed, d, f"the spec's checks are {passed}")
        expect(d.stopped_by == failed, d, f"the first rule that fails is {failed}")
        expect(d.outcome == ("emitted" if failed is None else "suppressed"), d, "outcome")
        expect(d.inbound_in_window == count, d, f"{count} distinct inbound messages in ({t} - W, {t}]")
        expect(d.app == latest.app, d, f"the app of the latest inbound message is {latest.app}")
        pair.pending = None
        if failed is None:
            pair.sent.append(t)
            user.sends.append(t)
        return failed is None

    def _check_request(self, q: FollowupRequest, d: DecisionRecord) -> None:
        """The request of an emitted decision, and the safety invariants, spelled out."""
        user = self.users[q.user_id]
        pair = user.pairs[q.bot_id]
        latest_in = pair.last(inbound_only=True)
        expect((q.due_ts, q.app, q.inbound_in_window) == (d.due_ts, d.app, d.inbound_in_window), q, "as decided")
        expect(q.last_inbound_ts == latest_in.ts, q, "I is the pair's latest inbound message")
        expect(q.due_ts - q.last_inbound_ts <= self.s.messaging_window, q, "send - I <= M")
        expect(self._quiet_end(q.due_ts, user.tz) is None, q, "nothing inside quiet hours in the user's zone")
        expect(not user.opted_out(q.bot_id) and user.minor is not True, q, "nothing to an opted-out pair or a minor")
        expect(not (self.kill_all or q.bot_id in self.killed_bots or q.app in self.killed_apps), q, "nothing killed")
        expect(q.inbound_in_window >= self.s.min_inbound, q, "engaged")
        for span, cap in ((DAY, self.s.user_cap_day), (WEEK, self.s.user_cap_week)):
            expect(not cap or max(sum(1 for s in user.sends if start <= s < start + span) for start in user.sends) <= cap,
                   q, f"never more than {cap} follow-ups in a span of {span} ms")
        self.requests_checked += 1

    # -- the record's effect -------------------------------------------------------------

    def _apply(self, record) -> None:
        if isinstance(record, MessageEvent):
            self._message(record)
        elif isinstance(record, Kill):
            if record.scope == "all":
                self.kill_all = record.on
            else:
                target = self.killed_bots if record.scope == "bot" else self.killed_apps
                (target.add if record.on else target.discard)(record.id)
        elif isinstance(record, Erase):
            self.users.pop(record.user_id, None)   # everything, follow-ups sent included
        elif isinstance(record, (Profile, OptOut, OptIn)):
            user = self.users.setdefault(record.user_id, User())
            if isinstance(record, Profile):
                user.tz, user.minor = record.tz, record.minor
            elif isinstance(record, OptOut):
                self._opt_out(user, record.bot_id)
            else:
                user.opted_in_at[record.bot_id or "*"] = self.clock
                if record.bot_id is None:
                    user.all_out, user.out, user.back_in = False, set(), set()
                else:
                    user.out.discard(record.bot_id)
                    if user.all_out:
                        user.back_in.add(record.bot_id)

    @staticmethod
    def _opt_out(user: User, bot: str | None) -> None:
        if bot is None:
            user.all_out, user.back_in = True, set()
        else:
            user.out.add(bot)
            user.back_in.discard(bot)

    def _message(self, m: MessageEvent) -> None:
        if m.ts < self.clock - self.s.window:
            return   # "an event with ts older than the clock minus W changes nothing"
        user = self.users.setdefault(m.user_id, User())
        pair = user.pairs.setdefault(m.bot_id, Pair())
        first = pair.first_ts.get((m.app, m.event_id))
        if first is not None:
            if first < self.clock - self.s.window:
                raise AssertionError(f"the stream re-sends {m} after its first could no longer count: "
                                     "the spec leaves that open, the streams must not make it")
            return   # "the second changes nothing, whatever its ts"
        pair.first_ts[(m.app, m.event_id)] = m.ts
        self.order += 1
        L = max((x.ts for x in pair.messages), default=None)
        pair.messages.append(Message(m.ts, m.inbound, m.app, self.order))
        if L is None or m.ts > L:
            pair.pending = m.ts + self.s.idle_delay
        if not m.inbound:
            return
        if m.text.strip().lower() in STOP_WORDS and m.ts > max(
                user.opted_in_at.get(m.bot_id, -1), user.opted_in_at.get("*", -1)):
            self._opt_out(user, m.bot_id)
        if m.text in DISTRESS_TEXTS:
            user.distress.append(m.ts)

    # -- time of day ---------------------------------------------------------------------

    def _quiet_end(self, t: int, tz: str | None) -> int | None:
        """If ``t`` is inside the quiet hours in zone ``tz``, when they end; else None."""
        if self.s.quiet_hours is None:
            return None
        start, end = self.s.quiet_hours
        zone = ZoneInfo(tz) if tz else timezone.utc
        local = datetime.fromtimestamp(t / 1000, zone)
        minute = local.hour * 60 + local.minute
        if start < end and not start <= minute < end:
            return None
        if start > end and end <= minute < start:
            return None
        day = local.date() + timedelta(days=1 if start > end and minute >= start else 0)
        ends = datetime.combine(day, time(end // 60, end % 60), tzinfo=zone)
        return int(ends.timestamp() * 1000)


def expect(condition: bool, what, why: str) -> None:
    if not condition:
        raise Disagreement(f"{why}: {what}")


def over_cap(sends: list[int], t: int, cap_day: int, cap_week: int) -> bool:
    """Would some span of 24 hours (7 days) hold more than its cap, with a send at ``t``?"""
    together = sends + [t]
    for span, cap in ((DAY, cap_day), (WEEK, cap_week)):
        if cap and any(sum(1 for s in together if start <= s < start + span) > cap
                       for start in together if start <= t < start + span):
            return True
    return False


def in_holdout(user_id: str, bot_id: str, share: float) -> bool:
    """README: the holdout hashes (user_id, bot_id) with BLAKE2b, stable on every worker."""
    digest = hashlib.blake2b(f"{user_id}\x1f{bot_id}".encode(), digest_size=8).digest()
    return share > 0 and int.from_bytes(digest, "big") / 2**64 < share
