"""The decision core: spec sections 3, 4 and 6, with no Kafka, Faust or Redis.

One ``DecisionCore`` holds the state of a set of users (a Kafka partition's worth in a
worker, everything in ``relance replay``) and turns an ordered stream of records into
follow-up requests and decision records. The engine stage (``agents/engine.py``) and the
replay tool (``relance replay``) both feed it; nothing else decides.

Order (spec section 4): a record first moves the clock, then every decision due before
the clock happens, in due order (ties: user_id, then bot_id), then the record takes
effect. A tick also lets the decisions due exactly at the clock happen.
"""
from __future__ import annotations

import hashlib
import heapq
import sys
from bisect import bisect_right
from typing import MutableMapping, Protocol

from domain.safety import DistressClassifier, PhraseListClassifier, is_stop_word, quiet_hours_end
from domain.state import (
    APP_NAMES, KillSwitches, PairState, UserState, changelog_value, from_changelog, pack_user, packed_pairs, unpack_user,
)
from foundation.settings import Settings
from schemas.records import (
    Check, ControlEvent, DecisionRecord, EncodedDecision, Erase, FollowupRequest, InvalidRecord, Kill,
    MessageEvent, OptIn, OptOut, Profile, Tick, decode_record, format_ts,
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


def message_clock(event: MessageEvent, now: int | None) -> int:
    """The clock a message moves a core to: ``now`` in wall mode, its own ts in event mode
    (``now`` None). Raises InvalidRecord for a message too far ahead of the wall clock."""
    if now is None:
        return event.ts
    if event.ts > now + FUTURE_TOLERANCE_MS:
        raise InvalidRecord(f"ts is more than 5 minutes ahead of the clock ({event.ts - now} ms)", "future_ts")
    return now


def event_key(app: str, event_id: str) -> int:
    """A message's identity, ``(app, event_id)``, as a signed 64-bit hash: 8 bytes, not 100."""
    digest = hashlib.blake2b(f"{app}:{event_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


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

    def __init__(self, settings: Settings, classifier: DistressClassifier | None = None,
                 idle: MutableMapping[str, bytes] | None = None, due: DueTimes | None = None) -> None:
        self.settings = settings
        # Read on every message: plain attributes, not settings lookups.
        self._wall = settings.clock == "wall"
        self._window, self._idle_delay, self._messaging_window = settings.window, settings.idle_delay, settings.messaging_window
        self.classifier = classifier or PhraseListClassifier()
        self._engaged: dict[int, Check] = {}
        self.clock = -1
        self.kills = KillSwitches()
        # Users as objects while they change; idle ones packed (bytes) in ``idle``, a dict
        # or any mapping the caller gives (on disk, say), until next needed: see pack_idle.
        self.users: dict[str, UserState] = {}
        self.idle: MutableMapping[str, bytes] = {} if idle is None else idle
        self._touched: set[str] = set()    # users changed since the last pack_idle
        self._pairs = 0
        self.due_times: DueTimes = HeapDueTimes() if due is None else due  # one entry per pair
        self._next_due = _NEVER  # the earliest time in due_times, read on every record
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
        wall = self._wall
        if type(record) is MessageEvent:  # nearly every record: checked first
            target = message_clock(record, now if wall else None)
            if target > self.clock or self._next_due < self.clock:  # else advance has nothing to do
                self.advance(target, inclusive=False)
            self._apply_message(record)
            return
        if isinstance(record, Tick):
            self.advance(now if wall else record.ts, inclusive=True)
            return
        self.advance(now if wall else self.clock, inclusive=False)
        self._apply_control(record)

    def advance(self, to: int | None, inclusive: bool) -> None:
        """Move the clock (never backwards) and make every decision now due."""
        if to is not None and to > self.clock:
            self.clock = to
        while self._next_due < self.clock or (inclusive and self._next_due == self.clock):
            time, user_id, bot_id = self.due_times.pop()
            earliest = self.due_times.earliest()
            self._next_due = _NEVER if earliest is None else earliest
            user = self.user(user_id)
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
                self._expire(user_id, user, bot_id, time)

    def _schedule(self, user_id: str, bot_id: str, pair: PairState, time: int) -> None:
        """Make sure the pair comes up by ``time``: one heap entry per pair, not per message."""
        if pair.queued is None or time < pair.queued:
            pair.queued = time
            self.due_times.push(time, user_id, bot_id)
            if time < self._next_due:
                self._next_due = time

    def drain(self) -> tuple[list[FollowupRequest], list[DecisionRecord], list[str], set[str]]:
        """Take what the steps since the last drain produced."""
        out = (self.requests, self.decisions, self.erased, self.dirty)
        self._touched |= self.dirty
        self.requests, self.decisions, self.erased, self.dirty = [], [], [], set()
        return out

    def drain_encoded(self) -> tuple[list[FollowupRequest], list[EncodedDecision], list[str], set[str]]:
        """``drain``, each decision encoded once, as the engine publishes it."""
        requests, decisions, erased, dirty = self.drain()
        return requests, [EncodedDecision.of(decision) for decision in decisions], erased, dirty

    def user(self, user_id: str) -> UserState | None:
        """A user's state as objects, unpacked if it was idle."""
        user = self.users.get(user_id)
        if user is not None:
            return user
        packed = self.idle.pop(user_id, None)
        if packed is None:
            return None
        user = self.users[sys.intern(user_id)] = unpack_user(packed)
        return user

    def has_user(self, user_id: str) -> bool:
        return user_id in self.users or user_id in self.idle

    def pack_idle(self) -> int:
        """Pack the users unchanged since the last call into ``idle``: bytes instead of
        objects, a fifth of the memory. Users that keep changing stay objects. Returns
        how many were packed."""
        keep = self._touched | self.dirty
        idle = [user_id for user_id in self.users if user_id not in keep]
        for user_id in idle:
            self.idle[user_id] = pack_user(self.users.pop(user_id))
        self._touched = set()
        return len(idle)

    # -- messages ----------------------------------------------------------------------

    def _apply_message(self, event: MessageEvent) -> None:
        ts = event.ts
        if ts < self.clock - self._window:  # "older than the clock minus W"
            self.stats["too_old"] += 1
            return
        user_id, bot_id = event.user_id, event.bot_id
        user = self.users.get(user_id)
        if user is None:
            user = self.user(user_id) or self._new_user(user_id)
        pair = user.pairs.get(bot_id)
        if pair is None:
            pair = user.pairs[sys.intern(bot_id)] = PairState()
            self._pairs += 1
        app = APP_NAMES[event.app]
        inbound = event.direction == "inbound"
        key = event_key(app, event.event_id)
        if not pair.add(ts, key, inbound):  # a re-sent webhook, whatever its ts: one message
            self.stats["duplicates"] += 1
            self.duplicates_by_app[app] = self.duplicates_by_app.get(app, 0) + 1
            return
        if inbound:
            self._record_inbound(event, key, app, user, pair)
        elif pair.last_inbound_ts < 0 and ts >= pair.last_ts:
            pair.app = app
        if ts > pair.last_ts:
            pair.last_ts = ts
            pair.due = ts + self._idle_delay
            if pair.queued is None or pair.due < pair.queued:
                self._schedule(user_id, bot_id, pair, pair.due)
        pair.forget_until(self._horizon(pair))
        self.dirty.add(user_id)

    def _record_inbound(self, event: MessageEvent, key: int, app: str, user: UserState, pair: PairState) -> None:
        if event.ts >= pair.last_inbound_ts:  # same ms: the later arrival is the latest
            pair.last_inbound_ts = event.ts
            pair.last_inbound_key = key
            pair.app = app
        if is_stop_word(event.text) and user.stop_word(event.bot_id, event.ts):
            self.stats["stop_words"] += 1
        detection = self.classifier.detect(event.text)
        if detection is not None:
            self.stats["distress"] += 1
            self.distress_languages.append(detection.language)
            user.distressed(event.ts, self.settings.distress_cooloff)

    def _horizon(self, pair: PairState) -> int:
        """The messages with ``ts`` at or below this can neither count nor come again.

        A re-sent copy changes nothing while its first could still count: every message
        with ``ts >= clock - W`` is kept (older events change nothing anyway). The next
        decision of the pair is at ``L + D`` or later, and a late message can make one
        due no earlier than ``clock - W + D``: it counts messages after that minus W.
        """
        clock, window = self.clock, self._window
        since = clock - window
        return min(since - 1, (pair.last_ts if pair.last_ts > since else since) + self._idle_delay - window)

    # -- control -----------------------------------------------------------------------

    def _apply_control(self, event: ControlEvent) -> None:
        if isinstance(event, Kill):
            self.kills.apply(event)
            return
        if isinstance(event, Erase):
            self.forget_user(event.user_id)
            self.erased.append(event.user_id)
            self.dirty.add(event.user_id)
            return
        user = self.user(event.user_id) or self._new_user(event.user_id)
        if isinstance(event, Profile):
            user.tz, user.minor = event.tz, event.minor
        elif isinstance(event, OptOut):
            user.opt_out(event.bot_id)
        elif isinstance(event, OptIn):
            user.opt_in(event.bot_id, self.clock)
        self.dirty.add(event.user_id)

    # -- the rule ----------------------------------------------------------------------

    def _decide(self, user_id: str, user: UserState, bot_id: str, pair: PairState, due: int) -> None:
        """The rule at ``due``: the pair's T, or the T' it was deferred to (spec section 3).

        Inside quiet hours the follow-up waits for their end if that is still within M of
        the last inbound message, and nothing else is judged now: at T' everything is
        judged as it stands then. Otherwise every condition is judged at ``due``.
        """
        send_at = quiet_hours_end(due, user.tz, self.settings.quiet_hours)
        inbound_in_window = pair.inbound_between(due - self._window, due)
        if send_at is not None and 0 <= pair.last_inbound_ts and send_at - pair.last_inbound_ts <= self._messaging_window:
            pair.due = send_at
            self._schedule(user_id, bot_id, pair, send_at)
            self._record(user_id, bot_id, pair, due, send_at, DEFERRED, None, inbound_in_window, (_QUIET_HELD_BACK,))
            return
        kill = self.kills.stops(bot_id, pair.app)
        checks = (
            self._check_engaged(inbound_in_window),
            self._check_one_per_silence(pair),
            self._check_messaging_window(pair, due),
            _PASSED["kill_switch"] if kill is None else Check("kill_switch", False, kill),
            _OPTED_OUT if user.opted_out(bot_id) else _PASSED["opt_out"],
            self._check_age(user),
            _DISTRESSED if due < user.distress_until else _PASSED["distress"],
            _IN_HOLDOUT if in_holdout(user_id, bot_id, self.settings.holdout) else _PASSED["holdout"],
            _PASSED["quiet_hours"] if send_at is None else _QUIET_PAST_WINDOW,
            self._check_cap(user, due),
        )
        failed = next((check.rule for check in checks if not check.passed), None)
        pair.due = None
        if failed is None:
            pair.emitted_at = due
            user.sends = tuple(sorted((*user.sends, due)))
        self._schedule(user_id, bot_id, pair, self._expiry(pair))
        pair.forget_until(self._horizon(pair))
        decision = self._record(user_id, bot_id, pair, due, send_at or due, SUPPRESSED if failed else EMITTED,
                                failed, inbound_in_window, checks)
        if failed is None:
            self.requests.append(FollowupRequest(
                decision.followup_id, user_id, bot_id, pair.app, due, pair.last_inbound_ts, inbound_in_window,
            ))

    def _record(self, user_id: str, bot_id: str, pair: PairState, due: int, send_at: int, outcome: str,
                failed: str | None, inbound_in_window: int, checks: tuple[Check, ...]) -> DecisionRecord:
        fid = followup_id(user_id, bot_id, pair.last_inbound_ts, pair.last_inbound_key)
        decision = DecisionRecord(
            fid, user_id, bot_id, pair.app, due, send_at, self.clock, outcome, failed,
            inbound_in_window, max(pair.last_inbound_ts, 0), checks,
        )
        self.decisions.append(decision)
        self.dirty.add(user_id)
        return decision

    def _check_engaged(self, inbound_in_window: int) -> Check:
        check = self._engaged.get(inbound_in_window)
        if check is None:  # a handful of counts: each Check is made once
            needed = self.settings.min_inbound
            detail = f"{inbound_in_window} of {needed} inbound messages in the window"
            check = self._engaged[inbound_in_window] = Check("engaged", inbound_in_window >= needed, detail)
        return check

    @staticmethod
    def _check_one_per_silence(pair: PairState) -> Check:
        if pair.emitted_at is None or pair.last_inbound_ts > pair.emitted_at:
            return _PASSED["one_per_silence"]
        return _ALREADY_SENT

    def _check_messaging_window(self, pair: PairState, due: int) -> Check:
        if pair.last_inbound_ts < 0:
            return _NEVER_WROTE
        waited = due - pair.last_inbound_ts
        detail = f"{waited // 60_000} min after the last inbound message, limit {self.settings.messaging_window // 60_000} min"
        return Check("messaging_window", waited <= self.settings.messaging_window, detail)

    def _check_age(self, user: UserState) -> Check:
        if user.minor:
            return _MINOR
        if user.minor is None and self.settings.unknown_age == "deny":
            return _AGE_UNKNOWN
        return _PASSED["age"]

    def _check_cap(self, user: UserState, at: int) -> Check:
        """Suppressed if, with a follow-up sent at ``at``, some 24 hours (7 days) would hold
        more than the cap: the user's follow-ups on both sides of ``at`` count, since a
        decision made late, after a late message, can send before one already sent."""
        self._prune_sends(user, at)
        for span, cap, name in ((DAY_MS, self.settings.user_cap_day, "24 hours"),
                                (WEEK_MS, self.settings.user_cap_week, "7 days")):
            if cap and _crowded(user.sends, at, span, cap):
                return Check("user_cap", False, f"{cap} follow-ups to this user already within {name} of it")
        return _PASSED["user_cap"]

    def _prune_sends(self, user: UserState, now_due: int) -> None:
        # Decisions run in due order, some after their due time (a tick may jump days),
        # and a late message can still make one due after clock - W: no later decision is
        # earlier than both, and it looks a week back.
        horizon = min(now_due, self.clock - self._window) - WEEK_MS
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

    def _expire(self, user_id: str, user: UserState, bot_id: str, time: int) -> None:
        del user.pairs[bot_id]
        self._pairs -= 1
        self._prune_sends(user, time)
        if user.forgettable(self.clock, self._window, self._idle_delay):
            self.forget_user(user_id)
        self.dirty.add(user_id)

    # -- state -------------------------------------------------------------------------

    def load_user(self, user_id: str, user: UserState) -> None:
        """Install a user's state (recovered from a changelog), in place of any before,
        and index its due times. Packed at once: most users of a restored partition are idle."""
        self.forget_user(user_id)
        user_id = sys.intern(user_id)
        for bot_id, pair in user.pairs.items():
            self._schedule(user_id, bot_id, pair, pair.due if pair.due is not None else self._expiry(pair))
        self.idle[user_id] = pack_user(user)
        self._pairs += len(user.pairs)

    def _new_user(self, user_id: str) -> UserState:
        user_id = sys.intern(user_id)
        user = self.users[user_id] = UserState()
        return user

    def forget_user(self, user_id: str) -> None:
        """Drop a user's state (erased, or replaced while restoring); its due times lapse."""
        user = self.users.pop(user_id, None)
        if user is not None:
            self._pairs -= len(user.pairs)
        packed = self.idle.pop(user_id, None)
        if packed is not None:
            self._pairs -= packed_pairs(packed)

    def export_meta(self) -> dict:
        """What this core holds beyond its users: the clock and the kill switches."""
        return {"clock": self.clock, "kills": self.kills.to_dict()}

    def import_meta(self, meta: dict) -> None:
        self.clock = max(self.clock, meta["clock"])
        self.kills = KillSwitches.from_dict(meta["kills"])

    def pairs_tracked(self) -> int:
        return self._pairs

    def describe(self, user_id: str, bot_id: str) -> dict:
        """What this core holds about a pair and its user, for a person (``relance explain``)."""
        return describe(self.user(user_id), bot_id, self.clock, self._window, self.kills)

    # -- the engine's own steps: one record's value, one user's changelog ---------------

    def feed_encoded(self, value: bytes, stream_clock: int | None, now: int | None) -> str | None:
        """One record's value as the engine reads it, after the feeder's stream clock (event
        mode) if it carried one; the app of a message event, None for a control record.
        Raises InvalidRecord."""
        if stream_clock is not None:
            self.advance(stream_clock, inclusive=False)
        record = decode_record(value)
        self.feed(record, now)
        return record.app if type(record) is MessageEvent else None

    def changelog_value(self, user_id: str) -> bytes | None:
        """The user's ``engine.state`` value, None if this core holds nothing of it."""
        user = self.user(user_id)
        return None if user is None else changelog_value(user)

    def load_changelog(self, user_id: str, value: bytes) -> None:
        self.load_user(user_id, from_changelog(value))


_NEVER = 1 << 62  # later than any due time


def _crowded(sends: tuple[int, ...], at: int, span: int, cap: int) -> bool:
    """Would ``cap + 1`` of ``sends`` (ascending) and ``at`` fall within one span of ``span``
    ms, the one at ``at`` among them? Sends exactly ``span`` apart are not in one span."""
    near = [ts for ts in sends if at - span < ts < at + span]
    if len(near) < cap:
        return False
    index = bisect_right(near, at)
    near.insert(index, at)
    for first in range(max(0, index - cap), min(index, len(near) - 1 - cap) + 1):
        if near[first + cap] - near[first] < span:
            return True
    return False


def describe(user: UserState | None, bot_id: str, clock: int, window: int, kills: KillSwitches) -> dict:
    """A user and one of its pairs as a core holds them, for a person (``relance explain``)."""
    pair = user.pairs.get(bot_id) if user is not None else None
    return {
        "clock": _ts(clock), "known": pair is not None, "kills": kills.to_dict(),
        "user": _describe_user(user) if user is not None else None,
        "pair": _describe_pair(pair, clock, window) if pair is not None else None,
    }


def _describe_user(user: UserState) -> dict:
    return {
        "tz": user.tz, "minor": user.minor, "opt_out_all": user.opt_out_all,
        "opt_out_bots": sorted(user.opt_out_bots), "opt_in_bots": sorted(user.opt_in_bots),
        "distress_until": _ts(user.distress_until),
        "sends": [_ts(ts) for ts in user.sends], "bots": sorted(user.pairs),
    }


def _describe_pair(pair: PairState, clock: int, window: int) -> dict:
    return {
        "app": pair.app,
        "inbound_in_window": [_ts(ts) for ts in pair.inbound_times() if ts > clock - window],
        "last_ts": _ts(pair.last_ts), "last_inbound_ts": _ts(pair.last_inbound_ts),
        "due": _ts(pair.due), "emitted_at": _ts(pair.emitted_at),
    }


def _ts(ms: int | None) -> str | None:
    """A time for a person; the state's "never" (None or negative) as null."""
    return None if ms is None or ms < 0 else format_ts(ms)


class DueTimes(Protocol):
    """The pairs' next due times, earliest first; ties by user, then bot."""

    def push(self, time: int, user_id: str, bot_id: str) -> None: ...
    def pop(self) -> tuple[int, str, str]: ...
    def earliest(self) -> int | None: ...


class HeapDueTimes:
    """Due times in a heap in memory."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str, str]] = []

    def push(self, time: int, user_id: str, bot_id: str) -> None:
        # Interned: the users dict, the pairs dicts and the heap share one string each.
        heapq.heappush(self._heap, (time, sys.intern(user_id), sys.intern(bot_id)))

    def pop(self) -> tuple[int, str, str]:
        return heapq.heappop(self._heap)

    def earliest(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)


# Most checks of most decisions come out the same: each such Check is made once.
_PASSED = {rule: Check(rule, True) for rule in RULES}
_ALREADY_SENT = Check("one_per_silence", False, "a follow-up was already sent since the last inbound message")
_NEVER_WROTE = Check("messaging_window", False, "the user never wrote")
_OPTED_OUT = Check("opt_out", False, "the user opted out")
_MINOR = Check("age", False, "the user is a minor")
_AGE_UNKNOWN = Check("age", False, "the user's age is unknown and unknown_age is deny")
_DISTRESSED = Check("distress", False, "signs of distress, cooling off")
_IN_HOLDOUT = Check("holdout", False, "pair is in the holdout")
_QUIET_PAST_WINDOW = Check("quiet_hours", False, "quiet hours end outside the messaging window")
_QUIET_HELD_BACK = Check("quiet_hours", True, "held back to the end of quiet hours")
