"""The JSON Schema documents in schemas/ and the Python records agree.

Records written by the code validate against the schema; inputs the Python parser
refuses, the schema refuses too, and inputs both should accept, both accept. Checks
a schema cannot express (a known time zone, text that contains the disclosure) are
listed apart, so the gap is on record.
"""
from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from domain.normalize import normalize_webhook
from schemas.records import (
    Check, DeadLetter, DecisionRecord, DeliveryRecord, Erase, FollowupAttempt, FollowupOutcome,
    FollowupRequest, InvalidRecord, Kill, MessageEvent, OptIn, OptOut, Profile, Tick, control_to_dict,
    SendAttempt, parse_attempt, parse_control, format_ts, parse_delivery, parse_followup, parse_message, parse_outcome,
    SendStarted, parse_decision, parse_send_attempt, parse_send_started, parse_ts,
)
from schemas.registry import BotRegistry

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_NAMES = ("message", "control", "followup_request", "followup_retry", "followup_outcome", "decision",
                "deadletter", "delivery", "send_retry", "send_started")


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8"))
    return Draft202012Validator(schema, format_checker=FormatChecker())


VALIDATORS = {name: validator(name) for name in SCHEMA_NAMES}
PARSERS = {"message": parse_message, "control": parse_control, "followup_request": parse_followup,
           "followup_retry": parse_attempt, "followup_outcome": parse_outcome, "delivery": parse_delivery,
           "send_retry": parse_send_attempt, "send_started": parse_send_started, "decision": parse_decision}


def schema_accepts(name: str, obj) -> bool:
    return VALIDATORS[name].is_valid(obj)


def parser_accepts(name: str, obj) -> bool:
    try:
        PARSERS[name](obj)
    except InvalidRecord:
        return False
    return True


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_each_schema_is_a_valid_draft_2020_12_schema(name):
    Draft202012Validator.check_schema(VALIDATORS[name].schema)
    assert VALIDATORS[name].schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


# -- what the code writes validates -------------------------------------------------------

T = 1_795_858_200_000
MESSAGE = MessageEvent("wamid.1", "whatsapp", "u-42", "maestro", "inbound", T, "Any film music tips?")
FOLLOWUP = FollowupRequest("f-1", "u-42", "maestro", "whatsapp", T + 43_200_000, T, 7)
DECISION = DecisionRecord(
    followup_id="f-1", user_id="u-42", bot_id="maestro", app="whatsapp", due_ts=T, send_ts=T,
    decided_at=T, outcome="suppressed", stopped_by="quiet_hours", inbound_in_window=5,
    last_inbound_ts=T - 1000, checks=(Check("engaged", True, "5 >= 5"), Check("quiet_hours", False, "23:10 local")),
)
DISCLOSURE = "Written by an AI. Reply STOP to get no more of these."
TEXT = f"Any new soundtrack on your list?\n\n{DISCLOSURE}"
SEND_BODIES = {
    "whatsapp": {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "16505551234",
                 "type": "text", "text": {"body": TEXT}, "biz_opaque_callback_data": "f-1"},
    "facebook": {"recipient": {"id": "6945512345678901"}, "messaging_type": "RESPONSE",
                 "message": {"text": TEXT, "metadata": "f-1"}},
    "instagram": {"recipient": {"id": "1234567890123456"}, "message": {"text": TEXT, "metadata": "f-1"}},
}


def delivery(app: str) -> DeliveryRecord:
    return DeliveryRecord("f-1", "u-42", "maestro", app, TEXT, DISCLOSURE, SEND_BODIES[app], T, replaced=False,
                          due_ts=T + 43_200_000, last_inbound_ts=T, inbound_in_window=7)


