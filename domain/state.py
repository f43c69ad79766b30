"""What the decision core remembers of each user, and its two encodings.

- ``pack_user``/``unpack_user``: one ``bytes`` per idle user in a worker's memory, about
  70 bytes a pair and 16 a kept message, a fifth of what Python objects take. The core
  unpacks a user when it is next needed (``DecisionCore.pack_idle``).
- ``changelog_value``/``from_changelog``: the same packed bytes, without the in-process
  due-heap entries, for the changelog (``engine.state``); ``from_changelog`` also reads
  the JSON of ``to_dict``/``from_dict`` that earlier versions wrote.
"""
from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_right
from dataclasses import dataclass, field

import orjson

from schemas.records import APPS, Kill

APP_NAMES = {app: app for app in APPS}  # one string object per app, not one per pair


@dataclass(slots=True)
class PairState:
    """What the rule needs of one (user, bot): every message that may still count or come
    again, and the times the rule reads.

    ``inbound`` and ``outbound`` hold the pair's messages as ``[ts, key, ts, key, ...]``
    (``key`` is ``rules.event_key``), in ascending ``ts``: the inbound ones give the exact
    count of any window, and both recognise a re-sent webhook (spec section 4). Messages
    that can no longer count nor be re-sent are dropped (``forget_until``), so a pair holds
    about one window of its conversation, packed: a million pairs must fit in a worker.
    """

    inbound: array = field(default_factory=lambda: array("q"))
    outbound: array = field(default_factory=lambda: array("q"))
    last_ts: int = -1                 # L: latest message either way
    last_inbound_ts: int = -1         # I: latest inbound message
    last_inbound_key: int = 0         # event_key of the latest inbound message
    app: str = ""                     # app of the latest inbound (of any message before one)
    due: int | None = None            # next decision: L + D, or the end of quiet hours
    emitted_at: int | None = None     # send time of the last follow-up emitted
    queued: int | None = field(default=None, compare=False)  # its one due-heap entry; not saved

    def inbound_times(self) -> list[int]:
        return list(self.inbound[0::2])

    def add(self, ts: int, key: int, inbound: bool) -> bool:
        """Keep a message in time order; False if one with the same key is kept already."""
        if _holds_key(self.inbound.tobytes() + self.outbound.tobytes(), key.to_bytes(8, _ORDER, signed=True)):
            return False
        packed = self.inbound if inbound else self.outbound
        at = len(packed)
        if not at or packed[at - 2] <= ts:  # nearly always in order
            packed.append(ts)
            packed.append(key)
            return True
        while at >= 2 and packed[at - 2] > ts:
            at -= 2
        packed[at:at] = array("q", (ts, key))
        return True

    def inbound_between(self, since: int, until: int) -> int:
        """How many distinct inbound messages have ``since < ts <= until``."""
        times = self.inbound[0::2]
        return bisect_right(times, until) - bisect_right(times, since)

    def forget_until(self, horizon: int) -> None:
        """Drop the messages with ``ts <= horizon``."""
        inbound, outbound = self.inbound, self.outbound
        if inbound and inbound[0] <= horizon:
            del inbound[:2 * bisect_right(inbound[0::2], horizon)]
        if outbound and outbound[0] <= horizon:
            del outbound[:2 * bisect_right(outbound[0::2], horizon)]

    def to_dict(self) -> dict:
        return {
            "inbound": self.inbound.tolist(), "outbound": self.outbound.tolist(), "last_ts": self.last_ts,
            "last_inbound_ts": self.last_inbound_ts, "last_inbound_key": self.last_inbound_key,
            "app": self.app, "due": self.due, "emitted_at": self.emitted_at,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "PairState":
        return cls(
            # A record written before outbound messages were kept has none: it reads as such.
            inbound=array("q", data["inbound"]), outbound=array("q", data.get("outbound", ())),
            last_ts=data["last_ts"], last_inbound_ts=data["last_inbound_ts"],
            last_inbound_key=data["last_inbound_key"], app=APP_NAMES.get(data["app"], data["app"]),
            due=data["due"], emitted_at=data["emitted_at"],
        )


_ORDER = sys.byteorder


def _holds_key(raw: bytes, needle: bytes) -> bool:
    """Whether the bytes of ``[ts, key, ...]`` (one array or several joined) hold the key
    whose bytes are ``needle``: searched in the raw bytes (``in`` on an array makes an int
    of every item), at key places only."""
    at = raw.find(needle)
    while at >= 0:
        if at % 16 == 8:
            return True
        at = raw.find(needle, at + 1)
    return False


NOBODY: frozenset[str] = frozenset()


@dataclass(slots=True)
class SafetyFacts:
    """What a user said about follow-ups, and what was seen of them: opt-outs, age, distress.

    The decision core holds them in each ``UserState``; the context stage mirrors them in
    Redis (``agents/context.py``) for the last-moment check. Both change them only through
    these methods, so the two cannot disagree on what an opt-out or an opt-in means.
    Rarely set fields hold shared immutable empties, replaced on write.
    """

    minor: bool | None = None
    opt_out_all: bool = False
    opt_out_bots: frozenset[str] = NOBODY
    opt_in_bots: frozenset[str] = NOBODY       # exceptions to opt_out_all
    opt_in_at: dict[str, int] | None = None     # bot ("*" for all) -> clock of the opt-in
    distress_until: int = -1

    def opted_out(self, bot_id: str) -> bool:
        if bot_id in self.opt_out_bots:
            return True
        return self.opt_out_all and bot_id not in self.opt_in_bots

    def opted_in_at(self, bot_id: str) -> int:
        if self.opt_in_at is None:
            return -1
        return max(self.opt_in_at.get(bot_id, -1), self.opt_in_at.get("*", -1))

    def opt_out(self, bot_id: str | None) -> None:
        if bot_id is None:
            self.opt_out_all = True
            self.opt_in_bots = NOBODY
            return
        self.opt_out_bots = self.opt_out_bots | {bot_id}
        self.opt_in_bots = self.opt_in_bots - {bot_id}

    def opt_in(self, bot_id: str | None, clock: int) -> None:
        # Remembered so that a late or re-sent stop word from before the opt-in is ignored.
        self.opt_in_at = {**(self.opt_in_at or {}), bot_id or "*": clock}
        if bot_id is None:
            self.opt_out_all = False
            self.opt_out_bots = self.opt_in_bots = NOBODY
            return
        self.opt_out_bots = self.opt_out_bots - {bot_id}
        if self.opt_out_all:
            self.opt_in_bots = self.opt_in_bots | {bot_id}

    def stop_word(self, bot_id: str, ts: int) -> bool:
        """A stop word written to a bot at ``ts``: an opt-out, unless an opt-in came after it."""
        if ts <= self.opted_in_at(bot_id):
            return False
        self.opt_out(bot_id)
        return True

    def distressed(self, ts: int, cooloff: int) -> None:
        self.distress_until = max(self.distress_until, ts + cooloff)

    def age_stops(self, unknown_age: str) -> bool:
        """Known as a minor, or of unknown age where the setting denies those."""
        return self.minor is True or (self.minor is None and unknown_age == "deny")

    def facts_dict(self) -> dict:
        return {
            "minor": self.minor, "opt_out_all": self.opt_out_all,
            "opt_out_bots": sorted(self.opt_out_bots), "opt_in_bots": sorted(self.opt_in_bots),
            "opt_in_at": self.opt_in_at or {}, "distress_until": self.distress_until,
        }

    @staticmethod
    def facts_from(data: dict) -> dict:
        """The constructor's arguments for the facts of a ``facts_dict``."""
        return {
            "minor": data["minor"], "opt_out_all": data["opt_out_all"],
            "opt_out_bots": frozenset(data["opt_out_bots"]), "opt_in_bots": frozenset(data["opt_in_bots"]),
            "opt_in_at": dict(data["opt_in_at"]) or None, "distress_until": data["distress_until"],
        }


@dataclass(slots=True)
class UserState(SafetyFacts):
    """One user across every bot and app: safety facts, time zone, cap history and pairs.

    Rarely set fields hold shared immutable empties, replaced on write, so a user
    costs little more than its pairs.
    """

    tz: str | None = None
    sends: tuple[int, ...] = ()                 # send times of recent follow-ups, ascending
    pairs: dict[str, PairState] = field(default_factory=dict)

    def forgettable(self, clock: int, window: int, idle_delay: int) -> bool:
        """Nothing left that a later record could need: no pair, profile, opt-out or kept
        follow-up, no cool-off that could still cover a decision, no opt-in that a late
        stop word (one not older than ``clock - window``) could come from before.

        A late message (not older than ``clock - window``) can still make a decision due
        at ``clock - window + idle_delay``, long before the clock: a cool-off that covers
        that time must stay, though the clock has passed its end (spec section 4, "a late
        event still counts if the decision it could change has not been made yet")."""
        return (not self.pairs and self.tz is None and self.minor is None
                and not self.opt_out_all and not self.opt_out_bots and not self.opt_in_bots
                and not self.sends and self.distress_until <= clock - window + idle_delay
                and all(at < clock - window for at in (self.opt_in_at or {}).values()))

    def to_dict(self) -> dict:
        return {
            "tz": self.tz, **self.facts_dict(), "sends": list(self.sends),
            "pairs": {bot: pair.to_dict() for bot, pair in self.pairs.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "UserState":
        return cls(
            tz=data["tz"], **cls.facts_from(data), sends=tuple(data["sends"]),
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


# -- packed ----------------------------------------------------------------------------------

# A user: pair count and the length of its rare fields (JSON, often empty). Then per
# pair: bot id length, app, last_ts, last_inbound_ts, last_inbound_key, due, emitted_at,
# queued, inbound and outbound message counts; the bot id; the pair's inbound then
# outbound messages as they are kept, ``[ts, key, ...]`` 8 bytes each: copied, not
# converted, as a pair is packed at every checkpoint and unpacked at its next message.
# Little-endian, so that the same bytes serve as the changelog's value.
_USER = struct.Struct("<HH")
_PAIR = struct.Struct("<HBqqqqqqII")
_ABSENT = -(1 << 63)               # None in a packed int field
_APP_CODES = ("", *APPS)           # a pair's app is "" until its first message names one
_APP_CODE = {app: code for code, app in enumerate(_APP_CODES)}
_SWAP = sys.byteorder == "big"     # arrays hold native order; packed bytes are little-endian
# The user's rarely set fields: packed only when not at their default; read back with a type.
_RARE = {"tz": (None, str), "minor": (None, bool), "opt_out_all": (False, bool),
         "opt_out_bots": (NOBODY, frozenset), "opt_in_bots": (NOBODY, frozenset),
         "opt_in_at": (None, dict), "distress_until": (-1, int), "sends": ((), tuple)}


def pack_user(user: UserState, queue: bool = True) -> bytes:
    """The user as bytes; ``queue=False`` leaves out each pair's due-heap entry, which
    only means something in the process that made it."""
    rare = {name: value for name, (default, _) in _RARE.items() if (value := getattr(user, name)) != default}
    rare_json = orjson.dumps(rare, default=sorted) if rare else b""  # sorted: the frozensets
    parts = [_USER.pack(len(user.pairs), len(rare_json)), rare_json]
    for bot_id, pair in user.pairs.items():
        bot = bot_id.encode()
        parts.append(_PAIR.pack(
            len(bot), _APP_CODE[pair.app], pair.last_ts, pair.last_inbound_ts, pair.last_inbound_key,
            _ABSENT if pair.due is None else pair.due, _ABSENT if pair.emitted_at is None else pair.emitted_at,
            _ABSENT if pair.queued is None or not queue else pair.queued, len(pair.inbound) // 2, len(pair.outbound) // 2,
        ))
        parts.append(bot)
        parts.append(_little_endian(pair.inbound))
        parts.append(_little_endian(pair.outbound))
    return b"".join(parts)


def unpack_user(packed: bytes) -> UserState:
    pairs, rare_length = _USER.unpack_from(packed, 0)
    at = _USER.size
    user = UserState()
    if rare_length:
        for name, value in orjson.loads(packed[at:at + rare_length]).items():
            setattr(user, name, _RARE[name][1](value))
        at += rare_length
    for _ in range(pairs):
        (bot_length, app, last_ts, last_inbound_ts, last_inbound_key, due, emitted_at, queued,
         inbound, outbound) = _PAIR.unpack_from(packed, at)
        at += _PAIR.size
        bot_id = sys.intern(str(packed[at:at + bot_length], "utf-8"))
        at += bot_length
        inbound_messages, at = _messages(packed, at, inbound)
        outbound_messages, at = _messages(packed, at, outbound)
        user.pairs[bot_id] = PairState(
            inbound=inbound_messages, outbound=outbound_messages,
            last_ts=last_ts, last_inbound_ts=last_inbound_ts, last_inbound_key=last_inbound_key,
            app=_APP_CODES[app], due=None if due == _ABSENT else due,
            emitted_at=None if emitted_at == _ABSENT else emitted_at, queued=None if queued == _ABSENT else queued,
        )
    return user


def _little_endian(messages: array) -> bytes:
    if _SWAP:
        messages = array("q", messages)
        messages.byteswap()
    return messages.tobytes()


def _messages(packed: bytes, at: int, count: int) -> tuple[array, int]:
    """The ``count`` messages packed at ``at``, and where the next field starts."""
    messages = array("q")
    end = at + 16 * count
    messages.frombytes(packed[at:end])
    if _SWAP:
        messages.byteswap()
    return messages, end


def packed_pairs(packed: bytes) -> int:
    return _USER.unpack_from(packed, 0)[0]


# -- the changelog -----------------------------------------------------------------------------

# The first byte of a changelog value says its format: JSON (``to_dict``) starts with "{",
# as every value written before this format did; the packed form starts with this byte.
_PACKED_FORMAT = b"\x01"


def changelog_value(user: UserState) -> bytes:
    """A user's ``engine.state`` value: packed, about 16 bytes a kept message where JSON
    took 40, and encoded ten times faster (a worker writes every changed user at each
    checkpoint)."""
    return _PACKED_FORMAT + pack_user(user, queue=False)


def from_changelog(value: bytes) -> UserState:
    """The user of an ``engine.state`` value in either format."""
    if value[:1] == b"{":
        return UserState.from_dict(orjson.loads(value))
    if value[:1] != _PACKED_FORMAT:
        raise ValueError(f"engine.state value of unknown format {value[:1]!r}")
    return unpack_user(memoryview(value)[1:])
