"""What the decision core remembers of each user, and its two encodings.

- ``to_dict``/``from_dict``: JSON for the changelog (``engine.state``), readable and
  stable across versions.
- ``pack_user``/``unpack_user``: one ``bytes`` per idle user in a worker's memory. A
  million pairs as Python objects take about 900 bytes each; packed, about 160. The
  core unpacks a user when it is next needed (``DecisionCore.pack_idle``).
"""
from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass, field

import orjson

from schemas.records import APPS, Kill

APP_NAMES = {app: app for app in APPS}  # one string object per app, not one per pair


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
            app=APP_NAMES.get(data["app"], data["app"]), due=data["due"], emitted_at=data["emitted_at"],
        )


NOBODY: frozenset[str] = frozenset()


@dataclass(slots=True)
class UserState:
    """One user across every bot and app: profile, opt-outs, cap history and pairs.

    Rarely set fields hold shared immutable empties, replaced on write, so a user
    costs little more than its pairs.
    """

    tz: str | None = None
    minor: bool | None = None
    opt_out_all: bool = False
    opt_out_bots: frozenset[str] = NOBODY
    opt_in_bots: frozenset[str] = NOBODY       # exceptions to opt_out_all
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


# -- packed ----------------------------------------------------------------------------------

# A user: pair count and the length of its rare fields (JSON, often empty). Then per
# pair: bot id length, app, last_ts, last_inbound_ts, last_inbound_key, due, emitted_at,
# queued, inbound message count; the bot id; the inbound (ts, key) pairs. Native byte
# order: packed users never leave the process.
_USER = struct.Struct("=HH")
_PAIR = struct.Struct("=HBqqqqqqH")
_ABSENT = -(1 << 63)               # None in a packed int field
_APP_CODES = ("", *APPS)           # a pair's app is "" until its first message names one
_APP_CODE = {app: code for code, app in enumerate(_APP_CODES)}
# The user's rarely set fields: packed only when not at their default; read back with a type.
_RARE = {"tz": (None, str), "minor": (None, bool), "opt_out_all": (False, bool),
         "opt_out_bots": (NOBODY, frozenset), "opt_in_bots": (NOBODY, frozenset),
         "opt_in_at": (None, dict), "distress_until": (-1, int), "sends": ((), tuple)}


def pack_user(user: UserState) -> bytes:
    rare = {name: getattr(user, name) for name, (default, _) in _RARE.items() if getattr(user, name) != default}
    rare_json = orjson.dumps(rare, default=sorted) if rare else b""  # sorted: the frozensets
    parts = [_USER.pack(len(user.pairs), len(rare_json)), rare_json]
    for bot_id, pair in user.pairs.items():
        bot = bot_id.encode()
        parts.append(_PAIR.pack(
            len(bot), _APP_CODE[pair.app], pair.last_ts, pair.last_inbound_ts, pair.last_inbound_key,
            _ABSENT if pair.due is None else pair.due, _ABSENT if pair.emitted_at is None else pair.emitted_at,
            _ABSENT if pair.queued is None else pair.queued, len(pair.inbound) // 2,
        ))
        parts.append(bot)
        parts.append(pair.inbound.tobytes())
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
        bot_length, app, last_ts, last_inbound_ts, last_inbound_key, due, emitted_at, queued, inbound = \
            _PAIR.unpack_from(packed, at)
        at += _PAIR.size
        bot_id = sys.intern(packed[at:at + bot_length].decode())
        at += bot_length
        messages = array("q")
        messages.frombytes(packed[at:at + 16 * inbound])
        at += 16 * inbound
        user.pairs[bot_id] = PairState(
            messages, last_ts, last_inbound_ts, last_inbound_key, _APP_CODES[app],
            None if due == _ABSENT else due, None if emitted_at == _ABSENT else emitted_at,
            None if queued == _ABSENT else queued,
        )
    return user


def packed_pairs(packed: bytes) -> int:
    return _USER.unpack_from(packed, 0)[0]