WRITTEN = [
    ("message", MESSAGE.to_dict()),
    ("message", MessageEvent("m_1", "facebook", "u", "b", "outbound", 0, "", extra={"lang": "fr"}).to_dict()),
    ("followup_request", FOLLOWUP.to_dict()),
    ("followup_retry", orjson.loads(FollowupAttempt(FOLLOWUP, 2, T).to_json())),
    ("followup_retry", orjson.loads(FollowupAttempt(FOLLOWUP, 1).to_json())),
    ("followup_outcome", FollowupOutcome.of(FOLLOWUP, "cancelled", "opted_out", 1, T).to_dict()),
    ("followup_outcome", FollowupOutcome.of(FOLLOWUP, "generated", None, 1, T).to_dict()),
    ("decision", DECISION.to_dict()),
    ("decision", {**DECISION.to_dict(), "outcome": "emitted", "stopped_by": None}),
    ("deadletter", DeadLetter("not JSON", "raw.whatsapp", 3, 1200, b"{oops", "normalize").to_dict()),
    ("deadletter", DeadLetter("not UTF-8", "raw.facebook", None, None, b"\xff\xfe", "normalize").to_dict()),
    *[("control", control_to_dict(event)) for event in (
        Profile("u-42", "Europe/Paris", False), Profile("u-42", None, None), OptOut("u-42", "maestro"),
        OptIn("u-42", None), Kill("bot", "maestro", True), Kill("app", "instagram", False),
        Kill("all", None, True), Erase("u-42"), Tick(T),
    )],
    *[("delivery", delivery(app).to_dict()) for app in SEND_BODIES],
    ("send_retry", orjson.loads(SendAttempt(delivery("whatsapp"), 2, T).to_json())),
    ("send_retry", orjson.loads(SendAttempt(delivery("instagram")).to_json())),
    ("send_started", orjson.loads(SendStarted("f-1", "u-42", "whatsapp", 1, T).to_json())),
]


@pytest.mark.parametrize("name, record", WRITTEN, ids=[f"{n}-{i}" for i, (n, _) in enumerate(WRITTEN)])
def test_records_written_by_the_code_validate(name, record):
    decoded = orjson.loads(orjson.dumps(record))  # what a consumer of the topic reads
    errors = [error.message for error in VALIDATORS[name].iter_errors(decoded)]
    assert errors == []
    if name in PARSERS:
        assert parser_accepts(name, decoded)


def test_an_oversized_original_is_cut_with_its_size_and_digest_and_still_fits_a_kafka_message():
    # Issue 14: a dead letter must always fit the broker's default 1 MB limit, or one
    # oversized record stops its stage. A 1 MB document of quotes doubles when escaped.
    original = b'"' * 1_000_000
    letter = DeadLetter("not JSON", "raw.whatsapp", 0, 7, original, "ingest")
    body = orjson.loads(letter.to_json())
    assert len(letter.to_json()) < 1_000_000
    assert body["truncated"] is True and body["original_size"] == 1_000_000
    assert body["original_sha256"] == hashlib.sha256(original).hexdigest()
    assert body["original"] == '"' * 64 * 1024
    assert schema_accepts("deadletter", body)
    whole = orjson.loads(DeadLetter("x", "raw.whatsapp", 0, 1, b"{oops", "ingest").to_json())
    assert "truncated" not in whole and whole["original"] == "{oops" and whole["original_size"] == 5


def test_a_binary_dead_letter_keeps_its_bytes_in_base64():
    body = DeadLetter("not UTF-8", "raw.facebook", 0, 1, b"\xff\xfe", "normalize").to_dict()
    assert base64.b64decode(body["original_b64"]) == b"\xff\xfe"
    assert not schema_accepts("deadletter", {**body, "original": "both at once"})


def test_every_event_the_normaliser_writes_validates():
    registry = BotRegistry.load(ROOT / "deploy" / "bots.toml")
    count = 0
    for path in sorted((ROOT / "tests" / "fixtures" / "webhooks").glob("*.json")):
        for event in normalize_webhook(path.name.split("_")[0], path.read_bytes(), registry).events:
            assert schema_accepts("message", orjson.loads(event.to_json()))
            count += 1
    assert count >= 15


# -- the parser and the schema agree on inputs ------------------------------------------------

def message(**changes):
    body = orjson.loads(MESSAGE.to_json())
    for key, value in changes.items():
        if value is ...:
            del body[key]
        else:
            body[key] = value
    return body


def control(**fields):
    return fields


