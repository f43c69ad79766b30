"""The decision core compiled (``native/``, the ``relance_native`` extension), behind the
interface of ``domain.rules.DecisionCore``: the engine's hot path, where the Python core
spends about 14 us a record.

It is the same rule, step for step, not another one: ``tests/test_native_core.py`` drives
both cores on the same streams (realistic traffic, and generated ones with every control,
duplicate, late and early record) and requires the same requests, decisions, counts and
changelog bytes. The Python core stays the reference, and runs ``relance replay`` and
``store = rocksdb``. What the compiled core asks back of Python is what is not a rule of
its own: the stop-word and distress detectors (``domain/safety.py``), for the few texts
that could match, and where quiet hours end.
"""
from __future__ import annotations

from relance_native import NativeCore

from domain.rules import DecisionCore, describe, message_clock
from domain.safety import DistressClassifier, PhraseListClassifier, folded_stop_words, is_stop_word, quiet_hours_end
from domain.state import KillSwitches, UserState, from_changelog, pack_user, unpack_user
from foundation.settings import Settings
from schemas.records import (
    APPS, Check, ControlEvent, DecisionRecord, EncodedDecision, Erase, FollowupRequest, Kill, MessageEvent, OptIn, OptOut, Profile,
    Tick, decode_record,
)

_APP_INDEX = {app: index for index, app in enumerate(APPS)}
_FALLBACK = 3            # NativeCore.feed_json: not the common shape; Python reads it
_PACKED_FORMAT = 1       # domain/state.py's changelog byte for the packed form


