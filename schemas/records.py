"""Typed records of every topic, parsed and written with orjson.

The JSON Schema documents beside this module describe the same records for other
programs; ``tests/test_schemas.py`` keeps the two in agreement.
"""
from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Annotated, Any, Callable, Iterable, Iterator, Literal, NamedTuple, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import orjson

APPS = ("facebook", "instagram", "whatsapp")
DIRECTIONS = ("inbound", "outbound")
KILL_SCOPES = ("bot", "app", "all")
MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 8192
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_MESSAGE_FIELDS = ("event_id", "app", "user_id", "bot_id", "direction", "ts", "text")


class InvalidRecord(ValueError):
    """A record that breaks its contract. The message is a reason a person can read (it goes
    into the dead letter); ``kind`` is a bounded word for metrics and alerts
    (``foundation.metrics.DEAD_LETTER_REASONS``)."""

    def __init__(self, reason: str, kind: str = "invalid_field") -> None:
        super().__init__(reason)
        self.kind = kind

    def located(self, where: str) -> "InvalidRecord":
        """The same error, its reason prefixed by where it sits in a larger document."""
        return InvalidRecord(f"{where}: {self}", self.kind)


# -- time ------------------------------------------------------------------------------

def parse_ts(value: Any, name: str = "ts") -> int:
    """An RFC 3339 date-time with a zone, or integer epoch milliseconds, as epoch milliseconds."""
    if isinstance(value, str):
        ms = _parse_rfc3339(value, name)
    elif isinstance(value, int) and not isinstance(value, bool):
        ms = value
    else:
        # Not a float, even a whole one: JSON Schema counts 1.0 as an integer, but JSON
        # readers in most languages read it as a double.
        shown = "a boolean" if isinstance(value, bool) else f"got {type(value).__name__}"
        raise InvalidRecord(f"{name} must be an RFC 3339 string or epoch milliseconds, {shown}")
    if not 0 <= ms <= MAX_TS_MS:
        raise InvalidRecord(f"{name} {value!r} is out of range")
    return ms


# RFC 3339 section 5.6 `date-time`, as the `ts` pattern of the JSON Schemas reads it,
# and nothing else of ISO 8601: no basic format, no week or ordinal dates, no missing
# seconds, no `+0100` offsets, no `,` fractions. `T` and `Z` may be lower case
# (section 5.6 allows it); the space that the section's note allows in place of `T` is
# refused, as the schemas refuse it, so that every reader of the topics agrees. Seconds
# stop at 59 (no leap second: epoch milliseconds cannot hold one). Fraction digits past
# the millisecond are matched but not captured: truncated, never rounded up into the
# next second. Groups: date and time to the minute, second, milliseconds, zone.
_RFC3339 = re.compile(
    r"([0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9])"
    r":([0-5][0-9])(?:\.([0-9]{1,3})[0-9]*)?([Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_MAX_TS_TEXT = 40  # the schemas' maxLength


def _parse_rfc3339(text: str, name: str) -> int:
    # fullmatch, not match with `$`: `$` also matches before a trailing newline.
    match = _RFC3339.fullmatch(text) if len(text) <= _MAX_TS_TEXT else None
    if match is None:
        raise InvalidRecord(f"{name} {text[:_MAX_TS_TEXT]!r} is not an RFC 3339 date-time with a zone")
    minute, second, millis, zone = match.groups()
    try:
        ms = _minute_ms(minute)
    except ValueError:
        raise InvalidRecord(f"{name} {text!r} names a day its month does not have") from None
    return ms + _TWO_DIGITS[second] * 1000 + _FRACTION_MS[millis] - _zone_ms(zone)


# When the stream is busy its timestamps crowd into the same few minutes: caching the
# minute skips the calendar for all but the first of them. Keys are text the regex
# matched and the cache is bounded, so input cannot grow it.
@lru_cache(maxsize=4096)
def _minute_ms(minute: str) -> int:
    """``YYYY-MM-DDTHH:MM`` as epoch milliseconds; ValueError for a day that does not exist."""
    day = _day_ms(minute[:10])
    if day is None:
        raise ValueError(minute)
    return day + (_TWO_DIGITS[minute[11:13]] * 60 + _TWO_DIGITS[minute[14:16]]) * 60_000


@lru_cache(maxsize=1024)
def _day_ms(text: str) -> int | None:
    """``YYYY-MM-DD`` as epoch milliseconds (negative before 1970); None for anything else."""
    if _DATE.fullmatch(text) is None:
        return None
    try:  # fromisoformat checks the month has the day
        return (date.fromisoformat(text).toordinal() - _EPOCH_ORDINAL) * 86_400_000
    except ValueError:
        return None


_DATE = re.compile(r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])")