def followup(**changes):
    body = FOLLOWUP.to_dict()
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def outcome(**changes):
    body = {**FollowupOutcome.of(FOLLOWUP, "generated", None, 1, T).to_dict(), **changes}
    return {k: v for k, v in body.items() if v is not ...}


def decision(**changes):
    body = {**DECISION.to_dict(), **changes}
    return {k: v for k, v in body.items() if v is not ...}


def delivery_dict(app="whatsapp", body=None, **changes):
    record = orjson.loads(delivery(app).to_json())
    if body is not None:
        record["body"] = body
    record.update(changes)
    return {k: v for k, v in record.items() if v is not ...}


ACCEPTED_BY_BOTH = [
    ("message", message()),
    ("message", message(ts=0)),
    ("message", message(ts=253_402_300_799_999)),
    ("message", message(ts="2026-11-28T09:30:00+01:00")),
    ("message", message(ts="2026-11-28T09:30:00.123456Z")),
    ("message", message(ts="2026-11-28t09:30:00.5z")),
    ("message", message(text="")),
    ("message", message(text="é" * 8192)),
    ("message", message(event_id="x" * 256)),
    ("message", message(direction="outbound", app="instagram")),
    ("message", message(lang="fr", score=3)),  # unknown extra fields are kept, not refused
    ("control", control(type="profile", user_id="u", tz="America/Argentina/Buenos_Aires", minor=True)),
    ("control", control(type="profile", user_id="u")),
    ("control", control(type="opt_out", user_id="u", bot_id=None)),
    ("control", control(type="opt_in", user_id="u")),
    ("control", control(type="kill", scope="all")),
    ("control", control(type="kill", scope="app", id="whatsapp", on=False)),
    ("control", control(type="erase", user_id="u")),
    ("control", control(type="tick", ts="2026-11-29T08:00:00Z")),
    ("followup_request", followup()),
    ("followup_request", followup(inbound_in_window=0)),
    ("followup_retry", followup(tries=3, not_before="2026-11-28T21:30:00Z")),
    ("followup_retry", followup()),
    ("followup_outcome", outcome()),
    ("followup_outcome", outcome(outcome="failed", reason="131026")),
    ("followup_outcome", outcome(outcome="cancelled", reason="window_closed")),
    ("decision", decision(outcome="deferred", stopped_by=None, checks=[], due_ts=T, send_ts=T + 1)),
    ("delivery", delivery_dict("facebook")),
    ("delivery", delivery_dict("instagram", replaced=True)),
    ("delivery", delivery_dict("whatsapp", body={k: v for k, v in SEND_BODIES["whatsapp"].items() if k != "recipient_type"})),
    ("delivery", delivery_dict(last_inbound_ts="2026-11-28T09:30:00Z", inbound_in_window=0)),
    ("send_retry", delivery_dict("facebook", tries=3, not_before="2026-11-28T21:30:00Z")),
    ("send_retry", delivery_dict()),
    ("send_started", {"followup_id": "f-1", "user_id": "u-42", "app": "whatsapp", "attempt": 1, "at": T}),
    ("send_started", {**{"followup_id": "f-1", "user_id": "u-42", "app": "whatsapp", "attempt": 1, "at": T}, "attempt": 3, "at": "2026-11-28T21:30:00Z"}),
]

