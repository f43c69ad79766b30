"""The decision core: spec sections 3, 4 and 6, with no Kafka, Faust or Redis.

One ``DecisionCore`` holds the state of a set of users (a Kafka partition's worth in a
worker, everything in ``relance replay``) and turns an ordered stream of records into
follow-up requests and decision records. The Faust agents and the replay tool both feed
it; nothing else decides.

Order (spec section 4): a record first moves the clock, then every decision due before
the clock happens, in due order (ties: user_id, then bot_id), then the record takes
effect. A tick also lets the decisions due exactly at the clock happen.
"""
from __future__ import annotations

import hashlib
import heapq
import sys
from array import array
from dataclasses import dataclass, field

from agents.safety import DistressClassifier, PhraseListClassifier, is_stop_word, quiet_hours_end
from relance.settings import Settings
from schemas.records import (
    APPS, Check, ControlEvent, DecisionRecord, Erase, FollowupRequest, InvalidRecord, Kill,
    MessageEvent, OptIn, OptOut, Profile, Tick,
)

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
FUTURE_TOLERANCE_MS = 5 * 60_000  # wall mode: an event further ahead than this is invalid

# Rules in the order they are checked; the first that fails is the one that stopped it.
RULES = (
    "engaged", "one_per_silence", "messaging_window",
    "kill_switch", "opt_out", "age", "distress", "holdout", "quiet_hours", "user_cap",
)

EMITTED, SUPPRESSED, DEFERRED = "emitted", "suppressed", "deferred"
_APP_NAMES = {app: app for app in APPS}  # one string object per app, not one per pair