@lru_cache(maxsize=64)  # a stream sees a handful of zones; the regex bounds the keys
def _zone_ms(zone: str) -> int:
    """How far ahead of UTC a ``Z`` or ``±HH:MM`` zone is, in milliseconds."""
    if zone in ("Z", "z"):
        return 0
    ahead = (int(zone[1:3]) * 60 + int(zone[4:6])) * 60_000
    return ahead if zone[0] == "+" else -ahead


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# Lookups, cheaper than int() on the hot path. A fraction of one or two digits is tenths
# or hundredths ("5" is 500 ms); no fraction is None.
_TWO_DIGITS = {f"{n:02d}": n for n in range(60)}
_FRACTION_MS = {None: 0, **{
    digits: int(digits.ljust(3, "0"))
    for digits in (f"{n:0{width}d}" for width in (1, 2, 3) for n in range(10 ** width))
}}
# format_ts joins a cached minute prefix to one of these: no strftime, no datetime.
_SECONDS = tuple(f"{second:02d}." for second in range(60))
_MILLIS = tuple(f"{millis:03d}Z" for millis in range(1000))


def format_ts(ms: int) -> str:
    """Epoch milliseconds (0 to 9999-12-31T23:59:59.999Z) as ``2026-11-28T09:30:00.000Z``."""
    minute, rest = divmod(ms, 60_000)
    return _minute_prefix(minute) + _SECONDS[rest // 1000] + _MILLIS[rest % 1000]


@lru_cache(maxsize=4096)
def _minute_prefix(minute: int) -> str:
    """Epoch minutes as ``2026-11-28T09:30:``."""
    day, minute_of_day = divmod(minute, 1440)
    hour, minute = divmod(minute_of_day, 60)
    return f"{date.fromordinal(day + _EPOCH_ORDINAL).isoformat()}T{hour:02d}:{minute:02d}:"


# -- helpers ---------------------------------------------------------------------------

def _object(obj: Any) -> dict:
    if not isinstance(obj, dict):
        raise InvalidRecord(f"a record must be a JSON object, got {type(obj).__name__}", "not_object")
    return obj


def _identifier(obj: dict, name: str, *, nullable: bool = False) -> str | None:
    if name not in obj:
        if nullable:
            return None
        raise InvalidRecord(f"missing field {name}", "missing_field")
    value = obj[name]
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRecord(f"{name} must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidRecord(f"{name} is {len(value)} characters long, more than {MAX_ID_LENGTH}")
    return value


def _one_of(obj: dict, name: str, allowed: tuple[str, ...]) -> str:
    value = obj.get(name)
    if value not in allowed:
        shown = "missing" if name not in obj else repr(value)[:40]
        raise InvalidRecord(f"{name} is {shown}, expected one of {', '.join(allowed)}")
    return value


def loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(f"not JSON: {exc}", "not_json") from None


# -- canonical message event -----------------------------------------------------------

@dataclass(slots=True)  # not frozen: a frozen __init__ costs a third of the parse
class MessageEvent:
    """One message between a user and a bot, in the canonical form of topic ``messages``."""

    event_id: str
    app: str
    user_id: str
    bot_id: str
    direction: str
    ts: int
    text: str
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def inbound(self) -> bool:
        return self.direction == "inbound"

    def to_dict(self) -> dict:
        body = dict(self.extra)
        body.update(message_fields(self.event_id, self.app, self.user_id, self.bot_id, self.direction, self.ts,
                                   self.text))
        return body

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def message_fields(event_id: str, app: str, user_id: str, bot_id: str, direction: str, ts: int, text: str) -> dict:
    """A canonical message event's own fields as they are written (section 5): the one
    place their names and order are, for ``MessageEvent`` and for ingest's compiled path,
    which writes events without making the record."""
    return {"event_id": event_id, "app": app, "user_id": user_id, "bot_id": bot_id, "direction": direction,
            "ts": format_ts(ts), "text": text}


def parse_message(obj: Any) -> MessageEvent:
    """Validate a decoded canonical message event; raises InvalidRecord with the reason."""
    event = _common_message(obj)
    return event if event is not None else _checked_message(obj)


def _checked_message(obj: Any) -> MessageEvent:
    """Every field checked one by one: the reason for anything invalid, and the rare shapes."""
    obj = _object(obj)
    event_id = _identifier(obj, "event_id")
    text = obj.get("text", None)
    if "text" not in obj:
        raise InvalidRecord("missing field text", "missing_field")
    if not isinstance(text, str):
        raise InvalidRecord("text must be a string")
    if len(text) > MAX_TEXT_LENGTH:
        raise InvalidRecord(f"text is {len(text)} characters long, more than {MAX_TEXT_LENGTH}")
    if "ts" not in obj:
        raise InvalidRecord("missing field ts", "missing_field")
    extra = {k: v for k, v in obj.items() if k not in _MESSAGE_FIELDS} if len(obj) > 7 else {}
    return MessageEvent(
        event_id=event_id,
        app=_one_of(obj, "app", APPS),
        user_id=_identifier(obj, "user_id"),
        bot_id=_identifier(obj, "bot_id"),
        direction=_one_of(obj, "direction", DIRECTIONS),
        ts=parse_ts(obj["ts"]),
        text=text,
        extra=extra,
    )


def _common_message(obj: Any) -> MessageEvent | None:
    """The shape nearly every record has, checked in a few comparisons; None for the rest.

    Accepts only what the full validation accepts, with the same result (a property test
    holds the two together): the seven fields, nothing else, and ``ts`` written as the
    producers write it, ``YYYY-MM-DDTHH:MM:SS.mmmZ``. Anything else, including every
    invalid record, takes the full path, which says what is wrong.
    """
    if type(obj) is not dict or len(obj) != 7:
        return None
    get = obj.get
    event_id, app, user_id, bot_id = get("event_id"), get("app"), get("user_id"), get("bot_id")
    direction, ts, text = get("direction"), get("ts"), get("text")
    if not (type(event_id) is str and type(user_id) is str and type(bot_id) is str and type(text) is str
            and 0 < len(event_id) <= MAX_ID_LENGTH and 0 < len(user_id) <= MAX_ID_LENGTH
            and 0 < len(bot_id) <= MAX_ID_LENGTH and len(text) <= MAX_TEXT_LENGTH
            and type(app) is str and app in _APP_SET and type(direction) is str and direction in _DIRECTION_SET
            and type(ts) is str):
        return None
    ms = _producers_ts(ts)
    return None if ms is None else MessageEvent(event_id, app, user_id, bot_id, direction, ms, text, {})


def _producers_ts(ts: str) -> int | None:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ``, the producers' format, as epoch ms; None for any other."""
    if not (len(ts) == 24 and ts[23] == "Z" and ts[19] == "."):
        return None
    day = _day_ms(ts[:10])
    hour, minute, second = _HOURS.get(ts[11:13]), _TWO_DIGITS.get(ts[14:16]), _TWO_DIGITS.get(ts[17:19])
    millis = _THREE_DIGITS.get(ts[20:23])
    if (day is None or day < 0 or hour is None or minute is None or second is None or millis is None
            or ts[10] != "T" or ts[13] != ":" or ts[16] != ":"):
        return None
    return day + hour * 3_600_000 + minute * 60_000 + second * 1000 + millis


_Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]


class _CommonShape(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """``_common_message``'s shape for msgspec's compiled decoder: JSON to checked fields in
    one pass, no dict in between. Exactly these seven fields (duplicates: the last, as
    orjson); anything else fails here and takes the full path."""

    event_id: _Identifier
    app: Literal[APPS]
    user_id: _Identifier
    bot_id: _Identifier
    direction: Literal[DIRECTIONS]
    ts: str
    text: Annotated[str, msgspec.Meta(max_length=MAX_TEXT_LENGTH)]


_decode_common_shape = msgspec.json.Decoder(_CommonShape).decode


def decode_record(data: bytes) -> MessageEvent | ControlEvent:
    """``parse_record(loads(data))``, the common message shape decoded and checked in one
    compiled pass: a third of the time on the engine's hot path. Everything else (control
    records, rare shapes, every invalid record) takes ``loads`` and ``parse_record``, which
    say what is wrong; a property test holds the two paths together."""
    try:
        shape = _decode_common_shape(data)
    except msgspec.DecodeError:  # ValidationError included
        return parse_record(loads(data))
    ms = _producers_ts(shape.ts)
    if ms is None:
        return parse_record(loads(data))
    return MessageEvent(shape.event_id, shape.app, shape.user_id, shape.bot_id, shape.direction, ms, shape.text, {})


_APP_SET = frozenset(APPS)
_DIRECTION_SET = frozenset(DIRECTIONS)
_THREE_DIGITS = {f"{n:03d}": n for n in range(1000)}
_HOURS = {f"{n:02d}": n for n in range(24)}


# -- control events --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Profile:
    user_id: str
    tz: str | None
    minor: bool | None
    type: Literal["profile"] = "profile"


@dataclass(frozen=True, slots=True)
class OptOut:
    user_id: str
    bot_id: str | None
    type: Literal["opt_out"] = "opt_out"


@dataclass(frozen=True, slots=True)
class OptIn:
    user_id: str
    bot_id: str | None
    type: Literal["opt_in"] = "opt_in"


@dataclass(frozen=True, slots=True)
class Kill:
    scope: str
    id: str | None
    on: bool
    type: Literal["kill"] = "kill"


@dataclass(frozen=True, slots=True)
class Erase:
    user_id: str
    type: Literal["erase"] = "erase"


@dataclass(frozen=True, slots=True)
class Tick:
    ts: int
    type: Literal["tick"] = "tick"


ControlEvent = Union[Profile, OptOut, OptIn, Kill, Erase, Tick]
CONTROL_TYPES = ("profile", "opt_out", "opt_in", "kill", "erase", "tick")


def _time_zone(obj: dict) -> str | None:
    tz = obj.get("tz")
    if tz is None:
        return None
    if not isinstance(tz, str) or not tz or len(tz) > 64:
        raise InvalidRecord("tz must be an IANA time zone name such as Europe/Paris")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRecord(f"tz {tz!r} is not a known IANA time zone") from None
    return tz


def parse_control(obj: Any) -> ControlEvent:
    """Validate a decoded control event or tick; raises InvalidRecord with the reason."""
    obj = _object(obj)
    kind = _one_of(obj, "type", CONTROL_TYPES)
    if kind == "tick":
        if "ts" not in obj:
            raise InvalidRecord("missing field ts", "missing_field")
        return Tick(ts=parse_ts(obj["ts"]))
    if kind == "kill":
        scope = _one_of(obj, "scope", KILL_SCOPES)
        on = obj.get("on", True)
        if not isinstance(on, bool):
            raise InvalidRecord("on must be true or false")
        if scope == "all":
            return Kill(scope=scope, id=None, on=on)
        target = _identifier(obj, "id")
        if scope == "app" and target not in APPS:
            raise InvalidRecord(f"kill of app {target!r}: expected one of {', '.join(APPS)}")
        return Kill(scope=scope, id=target, on=on)
    user_id = _identifier(obj, "user_id")
    if kind == "profile":
        minor = obj.get("minor")
        if minor is not None and not isinstance(minor, bool):
            raise InvalidRecord("minor must be true, false or left out")
        return Profile(user_id=user_id, tz=_time_zone(obj), minor=minor)
    if kind == "erase":
        return Erase(user_id=user_id)
    bot_id = _identifier(obj, "bot_id", nullable=True)
    return OptOut(user_id, bot_id) if kind == "opt_out" else OptIn(user_id, bot_id)


def control_to_dict(event: ControlEvent) -> dict:
    if isinstance(event, Tick):
        return {"type": "tick", "ts": format_ts(event.ts)}
    if isinstance(event, Kill):
        return {"type": "kill", "scope": event.scope, "id": event.id, "on": event.on}
    if isinstance(event, Profile):
        body = {"type": "profile", "user_id": event.user_id, "tz": event.tz}
        if event.minor is not None:
            body["minor"] = event.minor
        return body
    if isinstance(event, Erase):
        return {"type": "erase", "user_id": event.user_id}
    return {"type": event.type, "user_id": event.user_id, "bot_id": event.bot_id}


def parse_record(obj: Any) -> MessageEvent | ControlEvent:
    """A replay line: a record with ``type`` is a control event or tick, else a message."""
    event = _common_message(obj)
    if event is not None:
        return event
    obj = _object(obj)
    return parse_control(obj) if "type" in obj else _checked_message(obj)


def clocked_records(lines: Iterable[bytes | str],
                    on_error: Callable[[int, str], None]) -> Iterator[tuple[int, MessageEvent | ControlEvent]]:
    """The records of a replay file (spec section 8), each with the stream's clock where it
    stands: the largest ``ts`` of a message or tick so far (section 4), which is also the
    time of a control event there. An invalid line goes to ``on_error(number, reason)``."""
    clock = -1
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = parse_record(loads(line))
        except InvalidRecord as exc:
            on_error(number, str(exc))
            continue
        if isinstance(record, (MessageEvent, Tick)):
            clock = max(clock, record.ts)
        yield clock, record


# -- outputs of the engine -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FollowupRequest:
    """A follow-up the rules allow, on topic ``followups.requested``, key ``user_id``."""

    followup_id: str
    user_id: str
    bot_id: str
    app: str
    due_ts: int
    last_inbound_ts: int
    inbound_in_window: int

    def to_dict(self) -> dict:
        return {
            "followup_id": self.followup_id, "user_id": self.user_id, "bot_id": self.bot_id,
            "app": self.app, "due_ts": format_ts(self.due_ts),
            "last_inbound_ts": format_ts(self.last_inbound_ts),
            "inbound_in_window": self.inbound_in_window,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def parse_followup(obj: Any) -> FollowupRequest:
    obj = _object(obj)
    count = obj.get("inbound_in_window")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise InvalidRecord("inbound_in_window must be a non-negative integer")
    for name in ("due_ts", "last_inbound_ts"):
        if name not in obj:
            raise InvalidRecord(f"missing field {name}", "missing_field")
    return FollowupRequest(
        followup_id=_identifier(obj, "followup_id"),
        user_id=_identifier(obj, "user_id"),
        bot_id=_identifier(obj, "bot_id"),
        app=_one_of(obj, "app", APPS),
        due_ts=parse_ts(obj["due_ts"], "due_ts"),
        last_inbound_ts=parse_ts(obj["last_inbound_ts"], "last_inbound_ts"),
        inbound_in_window=count,
    )


@dataclass(frozen=True, slots=True)
class FollowupAttempt:
    """A request waiting for another generation try, on ``followups.retry``, key ``user_id``:
    the request's fields, the tries already made, and when it may be tried again."""

    request: FollowupRequest
    tries: int = 0
    not_before: int | None = None  # wall ms

    def to_json(self) -> bytes:
        return _with_tries(self.request.to_dict(), self.tries, self.not_before)


def parse_attempt(obj: Any) -> FollowupAttempt:
    """A retry record, or a plain request (no tries yet)."""
    request = parse_followup(obj)
    return FollowupAttempt(request, *_tries_and_not_before(obj))


def _with_tries(body: dict, tries: int, not_before: int | None) -> bytes:
    """A retry record: the record's fields, the tries made, and when to try again."""
    body["tries"] = tries
    if not_before is not None:
        body["not_before"] = format_ts(not_before)
    return orjson.dumps(body)


def _tries_and_not_before(obj: dict) -> tuple[int, int | None]:
    tries = obj.get("tries", 0)
    if not isinstance(tries, int) or isinstance(tries, bool) or tries < 0:
        raise InvalidRecord("tries must be a non-negative integer")
    not_before = obj.get("not_before")
    return tries, None if not_before is None else parse_ts(not_before, "not_before")


# What can happen to a follow-up, in the order of its story (spec section 9, "Receipts
# back"): handed to its delivery topic with text, or ended before (cancelled, dead-lettered);
# then sent (or unknown), failed; then delivered, read, answered.
OUTCOMES = ("generated", "cancelled", "dead_lettered", "sent", "unknown", "failed", "delivered", "read", "answered")
# Why a request is cancelled between the decision and the hand-over (spec section 3).
CANCEL_REASONS = ("user_returned", "opted_out", "minor", "distress", "killed", "erased", "window_closed")


@dataclass(frozen=True, slots=True)
class FollowupOutcome:
    """One step of a follow-up's story, on ``followups.outcomes``, key ``user_id``.

    ``reason``: for ``cancelled`` one of ``CANCEL_REASONS``; for ``dead_lettered`` and
    ``failed`` a short word (``unknown_bot``, ``generation_failed``, the platform's error
    code such as ``131026``); else null. ``tries``: tries made by the stage that wrote it
    (generation tries; send attempts for the sender; 0 for a receipt or an answer). ``at``:
    when it happened (wall time; for a receipt, the platform's time; for ``answered``, the
    ts of the user's answer, within M of the send: ``agents/context.py``).
    """

    followup_id: str
    user_id: str
    bot_id: str
    app: str
    outcome: str
    reason: str | None
    tries: int
    at: int

    @classmethod
    def of(cls, request: FollowupRequest, outcome: str, reason: str | None, tries: int, at: int) -> "FollowupOutcome":
        return cls(request.followup_id, request.user_id, request.bot_id, request.app, outcome, reason, tries, at)

    def to_dict(self) -> dict:
        return {
            "followup_id": self.followup_id, "user_id": self.user_id, "bot_id": self.bot_id,
            "app": self.app, "outcome": self.outcome, "reason": self.reason, "tries": self.tries,
            "at": format_ts(self.at),
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def parse_outcome(obj: Any) -> FollowupOutcome:
    obj = _object(obj)
    outcome = _one_of(obj, "outcome", OUTCOMES)
    reason = obj.get("reason")
    if outcome == "cancelled" and reason not in CANCEL_REASONS:
        raise InvalidRecord(f"a cancelled follow-up's reason must be one of {', '.join(CANCEL_REASONS)}")
    if reason is not None and (not isinstance(reason, str) or not reason or len(reason) > MAX_ID_LENGTH):
        raise InvalidRecord(f"reason must be null or a non-empty string of at most {MAX_ID_LENGTH} characters")
    tries = obj.get("tries")
    if not isinstance(tries, int) or isinstance(tries, bool) or tries < 0:
        raise InvalidRecord("tries must be a non-negative integer")
    if "at" not in obj:
        raise InvalidRecord("missing field at", "missing_field")
    return FollowupOutcome(
        followup_id=_identifier(obj, "followup_id"), user_id=_identifier(obj, "user_id"),
        bot_id=_identifier(obj, "bot_id"), app=_one_of(obj, "app", APPS), outcome=outcome,
        reason=reason, tries=tries, at=parse_ts(obj["at"], "at"),
    )


# What a platform says of a message the bot sent, in the order of its life.
RECEIPT_KINDS = ("sent", "delivered", "read", "failed")


@dataclass(frozen=True, slots=True)
class Receipt:
    """A platform's word about a message the bot sent (spec section 9, "Receipts back"): a
    WhatsApp status, or a Messenger/Instagram delivery, read or echo (an echo says ``sent``).

    It names its follow-up by the id the send carried (``followup_id``: WhatsApp's
    ``biz_opaque_callback_data``, Messenger's ``message.metadata``), by the platform's
    message ids (``mids``), or by a ``watermark``: everything the bot sent the user up to
    that time. ``ts``: the platform's time of it. ``error_code``: why it ``failed``.
    """

    app: str
    kind: str
    user_id: str
    bot_id: str
    ts: int
    followup_id: str | None = None
    mids: tuple[str, ...] = ()
    watermark: int | None = None
    error_code: str | None = None


class Check(NamedTuple):
    """One rule checked by a decision, and what it found (a tuple: ten per decision)."""

    rule: str
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict:
        return {"rule": self.rule, "passed": self.passed, "detail": self.detail}


@lru_cache(maxsize=4096)  # most checks are the same few: each one's JSON is made once
def _check_json(check: Check) -> bytes:
    return orjson.dumps(check.to_dict())


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """Every decision, sent or not, on topic ``decisions``, key ``user_id``.

    ``outcome`` is ``emitted``, ``suppressed`` or ``deferred`` (held back by quiet hours
    to ``send_ts``); ``stopped_by`` names the first rule that failed.
    """

    followup_id: str
    user_id: str
    bot_id: str
    app: str
    due_ts: int
    send_ts: int
    decided_at: int
    outcome: str
    stopped_by: str | None
    inbound_in_window: int
    last_inbound_ts: int
    checks: tuple[Check, ...]

    def to_dict(self) -> dict:
        body = self.to_dict_without_checks()
        body["checks"] = [check.to_dict() for check in self.checks]
        return body

    def to_dict_without_checks(self) -> dict:
        return {
            "followup_id": self.followup_id, "user_id": self.user_id, "bot_id": self.bot_id,
            "app": self.app, "due_ts": format_ts(self.due_ts), "send_ts": format_ts(self.send_ts),
            "decided_at": format_ts(self.decided_at), "outcome": self.outcome,
            "stopped_by": self.stopped_by, "inbound_in_window": self.inbound_in_window,
            "last_inbound_ts": format_ts(self.last_inbound_ts),
        }

    def to_json(self) -> bytes:
        """``to_dict`` as JSON, the checks' JSON made once per distinct check and spliced in."""
        body = self.to_dict_without_checks()
        body["checks"] = orjson.Fragment(b"[" + b",".join([_check_json(check) for check in self.checks]) + b"]")
        return orjson.dumps(body)


class EncodedDecision(NamedTuple):
    """A decision as the engine publishes it: ``DecisionRecord.to_json``'s bytes, with
    what it is counted and kept by (no record object, nor one per check, on the hot path)."""

    json: bytes
    user_id: str
    bot_id: str
    outcome: str
    stopped_by: str | None
    due_ts: int

    @classmethod
    def of(cls, decision: DecisionRecord) -> "EncodedDecision":
        return cls(decision.to_json(), decision.user_id, decision.bot_id, decision.outcome, decision.stopped_by,
                   decision.due_ts)


DECISION_OUTCOMES = ("emitted", "suppressed", "deferred")


def parse_decision(obj: Any) -> DecisionRecord:
    """Validate a decoded decision record (what ``relance report`` and ``explain`` read back)."""
    obj = _object(obj)
    outcome = _one_of(obj, "outcome", DECISION_OUTCOMES)
    stopped_by = obj.get("stopped_by")
    if stopped_by is not None and (not isinstance(stopped_by, str) or not stopped_by):
        raise InvalidRecord("stopped_by must be null or the name of a rule")
    count = obj.get("inbound_in_window")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise InvalidRecord("inbound_in_window must be a non-negative integer")
    checks = obj.get("checks")
    if not isinstance(checks, list):
        raise InvalidRecord("checks must be a list of {rule, passed, detail}")
    for name in ("due_ts", "send_ts", "decided_at", "last_inbound_ts"):
        if name not in obj:
            raise InvalidRecord(f"missing field {name}", "missing_field")
    return DecisionRecord(
        followup_id=_identifier(obj, "followup_id"), user_id=_identifier(obj, "user_id"),
        bot_id=_identifier(obj, "bot_id"), app=_one_of(obj, "app", APPS),
        due_ts=parse_ts(obj["due_ts"], "due_ts"), send_ts=parse_ts(obj["send_ts"], "send_ts"),
        decided_at=parse_ts(obj["decided_at"], "decided_at"), outcome=outcome, stopped_by=stopped_by,
        inbound_in_window=count, last_inbound_ts=parse_ts(obj["last_inbound_ts"], "last_inbound_ts"),
        checks=tuple(_check(check) for check in checks),
    )


def _check(obj: Any) -> Check:
    if not isinstance(obj, dict):
        raise InvalidRecord("each check must be an object {rule, passed, detail}")
    rule, passed, detail = obj.get("rule"), obj.get("passed"), obj.get("detail")
    if not isinstance(rule, str) or not rule or not isinstance(passed, bool) or not isinstance(detail, str):
        raise InvalidRecord("a check needs a rule name, passed true or false, and a detail string")
    return Check(rule, passed, detail)


# -- dead letters ----------------------------------------------------------------------

# A dead letter keeps at most this much of its original: with JSON escaping (up to six
# bytes a byte) it stays well under the broker's default 1 MB message limit, so that an
# oversized record can always be dead-lettered instead of stopping its stage.
MAX_DEAD_LETTER_ORIGINAL = 64 * 1024
MAX_REASON_LENGTH = 1000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be used, with where it came from and why: whole when it
    fits (``original`` as UTF-8 text, else ``original_b64``), else its first
    ``MAX_DEAD_LETTER_ORIGINAL`` bytes (``truncated``); always its size and SHA-256."""

    reason: str
    source_topic: str
    partition: int | None
    offset: int | None
    original: bytes
    stage: str

    def to_dict(self) -> dict:
        body = {
            "reason": self.reason[:MAX_REASON_LENGTH], "stage": self.stage, "source_topic": self.source_topic,
            "partition": self.partition, "offset": self.offset,
            "original_size": len(self.original), "original_sha256": hashlib.sha256(self.original).hexdigest(),
        }
        kept = self.original[:MAX_DEAD_LETTER_ORIGINAL]
        if len(kept) < len(self.original):
            body["truncated"] = True
        try:
            body["original"] = kept.decode("utf-8")
        except UnicodeDecodeError:  # not text, or cut inside a character
            body["original_b64"] = base64.b64encode(kept).decode("ascii")
        return body

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


# -- delivery --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """A generated follow-up on its way out, on topic ``delivery.<app>``, key ``user_id``.

    ``text`` is what the user reads (the body and the disclosure line); ``body`` is the
    request body of the app's send API (WhatsApp Cloud API ``/messages``, Messenger or
    Instagram Send API), ready to post, with the follow-up id where the platform echoes
    it back. ``replaced``: the honesty check refused the generated text and the safe
    template went out instead. ``due_ts``, ``last_inbound_ts`` and ``inbound_in_window``
    are the request's, for the last-moment check right before the send. ``ai_generated``
    is always true: the record says so itself, for every program downstream.
    """

    followup_id: str
    user_id: str
    bot_id: str
    app: str
    text: str
    disclosure: str
    body: dict
    generated_at: int
    replaced: bool
    due_ts: int
    last_inbound_ts: int
    inbound_in_window: int
    ai_generated: bool = True

    @property
    def request(self) -> FollowupRequest:
        return FollowupRequest(self.followup_id, self.user_id, self.bot_id, self.app, self.due_ts,
                               self.last_inbound_ts, self.inbound_in_window)

    def to_dict(self) -> dict:
        return {
            "followup_id": self.followup_id, "user_id": self.user_id, "bot_id": self.bot_id,
            "app": self.app, "text": self.text, "ai_generated": self.ai_generated,
            "disclosure": self.disclosure, "body": self.body,
            "generated_at": format_ts(self.generated_at), "replaced": self.replaced,
            "due_ts": format_ts(self.due_ts), "last_inbound_ts": format_ts(self.last_inbound_ts),
            "inbound_in_window": self.inbound_in_window,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def parse_delivery(obj: Any) -> DeliveryRecord:
    """Validate a decoded delivery record; raises InvalidRecord with the reason."""
    obj = _object(obj)
    if obj.get("ai_generated") is not True:
        raise InvalidRecord("ai_generated must be true: every follow-up is written by an AI")
    text, disclosure = obj.get("text"), obj.get("disclosure")
    if not isinstance(text, str) or not text or len(text) > MAX_TEXT_LENGTH:
        raise InvalidRecord(f"text must be a non-empty string of at most {MAX_TEXT_LENGTH} characters")
    if not isinstance(disclosure, str) or not disclosure or disclosure not in text:
        raise InvalidRecord("disclosure must be a non-empty string that the text contains")
    app = _one_of(obj, "app", APPS)
    followup_id = _identifier(obj, "followup_id")
    _check_send_body(app, obj.get("body"), followup_id)
    for name in ("generated_at", "due_ts", "last_inbound_ts"):
        if name not in obj:
            raise InvalidRecord(f"missing field {name}", "missing_field")
    replaced = obj.get("replaced")
    if not isinstance(replaced, bool):
        raise InvalidRecord("replaced must be true or false")
    count = obj.get("inbound_in_window")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise InvalidRecord("inbound_in_window must be a non-negative integer")
    return DeliveryRecord(
        followup_id=followup_id,
        user_id=_identifier(obj, "user_id"),
        bot_id=_identifier(obj, "bot_id"),
        app=app,
        text=text,
        disclosure=disclosure,
        body=obj["body"],
        generated_at=parse_ts(obj["generated_at"], "generated_at"),
        replaced=replaced,
        due_ts=parse_ts(obj["due_ts"], "due_ts"),
        last_inbound_ts=parse_ts(obj["last_inbound_ts"], "last_inbound_ts"),
        inbound_in_window=count,
    )


@dataclass(frozen=True, slots=True)
class SendAttempt:
    """A follow-up waiting for another send, on ``delivery.retry``, key ``user_id``: the
    delivery record's fields, the send attempts already made, and when to try again."""

    delivery: DeliveryRecord
    tries: int = 0
    not_before: int | None = None  # wall ms

    def to_json(self) -> bytes:
        return _with_tries(self.delivery.to_dict(), self.tries, self.not_before)


def parse_send_attempt(obj: Any) -> SendAttempt:
    """A retry record of ``delivery.retry``, or a plain delivery record (no attempt yet)."""
    delivery = parse_delivery(obj)
    return SendAttempt(delivery, *_tries_and_not_before(obj))



@dataclass(frozen=True, slots=True)
class SendStarted:
    """A send-API call about to go out, on ``followups.attempts``, key ``user_id``: written
    and acknowledged before the call, so that Kafka remembers every call the platform may
    have received even when Redis forgets its ``sending`` mark (spec section 9: such a send
    is never repeated). ``attempt``: the call's number (1 for the first); ``at``: wall time."""

    followup_id: str
    user_id: str
    app: str
    attempt: int
    at: int

    def to_json(self) -> bytes:
        return orjson.dumps({"followup_id": self.followup_id, "user_id": self.user_id, "app": self.app,
                             "attempt": self.attempt, "at": format_ts(self.at)})


def parse_send_started(obj: Any) -> SendStarted:
    obj = _object(obj)
    attempt = obj.get("attempt")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise InvalidRecord("attempt must be a positive integer")
    if "at" not in obj:
        raise InvalidRecord("missing field at", "missing_field")
    return SendStarted(followup_id=_identifier(obj, "followup_id"), user_id=_identifier(obj, "user_id"),
                       app=_one_of(obj, "app", APPS), attempt=attempt, at=parse_ts(obj["at"], "at"))

# The send APIs' own limits on one text message.
_SEND_TEXT_LIMIT = {"whatsapp": 4096, "facebook": 2000, "instagram": 2000}
_MESSAGING_TYPES = ("RESPONSE", "UPDATE", "MESSAGE_TAG")
# Where each send API takes a string it echoes back in receipts, and how long it may be:
# WhatsApp's biz_opaque_callback_data (512 characters), Messenger's message.metadata (1000).
ECHO_FIELD_LIMIT = {"whatsapp": 512, "facebook": 1000, "instagram": 1000}


def _check_send_body(app: str, body: Any, followup_id: str) -> None:
    """The body must be a text message of the app's send API, as delivery.schema.json says,
    carrying the follow-up id where the platform echoes it back (the schema cannot say
    that the two are equal)."""
    if not isinstance(body, dict):
        raise InvalidRecord("body must be the send API's request body, a JSON object")
    if app == "whatsapp":
        if body.get("messaging_product") != "whatsapp" or body.get("type") != "text":
            raise InvalidRecord('a WhatsApp body needs messaging_product "whatsapp" and type "text"')
        if body.get("recipient_type", "individual") != "individual":
            raise InvalidRecord('a WhatsApp body\'s recipient_type must be "individual"')
        _identifier(body, "to")
        content = body.get("text")
        text = content.get("body") if isinstance(content, dict) else None
        echoed, echo_name = body.get("biz_opaque_callback_data"), "biz_opaque_callback_data"
    else:
        if body.get("messaging_type", "RESPONSE") not in _MESSAGING_TYPES:
            raise InvalidRecord(f"messaging_type must be one of {', '.join(_MESSAGING_TYPES)}")
        recipient = body.get("recipient")
        _identifier(recipient if isinstance(recipient, dict) else {}, "id")
        content = body.get("message")
        text = content.get("text") if isinstance(content, dict) else None
        echoed, echo_name = (content.get("metadata") if isinstance(content, dict) else None), "message.metadata"
    limit = _SEND_TEXT_LIMIT[app]
    if not isinstance(text, str) or not text or len(text) > limit:
        raise InvalidRecord(f"the body's text must be a non-empty string of at most {limit} characters")
    if echoed != followup_id:
        raise InvalidRecord(f"the body's {echo_name} must be the follow-up id, which the platform echoes back")