REFUSED_BY_BOTH = [
    ("message", [MESSAGE.to_dict()]),
    ("message", message(event_id=...)),
    ("message", message(event_id="")),
    ("message", message(event_id="x" * 257)),
    ("message", message(user_id=42)),
    ("message", message(bot_id=None)),
    ("message", message(app="telegram")),
    ("message", message(direction="sideways")),
    ("message", message(ts=...)),
    ("message", message(ts=-1)),
    ("message", message(ts=253_402_300_800_000)),
    ("message", message(ts=True)),
    ("message", message(ts=1.5)),
    ("message", message(ts="2026-11-28T09:30:00")),  # no zone
    ("message", message(ts="2026-11-28 09:30:00Z")),  # no T
    ("message", message(ts="2026-13-01T09:30:00Z")),
    ("message", message(ts="2026-11-28T24:00:00Z")),
    ("message", message(ts="1969-12-31T23:59:59Z")),
    ("message", message(ts="yesterday")),
    ("message", message(text=...)),
    ("message", message(text=None)),
    ("message", message(text="a" * 8193)),
    ("control", control(type="snooze", user_id="u")),
    ("control", control(user_id="u")),
    ("control", control(type="profile", user_id="u", minor="no")),
    ("control", control(type="profile", user_id="u", tz="")),
    ("control", control(type="profile")),
    ("control", control(type="opt_out", user_id="u", bot_id="")),
    ("control", control(type="kill", scope="user", id="u")),
    ("control", control(type="kill", scope="bot")),
    ("control", control(type="kill", scope="app", id="telegram")),
    ("control", control(type="kill", scope="all", on="yes")),
    ("control", control(type="erase", user_id="")),
    ("control", control(type="tick")),
    ("control", control(type="tick", ts="soon")),
    ("followup_request", followup(followup_id=...)),
    ("followup_request", followup(inbound_in_window=-1)),
    ("followup_request", followup(inbound_in_window=True)),
    ("followup_request", followup(due_ts=...)),
    ("followup_request", followup(app="sms")),
    ("followup_retry", followup(tries=-1)),
    ("followup_retry", followup(tries=1, not_before="later")),
    ("followup_outcome", outcome(outcome="lost")),
    ("followup_outcome", outcome(outcome="cancelled", reason="bored")),
    ("followup_outcome", outcome(outcome="cancelled", reason=None)),
    ("followup_outcome", outcome(reason="")),
    ("followup_outcome", outcome(tries=...)),
    ("followup_outcome", outcome(at=...)),
    ("decision", decision(outcome="sent")),
    ("decision", decision(stopped_by="")),
    ("decision", decision(send_ts=...)),
    ("decision", decision(inbound_in_window=-1)),
    ("decision", decision(checks=[{"rule": "engaged", "passed": "yes", "detail": ""}])),
    ("decision", decision(checks=[{"rule": "engaged", "passed": True}])),
    ("delivery", delivery_dict(ai_generated=False)),
    ("delivery", delivery_dict(ai_generated=...)),
    ("delivery", delivery_dict(disclosure="")),
    ("delivery", delivery_dict(text="")),
    ("delivery", delivery_dict(body="hello")),
    ("delivery", delivery_dict(generated_at=...)),
    ("delivery", delivery_dict(replaced=...)),
    ("delivery", delivery_dict(replaced="no")),
    ("delivery", delivery_dict(replaced=None)),
    ("delivery", delivery_dict("whatsapp", body=SEND_BODIES["facebook"])),
    ("delivery", delivery_dict("facebook", body=SEND_BODIES["whatsapp"])),
    ("delivery", delivery_dict("facebook", body={"recipient": {"id": "1"}, "message": {"text": "a" * 2001}})),
    ("delivery", delivery_dict("whatsapp", body={**SEND_BODIES["whatsapp"], "type": "image"})),
    ("delivery", delivery_dict("whatsapp", body={k: v for k, v in SEND_BODIES["whatsapp"].items() if k != "biz_opaque_callback_data"})),
    ("delivery", delivery_dict("facebook", body={**SEND_BODIES["facebook"], "message": {"text": TEXT}})),
    ("delivery", delivery_dict(due_ts=...)),
    ("delivery", delivery_dict(last_inbound_ts="noon")),
    ("delivery", delivery_dict(inbound_in_window=-1)),
    ("send_retry", delivery_dict(tries=-1)),
    ("send_retry", delivery_dict(tries=1, not_before="later")),
    ("send_retry", delivery_dict(ai_generated=False, tries=1)),
    ("send_started", {**{"followup_id": "f-1", "user_id": "u-42", "app": "whatsapp", "attempt": 1, "at": T}, "attempt": 0}),
    ("send_started", {**{"followup_id": "f-1", "user_id": "u-42", "app": "whatsapp", "attempt": 1, "at": T}, "attempt": True}),
    ("send_started", {k: v for k, v in {"followup_id": "f-1", "user_id": "u-42", "app": "whatsapp", "attempt": 1, "at": T}.items() if k != "at"}),
    ("send_started", {**{"followup_id": "f-1", "user_id": "u-42", "app": "whatsapp", "attempt": 1, "at": T}, "app": "telegram"}),
]