class NativeDecisionCore:
    """``DecisionCore``'s interface over ``relance_native.NativeCore``: users live in the
    compiled core (in memory), decisions come out as the same records."""

    def __init__(self, settings: Settings, classifier: DistressClassifier | None = None) -> None:
        self.settings = settings
        self._wall = settings.clock == "wall"
        self._window = settings.window
        self.classifier = classifier or PhraseListClassifier()
        phrases = self.classifier.folded_phrases if type(self.classifier) is PhraseListClassifier else None
        quiet = settings.quiet_hours
        rules = (self._wall, settings.window, settings.idle_delay, settings.messaging_window, settings.min_inbound,
                 settings.distress_cooloff, settings.unknown_age == "deny", settings.holdout, settings.user_cap_day,
                 settings.user_cap_week)
        self._native = NativeCore(rules, self._text_check,
                                  None if quiet is None else lambda due, tz: quiet_hours_end(due, tz, quiet),
                                  sorted(folded_stop_words()), phrases)
        self.kills = KillSwitches()
        self.stats = {"duplicates": 0, "too_old": 0, "stop_words": 0, "distress": 0}
        self.duplicates_by_app: dict[str, int] = {}
        self.distress_languages: list[str] = []

    @property
    def clock(self) -> int:
        return self._native.clock

    def _text_check(self, text: str) -> tuple[bool, bool]:
        """Python's detectors, for a text the compiled core could not rule out."""
        detection = self.classifier.detect(text)
        if detection is not None:
            self.stats["distress"] += 1
            self.distress_languages.append(detection.language)
        return is_stop_word(text), detection is not None

    # -- feeding -----------------------------------------------------------------------

    def feed_encoded(self, value: bytes, stream_clock: int | None, now: int | None) -> str | None:
        """``DecisionCore.feed_encoded``: the common message shape read and applied in the
        compiled core; anything else read by Python (``decode_record``, which says what is
        wrong with an invalid record) and fed as a record."""
        code = self._native.feed_json(value, stream_clock, now)
        if code != _FALLBACK:
            return APPS[code]
        record = decode_record(value)
        self.feed(record, now)
        return record.app if type(record) is MessageEvent else None

    def feed_records(self, records: list, start: int, now: int | None, clock_header: str | None) -> tuple[int, list[int]]:
        """Records with ``value`` and ``headers`` (a Kafka batch) from ``start``, in the
        compiled core, up to the first one it leaves to Python (``feed_encoded`` of its
        value, after its stream clock): that one's index, and the message events applied
        per app (in APPS' order)."""
        return self._native.feed_records(records, start, now, clock_header)

    def feed(self, record: MessageEvent | ControlEvent, now: int | None = None) -> None:
        wall = self._wall
        if type(record) is MessageEvent:
            target = message_clock(record, now if wall else None)
            self._native.feed_message(target, record.event_id, _APP_INDEX[record.app], record.user_id, record.bot_id,
                                      record.direction == "inbound", record.ts, record.text)
            return
        if isinstance(record, Tick):
            self._native.advance(now if wall else record.ts, True)
            return
        self._native.advance(now if wall else self.clock, False)
        self._apply_control(record)

    def _apply_control(self, event: ControlEvent) -> None:
        native = self._native
        if isinstance(event, Kill):
            self.kills.apply(event)
            native.set_kills(self.kills.everything, sorted(self.kills.bots), sorted(self.kills.apps))
        elif isinstance(event, Erase):
            native.erase(event.user_id)
        elif isinstance(event, Profile):
            native.profile(event.user_id, event.tz, event.minor)
        elif isinstance(event, OptOut):
            native.opt_out(event.user_id, event.bot_id)
        elif isinstance(event, OptIn):
            native.opt_in(event.user_id, event.bot_id)

    def advance(self, to: int | None, inclusive: bool) -> None:
        self._native.advance(to, inclusive)

    def _add_counts(self, duplicates: list[tuple[str, int]], too_old: int, stop_words: int) -> None:
        for app, count in duplicates:
            self.duplicates_by_app[app] = self.duplicates_by_app.get(app, 0) + count
            self.stats["duplicates"] += count
        self.stats["too_old"] += too_old
        self.stats["stop_words"] += stop_words

    def drain(self) -> tuple[list[FollowupRequest], list[DecisionRecord], list[str], set[str]]:
        requests, decisions, erased, dirty, counts = self._native.drain()
        self._add_counts(*counts)
        return ([FollowupRequest(*request) for request in requests],
                [DecisionRecord(*head, tuple(map(Check._make, checks))) for *head, checks in decisions],
                erased, set(dirty))

    def drain_encoded(self) -> tuple[list[FollowupRequest], list[EncodedDecision], list[str], set[str]]:
        """``drain``, each decision's JSON written by the compiled core (the same bytes as
        ``DecisionRecord.to_json``)."""
        requests, decisions, erased, dirty, counts = self._native.drain_encoded()
        self._add_counts(*counts)
        return ([FollowupRequest(*request) for request in requests], list(map(EncodedDecision._make, decisions)),
                erased, set(dirty))

    # -- state -------------------------------------------------------------------------

    def changelog_value(self, user_id: str) -> bytes | None:
        return self._native.changelog_value(user_id)

    def load_changelog(self, user_id: str, value: bytes) -> None:
        """A user from ``engine.state``: the packed form as it is, JSON (older versions) packed first."""
        if value[:1] == bytes((_PACKED_FORMAT,)):
            self._native.load_packed(user_id, value[1:])
        else:
            self.load_user(user_id, from_changelog(value))

    def load_user(self, user_id: str, user: UserState) -> None:
        self._native.load_packed(user_id, pack_user(user, queue=False))

    def user(self, user_id: str) -> UserState | None:
        """A copy of the user as objects (``relance explain``, tests): changing it changes nothing."""
        packed = self._native.packed(user_id)
        return None if packed is None else unpack_user(packed)

    def forget_user(self, user_id: str) -> None:
        self._native.forget_user(user_id)

    def has_user(self, user_id: str) -> bool:
        return self._native.has_user(user_id)

    def pack_idle(self) -> int:
        """Nothing to pack: the compiled core holds every user compactly already."""
        return 0

    def pairs_tracked(self) -> int:
        return self._native.pairs_tracked()

    def export_meta(self) -> dict:
        return {"clock": self.clock, "kills": self.kills.to_dict()}

    def import_meta(self, meta: dict) -> None:
        self._native.clock = max(self.clock, meta["clock"])
        self.kills = KillSwitches.from_dict(meta["kills"])
        self._native.set_kills(self.kills.everything, sorted(self.kills.bots), sorted(self.kills.apps))

    def describe(self, user_id: str, bot_id: str) -> dict:
        return describe(self.user(user_id), bot_id, self.clock, self._window, self.kills)


def decision_core(settings: Settings) -> DecisionCore | NativeDecisionCore:
    """The core ``settings.core`` names; the compiled one holds users in memory only."""
    if settings.core == "native" and settings.store == "memory":
        return NativeDecisionCore(settings)
    return DecisionCore(settings)