def event_key(app: str, event_id: str) -> int:
    """A message's identity, ``(app, event_id)``, as a signed 64-bit hash: 8 bytes, not 100."""
    digest = hashlib.blake2b(f"{app}:{event_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(slots=True)
class PairState:
    """What the rule needs of one (user, bot): the last N inbound messages, not all.

    ``inbound`` is packed as ``[ts, key, ts, key, ...]`` in ascending ``ts``: a million
    pairs must fit in a worker's memory.
    """

    inbound: array = field(default_factory=lambda: array("q"))
    last_ts: int = -1                 # L: latest message either way
    last_inbound_ts: int = -1         # I: latest inbound message
    last_inbound_key: int = 0         # event_key of the latest inbound message
    app: str = ""                     # app of the latest inbound (of any message before one)
    due: int | None = None            # next decision: L + D, or the end of quiet hours
    emitted_at: int | None = None     # send time of the last follow-up emitted
    queued: int | None = field(default=None, compare=False)  # its one due-heap entry; not saved

    def inbound_times(self) -> list[int]:
        return list(self.inbound[0::2])

    def add_inbound(self, ts: int, key: int, keep: int) -> bool:
        """Insert in time order and keep the last ``keep``; False for a duplicate."""
        packed = self.inbound
        if key in packed[1::2]:
            return False
        at = len(packed)
        while at >= 2 and packed[at - 2] > ts:
            at -= 2
        packed.insert(at, key)
        packed.insert(at, ts)
        if len(packed) > 2 * keep:
            del packed[0:2]
        return True

    def to_dict(self) -> dict:
        return {
            "inbound": self.inbound.tolist(), "last_ts": self.last_ts,
            "last_inbound_ts": self.last_inbound_ts, "last_inbound_key": self.last_inbound_key,
            "app": self.app, "due": self.due, "emitted_at": self.emitted_at,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "PairState":
        return cls(
            inbound=array("q", data["inbound"]), last_ts=data["last_ts"],
            last_inbound_ts=data["last_inbound_ts"], last_inbound_key=data["last_inbound_key"],
            app=_APP_NAMES.get(data["app"], data["app"]), due=data["due"], emitted_at=data["emitted_at"],
        )


_NOBODY: frozenset[str] = frozenset()


@dataclass(slots=True)
class UserState:
    """One user across every bot and app: profile, opt-outs, cap history and pairs.

    Rarely set fields hold shared immutable empties, replaced on write, so a user
    costs little more than its pairs.
    """

    tz: str | None = None
    minor: bool | None = None
    opt_out_all: bool = False
    opt_out_bots: frozenset[str] = _NOBODY
    opt_in_bots: frozenset[str] = _NOBODY       # exceptions to opt_out_all
    opt_in_at: dict[str, int] | None = None     # bot ("*" for all) -> clock of the opt-in
    distress_until: int = -1
    sends: tuple[int, ...] = ()                 # send times of recent follow-ups
    pairs: dict[str, PairState] = field(default_factory=dict)

    def opted_out(self, bot_id: str) -> bool:
        if bot_id in self.opt_out_bots:
            return True
        return self.opt_out_all and bot_id not in self.opt_in_bots

    def opted_in_at(self, bot_id: str) -> int:
        if self.opt_in_at is None:
            return -1
        return max(self.opt_in_at.get(bot_id, -1), self.opt_in_at.get("*", -1))

    def is_empty(self) -> bool:
        return (not self.pairs and self.tz is None and self.minor is None
                and not self.opt_out_all and not self.opt_out_bots and not self.opt_in_bots
                and not self.sends)

    def to_dict(self) -> dict:
        return {
            "tz": self.tz, "minor": self.minor, "opt_out_all": self.opt_out_all,
            "opt_out_bots": sorted(self.opt_out_bots), "opt_in_bots": sorted(self.opt_in_bots),
            "opt_in_at": self.opt_in_at or {}, "distress_until": self.distress_until,
            "sends": list(self.sends), "pairs": {bot: pair.to_dict() for bot, pair in self.pairs.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "UserState":
        return cls(
            tz=data["tz"], minor=data["minor"], opt_out_all=data["opt_out_all"],
            opt_out_bots=frozenset(data["opt_out_bots"]), opt_in_bots=frozenset(data["opt_in_bots"]),
            opt_in_at=dict(data["opt_in_at"]) or None, distress_until=data["distress_until"],
            sends=tuple(data["sends"]),
            pairs={sys.intern(bot): PairState.from_dict(pair) for bot, pair in data["pairs"].items()},
        )


@dataclass(slots=True)
class KillSwitches:
    everything: bool = False
    bots: set[str] = field(default_factory=set)
    apps: set[str] = field(default_factory=set)

    def stops(self, bot_id: str, app: str) -> str | None:
        if self.everything:
            return "all follow-ups are killed"
        if bot_id in self.bots:
            return f"bot {bot_id} is killed"
        if app in self.apps:
            return f"app {app} is killed"
        return None

    def apply(self, kill: Kill) -> None:
        if kill.scope == "all":
            self.everything = kill.on
            return
        target = self.bots if kill.scope == "bot" else self.apps
        (target.add if kill.on else target.discard)(kill.id)

    def to_dict(self) -> dict:
        return {"everything": self.everything, "bots": sorted(self.bots), "apps": sorted(self.apps)}

    @classmethod
    def from_dict(cls, data: dict) -> "KillSwitches":
        return cls(everything=data["everything"], bots=set(data["bots"]), apps=set(data["apps"]))


def followup_id(user_id: str, bot_id: str, last_inbound_ts: int, last_inbound_key: int) -> str:
    """The same silence gives the same id: in a replay, after a crash, on another worker."""
    material = f"{user_id}\x1f{bot_id}\x1f{last_inbound_ts}\x1f{last_inbound_key}".encode()
    return hashlib.blake2b(material, digest_size=16).hexdigest()


def in_holdout(user_id: str, bot_id: str, share: float) -> bool:
    """A stable hash puts a pair in the holdout or not, the same on every worker."""
    if share <= 0.0:
        return False
    digest = hashlib.blake2b(f"{user_id}\x1f{bot_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


class DecisionCore:
    """Pair state, the due-time index and the rule, for the users of one partition."""

    def __init__(self, settings: Settings, classifier: DistressClassifier | None = None) -> None:
        self.settings = settings
        self.classifier = classifier or PhraseListClassifier()
        self.clock = -1
        self.kills = KillSwitches()
        self.users: dict[str, UserState] = {}
        self._due: list[tuple[int, str, str]] = []   # (time, user, bot): one entry per pair
        # What the last steps produced, drained by the caller.
        self.requests: list[FollowupRequest] = []
        self.decisions: list[DecisionRecord] = []
        self.erased: list[str] = []
        self.dirty: set[str] = set()
        self.stats = {"duplicates": 0, "too_old": 0, "stop_words": 0, "distress": 0}
        # Duplicates per app since the caller last cleared it: the metric is labelled by app.
        self.duplicates_by_app: dict[str, int] = {}
        self.distress_languages: list[str] = []

    # -- feeding -----------------------------------------------------------------------

    def feed(self, record: MessageEvent | ControlEvent, now: int | None = None) -> None:
        """Apply one record. ``now`` is the wall clock in wall mode, None in event mode."""
        wall = self.settings.clock == "wall"
        if isinstance(record, Tick):
            self.advance(now if wall else record.ts, inclusive=True)
            return
        if isinstance(record, MessageEvent):
            target = now if wall else record.ts
            if wall and record.ts > target + FUTURE_TOLERANCE_MS:
                raise InvalidRecord(f"ts is more than 5 minutes ahead of the clock ({record.ts - target} ms)")
            self.advance(target, inclusive=False)
            self._apply_message(record)
            return
        self.advance(now if wall else self.clock, inclusive=False)
        self._apply_control(record)

    def advance(self, to: int | None, inclusive: bool) -> None:
        """Move the clock (never backwards) and make every decision now due."""
        if to is not None and to > self.clock:
            self.clock = to
        while self._due and (self._due[0][0] < self.clock or (inclusive and self._due[0][0] == self.clock)):
            time, user_id, bot_id = heapq.heappop(self._due)
            user = self.users.get(user_id)
            pair = user.pairs.get(bot_id) if user else None
            if pair is None or pair.queued != time:
                continue  # the pair was erased or forgotten, or queued again since
            pair.queued = None
            # One entry per pair: when it comes up early, it moves to the pair's next time.
            next_time = pair.due if pair.due is not None else self._expiry(pair)
            if next_time > time:
                self._schedule(user_id, bot_id, pair, next_time)
            elif pair.due is not None:
                self._decide(user_id, user, bot_id, pair, time)
            else:
                self._expire(user_id, user, bot_id)

    def _schedule(self, user_id: str, bot_id: str, pair: PairState, time: int) -> None:
        """Make sure the pair comes up by ``time``: one heap entry per pair, not per message."""
        if pair.queued is None or time < pair.queued:
            pair.queued = time
            heapq.heappush(self._due, (time, user_id, bot_id))

    def drain(self) -> tuple[list[FollowupRequest], list[DecisionRecord], list[str], set[str]]:
        """Take what the steps since the last drain produced."""
        out = (self.requests, self.decisions, self.erased, self.dirty)
        self.requests, self.decisions, self.erased, self.dirty = [], [], [], set()
        return out

    # -- messages ----------------------------------------------------------------------

    def _apply_message(self, event: MessageEvent) -> None:
        settings = self.settings
        if event.ts < self.clock - settings.window:  # "older than the clock minus W"
            self.stats["too_old"] += 1
            return
        # Interned: the users dict, the pairs dicts and the heap share one string each.
        user_id, bot_id = sys.intern(event.user_id), sys.intern(event.bot_id)
        user = self.users.get(user_id)
        if user is None:
            user = self.users[user_id] = UserState()
        pair = user.pairs.get(bot_id)
        if pair is None:
            pair = user.pairs[bot_id] = PairState()
        app = _APP_NAMES[event.app]
        if event.inbound:
            key = event_key(app, event.event_id)
            if not pair.add_inbound(event.ts, key, settings.min_inbound):
                self.stats["duplicates"] += 1
                self.duplicates_by_app[app] = self.duplicates_by_app.get(app, 0) + 1
                return
            self._record_inbound(event, key, app, user, pair)
        elif pair.last_inbound_ts < 0 and event.ts >= pair.last_ts:
            pair.app = app
        if event.ts > pair.last_ts:
            pair.last_ts = event.ts
            pair.due = event.ts + settings.idle_delay
            self._schedule(user_id, bot_id, pair, pair.due)
        self.dirty.add(user_id)

    def _record_inbound(self, event: MessageEvent, key: int, app: str, user: UserState, pair: PairState) -> None:
        if event.ts >= pair.last_inbound_ts:  # same ms: the later arrival is the latest
            pair.last_inbound_ts = event.ts
            pair.last_inbound_key = key
            pair.app = app
        if is_stop_word(event.text) and event.ts > user.opted_in_at(event.bot_id):
            self.stats["stop_words"] += 1
            user.opt_out_bots = user.opt_out_bots | {event.bot_id}
            user.opt_in_bots = user.opt_in_bots - {event.bot_id}
        detection = self.classifier.detect(event.text)
        if detection is not None:
            self.stats["distress"] += 1
            self.distress_languages.append(detection.language)
            user.distress_until = max(user.distress_until, event.ts + self.settings.distress_cooloff)

    # -- control -----------------------------------------------------------------------

    def _apply_control(self, event: ControlEvent) -> None:
        if isinstance(event, Kill):
            self.kills.apply(event)
            return
        if isinstance(event, Erase):
            self.users.pop(event.user_id, None)
            self.erased.append(event.user_id)
            self.dirty.add(event.user_id)
            return
        user = self.users.get(event.user_id)
        if user is None:
            user = self.users[event.user_id] = UserState()
        if isinstance(event, Profile):
            user.tz, user.minor = event.tz, event.minor
        elif isinstance(event, OptOut):
            self._opt_out(user, event.bot_id)
        elif isinstance(event, OptIn):
            self._opt_in(user, event.bot_id)
        self.dirty.add(event.user_id)

    @staticmethod
    def _opt_out(user: UserState, bot_id: str | None) -> None:
        if bot_id is None:
            user.opt_out_all = True
            user.opt_in_bots = _NOBODY
            return
        user.opt_out_bots = user.opt_out_bots | {bot_id}
        user.opt_in_bots = user.opt_in_bots - {bot_id}

    def _opt_in(self, user: UserState, bot_id: str | None) -> None:
        # Remembered so that a late or re-sent stop word from before the opt-in is ignored.
        user.opt_in_at = {**(user.opt_in_at or {}), bot_id or "*": self.clock}
        if bot_id is None:
            user.opt_out_all = False
            user.opt_out_bots = user.opt_in_bots = _NOBODY
            return
        user.opt_out_bots = user.opt_out_bots - {bot_id}
        if user.opt_out_all:
            user.opt_in_bots = user.opt_in_bots | {bot_id}

    # -- the rule ----------------------------------------------------------------------

    def _decide(self, user_id: str, user: UserState, bot_id: str, pair: PairState, due: int) -> None:
        settings = self.settings
        send_at = quiet_hours_end(due, user.tz, settings.quiet_hours)
        at = send_at if send_at is not None else due
        inbound_in_window = sum(1 for ts in pair.inbound[0::2] if at - settings.window < ts <= at)
        checks = (
            self._check_engaged(inbound_in_window),
            self._check_one_per_silence(pair),
            self._check_messaging_window(pair, due),
            Check("kill_switch", *_passes(self.kills.stops(bot_id, pair.app))),
            Check("opt_out", *_passes("the user opted out" if user.opted_out(bot_id) else None)),
            self._check_age(user),
            Check("distress", *_passes(
                "signs of distress, cooling off" if at < user.distress_until else None)),
            Check("holdout", *_passes(
                "pair is in the holdout" if in_holdout(user_id, bot_id, settings.holdout) else None)),
            self._check_quiet_hours(pair, send_at),
            self._check_cap(user, at),
        )
        failed = next((check.rule for check in checks if not check.passed), None)
        if failed is not None:
            outcome = SUPPRESSED
            pair.due = None
            self._schedule(user_id, bot_id, pair, self._expiry(pair))
        elif send_at is not None:
            outcome = DEFERRED
            pair.due = send_at
            self._schedule(user_id, bot_id, pair, send_at)
        else:
            outcome = EMITTED
            pair.due = None
            pair.emitted_at = due
            user.sends = user.sends + (due,)
            self._schedule(user_id, bot_id, pair, self._expiry(pair))
        fid = followup_id(user_id, bot_id, pair.last_inbound_ts, pair.last_inbound_key)
        self.decisions.append(DecisionRecord(
            followup_id=fid, user_id=user_id, bot_id=bot_id, app=pair.app, due_ts=due,
            send_ts=at, decided_at=self.clock, outcome=outcome, stopped_by=failed,
            inbound_in_window=inbound_in_window, last_inbound_ts=max(pair.last_inbound_ts, 0),
            checks=checks,
        ))
        if outcome == EMITTED:
            self.requests.append(FollowupRequest(
                followup_id=fid, user_id=user_id, bot_id=bot_id, app=pair.app, due_ts=due,
                last_inbound_ts=pair.last_inbound_ts, inbound_in_window=inbound_in_window,
            ))
        self.dirty.add(user_id)

    def _check_engaged(self, inbound_in_window: int) -> Check:
        needed = self.settings.min_inbound
        detail = f"{inbound_in_window} of {needed} inbound messages in the window"
        return Check("engaged", inbound_in_window >= needed, detail)

    @staticmethod
    def _check_one_per_silence(pair: PairState) -> Check:
        if pair.emitted_at is None or pair.last_inbound_ts > pair.emitted_at:
            return Check("one_per_silence", True)
        return Check("one_per_silence", False, "a follow-up was already sent since the last inbound message")

    def _check_messaging_window(self, pair: PairState, due: int) -> Check:
        if pair.last_inbound_ts < 0:
            return Check("messaging_window", False, "the user never wrote")
        waited = due - pair.last_inbound_ts
        detail = f"{waited // 60_000} min after the last inbound message, limit {self.settings.messaging_window // 60_000} min"
        return Check("messaging_window", waited <= self.settings.messaging_window, detail)

    def _check_age(self, user: UserState) -> Check:
        if user.minor:
            return Check("age", False, "the user is a minor")
        if user.minor is None and self.settings.unknown_age == "deny":
            return Check("age", False, "the user's age is unknown and unknown_age is deny")
        return Check("age", True)

    def _check_quiet_hours(self, pair: PairState, send_at: int | None) -> Check:
        if send_at is None:
            return Check("quiet_hours", True)
        if send_at - pair.last_inbound_ts > self.settings.messaging_window:
            return Check("quiet_hours", False, "quiet hours end outside the messaging window")
        return Check("quiet_hours", True, "held back to the end of quiet hours")

    def _check_cap(self, user: UserState, at: int) -> Check:
        settings = self.settings
        self._prune_sends(user)
        day = sum(1 for ts in user.sends if at - DAY_MS < ts <= at)
        week = sum(1 for ts in user.sends if at - WEEK_MS < ts <= at)
        if settings.user_cap_day and day >= settings.user_cap_day:
            return Check("user_cap", False, f"{day} follow-ups to this user in 24 hours")
        if settings.user_cap_week and week >= settings.user_cap_week:
            return Check("user_cap", False, f"{week} follow-ups to this user in 7 days")
        return Check("user_cap", True)

    def _prune_sends(self, user: UserState) -> None:
        # A decision may run after its due time (at the next record), and a late message
        # can still make one due after clock - W: keep what such a decision would count.
        horizon = self.clock - self.settings.window - WEEK_MS
        if user.sends and user.sends[0] <= horizon:
            user.sends = tuple(ts for ts in user.sends if ts > horizon)

    def _expiry(self, pair: PairState) -> int:
        """When a silent pair can be forgotten without changing any later decision.

        A late event may still arrive with ts >= clock - W, and its decision (at ts + D or
        later) counts inbound messages after ts + D - W. Once the clock is past
        L + max(2W - D, W + D), every message of the pair is at or below that horizon, and
        such an event comes after any follow-up sent.
        """
        window, delay = self.settings.window, self.settings.idle_delay
        return pair.last_ts + max(2 * window - delay, window + delay) + 1

    def _expire(self, user_id: str, user: UserState, bot_id: str) -> None:
        del user.pairs[bot_id]
        self._prune_sends(user)
        if user.is_empty():
            del self.users[user_id]
        self.dirty.add(user_id)

    # -- state -------------------------------------------------------------------------

    def load_user(self, user_id: str, user: UserState) -> None:
        """Install a user's state (recovered from a changelog) and index its due times."""
        user_id = sys.intern(user_id)
        self.users[user_id] = user
        for bot_id, pair in user.pairs.items():
            self._schedule(user_id, bot_id, pair, pair.due if pair.due is not None else self._expiry(pair))

    def export_meta(self) -> dict:
        """What this core holds beyond its users: the clock and the kill switches."""
        return {"clock": self.clock, "kills": self.kills.to_dict()}

    def import_meta(self, meta: dict) -> None:
        self.clock = max(self.clock, meta["clock"])
        self.kills = KillSwitches.from_dict(meta["kills"])

    def pairs_tracked(self) -> int:
        return sum(len(user.pairs) for user in self.users.values())


def _passes(reason: str | None) -> tuple[bool, str]:
    return (reason is None, reason or "")