@pytest.mark.parametrize("name, obj", ACCEPTED_BY_BOTH, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ACCEPTED_BY_BOTH)])
def test_valid_inputs_are_accepted_by_parser_and_schema(name, obj):
    assert (parser_accepts(name, obj), schema_accepts(name, obj)) == (True, True)


@pytest.mark.parametrize("name, obj", REFUSED_BY_BOTH, ids=[f"{n}-{i}" for i, (n, _) in enumerate(REFUSED_BY_BOTH)])
def test_invalid_inputs_are_refused_by_parser_and_schema(name, obj):
    assert (parser_accepts(name, obj), schema_accepts(name, obj)) == (False, False)


# Checks only code can make. The schema accepts these; the parser must still refuse them.
PARSER_ONLY_CHECKS = [
    ("control", control(type="profile", user_id="u", tz="Mars/Olympus_Mons")),  # not in the tz database
    ("message", message(ts="1970-01-01T00:30:00+01:00")),  # before 1970 once the offset applies
    ("message", message(ts="2027-02-29T09:30:00Z")),  # the pattern does not know month lengths
    ("message", message(ts=float(T))),  # JSON Schema counts 1.0 as an integer; JSON readers do not
    ("delivery", delivery_dict(disclosure="Some other line.")),  # the text must contain the disclosure
    # The body must echo the follow-up's own id, not any id.
    ("delivery", delivery_dict("facebook", body={**SEND_BODIES["facebook"], "message": {"text": TEXT, "metadata": "f-2"}})),
    ("delivery", delivery_dict("whatsapp", body={**SEND_BODIES["whatsapp"], "biz_opaque_callback_data": "f-2"})),
]


@pytest.mark.parametrize("name, obj", PARSER_ONLY_CHECKS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PARSER_ONLY_CHECKS)])
def test_checks_beyond_the_schema_are_made_by_the_parser(name, obj):
    assert schema_accepts(name, obj) is True
    assert parser_accepts(name, obj) is False


# ISO 8601 forms that are not RFC 3339 (spec section 5 says RFC 3339): basic format,
# missing seconds, a week date, an offset without colon, a comma fraction.
NOT_RFC_3339 = ["20261128T093000Z", "2026-11-28T09:30Z", "2026-W48-6T09:30:00Z", "2026-11-28T09:30:00+0100",
                "2026-11-28T09:30:00,5Z"]


@pytest.mark.parametrize("ts", NOT_RFC_3339)
def test_the_schema_refuses_date_times_that_are_not_rfc_3339(ts):
    assert schema_accepts("message", message(ts=ts)) is False


@pytest.mark.parametrize("ts", NOT_RFC_3339)
def test_the_parser_refuses_date_times_that_are_not_rfc_3339(ts):
    assert parser_accepts("message", message(ts=ts)) is False


# -- parse_ts and format_ts -------------------------------------------------------------------

@pytest.mark.parametrize("text, ms", [
    ("2026-11-28T09:30:00Z", T),
    ("2026-11-28t09:30:00z", T),                       # RFC 3339 5.6: T and Z may be lower case
    ("2026-11-28T10:30:00+01:00", T),
    ("2026-11-28T04:00:00-05:30", T),
    ("2026-11-28T09:30:00-00:00", T),                  # "-00:00": UTC, local offset unknown
    ("2026-11-28T09:30:00.5Z", T + 500),               # tenths, not milliseconds
    ("2026-11-28T09:30:00.05Z", T + 50),
    ("2026-11-28T09:30:00.123Z", T + 123),
    ("2026-11-28T09:30:00.999999999Z", T + 999),       # truncated, not rounded into the next second
    ("2026-11-28T09:30:59.0001Z", T + 59_000),
    ("2028-02-29T00:00:00Z", 1_835_395_200_000),       # a leap day
    ("1970-01-01T00:00:00Z", 0),
    ("9999-12-31T23:59:59.999Z", 253_402_300_799_999),
])
def test_parse_ts_reads_rfc_3339_to_the_millisecond(text, ms):
    assert parse_ts(text) == ms


@pytest.mark.parametrize("text", [
    "2027-02-29T00:00:00Z",          # not a leap year
    "2026-04-31T00:00:00Z",
    "2026-11-28T09:30:00Z\n",        # `$` in a regex would let the newline through
    "2026-11-28T09:30:00",           # no zone
    "2026-11-28 09:30:00Z",          # the space of RFC 3339's note: refused, as the schema does
    "2016-12-31T23:59:60Z",          # a leap second: epoch milliseconds cannot hold it
    "2026-11-28T09:30:00.Z",
    "2026-11-28T09:30:00+24:00",
    "+2026-11-28T09:30:00Z",
    "２０２６-11-28T09:30:00Z",       # digits of another script
    "2026-11-28T09:30:00." + "0" * 20 + "Z",  # longer than the schema's maxLength 40
    "0000-01-01T00:00:00Z",
])
def test_parse_ts_refuses_what_is_not_an_rfc_3339_date_time_of_the_calendar(text):
    with pytest.raises(InvalidRecord):
        parse_ts(text)


MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


@pytest.mark.parametrize("value", [True, 1.0, None, [T], -1, MAX_MS + 1])
def test_parse_ts_takes_integer_epoch_milliseconds_only_in_range(value):
    with pytest.raises(InvalidRecord):
        parse_ts(value)


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
VALID_MS = st.integers(min_value=0, max_value=MAX_MS)


@given(VALID_MS)
@example(0)
@example(MAX_MS)
def test_format_ts_writes_what_datetime_writes_and_parse_ts_reads_it_back(ms):
    text = format_ts(ms)
    moment = EPOCH + timedelta(milliseconds=ms)
    assert text == moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert parse_ts(text) == ms


# Fixed offsets in whole minutes: RFC 3339 has no seconds in an offset.
OFFSETS = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes)))


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=OFFSETS))
def test_parse_ts_of_any_zoned_datetime_is_its_instant_truncated_to_the_millisecond(moment):
    assert parse_ts(moment.isoformat()) == (moment - EPOCH) // timedelta(milliseconds=1)


def test_send_bodies_built_by_the_delivery_stage_validate():
    from domain.delivery import delivery_body  # the stage that fills delivery topics

    for app in ("whatsapp", "facebook", "instagram"):
        record = DeliveryRecord("f-1", "u-42", "maestro", app, TEXT, DISCLOSURE, delivery_body(app, "u-42", TEXT, "f-1"), T,
                                replaced=True, due_ts=T, last_inbound_ts=T, inbound_in_window=5)
        decoded = orjson.loads(record.to_json())
        assert [e.message for e in VALIDATORS["delivery"].iter_errors(decoded)] == []
        assert parser_accepts("delivery", decoded)


# -- the common-shape fast path ----------------------------------------------------------

_TS_TEXT = st.one_of(
    st.datetimes(min_value=datetime(1960, 1, 1), max_value=datetime(9999, 12, 31)).map(
        lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"),
    st.text(alphabet="0123456789-T:.Zz+ t", min_size=20, max_size=26),
    st.sampled_from(["2026-02-29T10:00:00.000Z", "2026-11-28T24:00:00.000Z", "2026-11-28T09:60:00.000Z",
                     "2026-11-28T09:30:60.000Z", "2026-11-28t09:30:00.000Z", "2026-11-28T09:30:00.000z",
                     "2026-11-28T09:30:00,000Z", "1969-12-31T23:59:59.999Z", "2026-11-28T09:30:00.0000"]),
)
_FIELD = st.one_of(st.text(max_size=3), st.none(), st.integers(), st.just(""), st.just("x" * 257))


@given(
    ts=_TS_TEXT,
    app=st.one_of(st.sampled_from(["whatsapp", "facebook", "instagram", "telegram"]), _FIELD),
    direction=st.one_of(st.sampled_from(["inbound", "outbound", "Inbound"]), _FIELD),
    user_id=st.one_of(st.just("u1"), _FIELD), text=st.one_of(st.just("hello"), st.just("y" * 8193), _FIELD),
    extra=st.dictionaries(st.sampled_from(["type", "lang", "event_id"]), st.just("z"), max_size=1),
)
def test_the_common_shape_fast_path_agrees_with_the_full_validation(ts, app, direction, user_id, text, extra):
    from schemas.records import _checked_message, _common_message
    obj = {"event_id": "e1", "app": app, "user_id": user_id, "bot_id": "b", "direction": direction, "ts": ts, "text": text}
    obj.update(extra)
    fast = _common_message(obj)
    try:
        checked = _checked_message(obj)
    except InvalidRecord:
        checked = None
    if fast is not None:  # never accepts more, never reads a field differently
        assert fast == checked
    elif len(obj) == 7 and checked is not None and isinstance(ts, str) and len(ts) == 24 and ts.endswith("Z") and ts[10] == "T":
        pytest.fail(f"fast path refused a record in the producers' format: {obj}")


def _outcome(parse) -> object:
    """What a parser makes of a record: the record, or the reason and kind it refuses it for."""
    try:
        return parse()
    except InvalidRecord as exc:
        return ("invalid", str(exc), exc.kind)


@given(
    ts=_TS_TEXT,
    app=st.one_of(st.sampled_from(["whatsapp", "facebook", "instagram", "telegram"]), _FIELD),
    direction=st.one_of(st.sampled_from(["inbound", "outbound", "Inbound"]), _FIELD),
    user_id=st.one_of(st.just("u1"), st.just("😀" * 256), st.just("😀" * 257), _FIELD),
    text=st.one_of(st.just("hello"), st.just("y" * 8193), _FIELD),
    extra=st.dictionaries(st.sampled_from(["type", "lang", "event_id"]), st.just("z"), max_size=1),
)
def test_the_compiled_decoder_agrees_with_loads_and_parse_record(ts, app, direction, user_id, text, extra):
    """decode_record, the engine's hot path, reads every record as parse_record(loads(...))
    does, and refuses every invalid one with the same reason and kind."""
    from schemas.records import decode_record, loads, parse_record
    obj = {"event_id": "e1", "app": app, "user_id": user_id, "bot_id": "b", "direction": direction, "ts": ts, "text": text}
    obj.update(extra)
    data = json.dumps(obj, ensure_ascii=False).encode()  # json: integers of any size
    assert _outcome(lambda: decode_record(data)) == _outcome(lambda: parse_record(loads(data)))


@pytest.mark.parametrize("data", [
    b"", b"{oops", b"\xff\xfe", b"[]", b"null", b'"text"', b"\xef\xbb\xbf{}",
    b'{"event_id":"e","app":"whatsapp","user_id":"u","bot_id":"b","direction":"inbound",'
    b'"ts":"2026-11-28T09:30:00.000Z","text":"\\ud800"}',                              # a lone surrogate
    b'{"event_id":"e","app":"whatsapp","user_id":"u","bot_id":"b","direction":"inbound",'
    b'"ts":"2026-11-28T09:30:00.000Z","text":"hi","user_id":"v"}',                     # a repeated key
    b'{"event_id":"e","app":"whatsapp","user_id":"u","bot_id":"b","direction":"inbound",'
    b'"ts":"2026-11-28T09:30:00.000Z","text":"hi"} trailing',
    b'{"type":"tick","ts":"2026-11-28T09:30:00.000Z"}', b'{"type":"kill","scope":"app","id":"telegram"}',
])
def test_the_compiled_decoder_agrees_on_bytes_that_are_not_the_common_shape(data):
    from schemas.records import decode_record, loads, parse_record
    assert _outcome(lambda: decode_record(data)) == _outcome(lambda: parse_record(loads(data)))


@given(st.lists(st.builds(Check, st.sampled_from(["engaged", "opt_out", "user_cap"]), st.booleans(), st.text(max_size=30)),
                max_size=12))
def test_a_decision_encodes_as_its_dict_does_with_its_checks_json_made_once(checks):
    """to_json splices each distinct check's cached JSON in: the same bytes as the dict's."""
    from dataclasses import replace
    decision = replace(DECISION, checks=tuple(checks))
    assert decision.to_json() == orjson.dumps(decision.to_dict())
    assert decision.to_json() == decision.to_json()  # the second time from the cache
