"""The compiled core (``domain/native.py`` over ``native/``) against the spec and against
the Python core, on the same streams.

Two oracles: ``tests/oracle.py`` (the spec read from its text) judges every decision the
compiled core makes, as it does the Python core's (``tests/test_rules_properties.py``,
once per core); and here the Python core, the reference, must give the same requests,
decisions, counts and changelog bytes, record for record,
on realistic traffic and on generated streams with every control, re-sent, late and
invalid record, read from JSON as the engine reads them (the compiled core's own parser)
and as records. ``tests/test_rules.py`` and ``tests/test_safety_rules.py`` run on both
cores too (``each_core``).
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import orjson
import pytest
from hypothesis import given, strategies as st

from agents.engine import feed_partition
from devstack.traffic import TrafficShape, generate
from domain.native import NativeDecisionCore, decision_core
from domain.rules import DecisionCore
from domain.state import changelog_value, from_changelog
from foundation.settings import Settings
from streams.topics import CLOCK_HEADER
from schemas.records import (
    ControlEvent, EncodedDecision, InvalidRecord, MessageEvent, Tick, control_to_dict, format_ts, loads, parse_record,
)
from tests.test_rules_properties import PROPERTY, settings_strategy, untidy_stream

DAY = 86_400_000


def encoded(record, rng: random.Random) -> bytes:
    """A record as a producer might write it: mostly the common shape (the compiled path),
    sometimes ts as a number or with a zone, an extra field, escapes: Python's path."""
    if not isinstance(record, MessageEvent):
        return orjson.dumps(control_to_dict(record))
    body = record.to_dict()
    shape = rng.random()
    if shape < 0.05:
        body["ts"] = record.ts
    elif shape < 0.08:
        body["ts"] = format_ts(record.ts).replace("Z", "+00:00")
    elif shape < 0.10:
        body["lang"] = "fr"
    elif shape < 0.12:
        return orjson.dumps(body).replace(b'"hello"', b'"h\\u0065llo"')
    return orjson.dumps(body)


class BothCores:
    """Both cores fed the same records, compared after every one."""

    def __init__(self, config: Settings) -> None:
        self.python, self.native = DecisionCore(config), NativeDecisionCore(config)

    def step(self, feed) -> tuple:
        """Both fed; the Python core drained as records, encoded here by ``DecisionRecord.to_json``
        (the reference), the compiled core drained as the engine drains it (its own JSON)."""
        outcomes = []
        for core in (self.python, self.native):
            try:
                feed(core)
                error = None
            except InvalidRecord as exc:
                error = (str(exc), exc.kind)
            if core is self.python:
                requests, records, erased, dirty = core.drain()
                decisions = [EncodedDecision.of(record) for record in records]
            else:
                requests, decisions, erased, dirty = core.drain_encoded()
            states = {user: core.changelog_value(user) for user in sorted(dirty)}
            outcomes.append((error, requests, decisions, erased, states, dict(core.stats), dict(core.duplicates_by_app),
                             list(core.distress_languages), core.clock, core.pairs_tracked(), core.kills.to_dict()))
        assert outcomes[1] == outcomes[0]
        return outcomes[0]


@PROPERTY
@given(st.text(min_size=1, max_size=12), st.text(min_size=1, max_size=12),
       st.integers(0, 253_402_300_799_999 - 40 * DAY), st.sampled_from(["event", "wall"]))
def test_decisions_about_any_ids_at_any_time_are_written_as_python_writes_them(user_id, bot_id, start, clock):
    """The compiled core's decision JSON: ids with quotes, controls, any script; every
    year Python writes (to 9999)."""
    cores = BothCores(Settings.from_mapping({"clock": clock, "unknown_age": "allow"}))
    for n in range(6):
        message = MessageEvent(f"e{n}", "instagram", user_id, bot_id, "inbound", start + n * 60_000, "bonjour")
        cores.step(lambda core: core.feed(message, start + n * 60_000 if clock == "wall" else None))
    cores.step(lambda core: core.advance(start + 30 * DAY, inclusive=True))
    assert cores.python.drain()[1] == [] and cores.native.drain()[1] == []  # every decision was compared


def feed_both(config: Settings, records, rng: random.Random, now_step: int | None = None) -> BothCores:
    """Each record to both cores, as JSON (with the feeder's clock in event mode) or as a record."""
    cores, clock, now = BothCores(config), -1, None
    for index, record in enumerate(records):
        if isinstance(record, (MessageEvent, Tick)):
            clock = max(clock, record.ts)
        if now_step is not None:
            now = (records[0].ts if isinstance(records[0], MessageEvent) else 0) + index * now_step
        if rng.random() < 0.7:
            value, stream_clock = encoded(record, rng), None if now is not None else clock
            cores.step(lambda core: core.feed_encoded(value, stream_clock, now))
        else:
            cores.step(lambda core: core.feed(record, now))
    return cores


@PROPERTY
@given(settings_strategy, st.integers(0, 2**32 - 1), st.integers(20, 200))
def test_both_cores_give_the_same_records_and_state_record_for_record(config, seed, length):
    rng = random.Random(seed)
    records, _ = untidy_stream(rng, config.window, length)
    feed_both(config, records, rng)


@PROPERTY
@given(settings_strategy, st.integers(0, 2**32 - 1), st.integers(20, 120))
def test_both_cores_agree_in_wall_mode_future_events_included(config, seed, length):
    config = replace(config, clock="wall")
    rng = random.Random(seed)
    records, _ = untidy_stream(rng, config.window, length)
    feed_both(config, records, rng, now_step=rng.choice([60_000, 3_600_000, -10 * 60_000]))


@PROPERTY
@given(settings_strategy, st.integers(0, 2**32 - 1), st.integers(20, 150), st.floats(0.1, 0.9))
def test_a_core_restored_from_the_other_cores_changelog_goes_on_the_same(config, seed, length, cut):
    """State written by either core is read by either, in both changelog formats."""
    rng = random.Random(seed)
    records, _ = untidy_stream(rng, config.window, length)
    split = int(len(records) * cut)
    first = NativeDecisionCore(config)
    users = set()
    for record in records[:split]:
        first.feed(record)
        users |= first.drain()[3]
    values = {user: first.changelog_value(user) for user in sorted(users)}
    cores = BothCores(config)
    for core in (cores.python, cores.native):
        for user, value in values.items():
            if value is None:
                continue
            if rng.random() < 0.3:  # the JSON an earlier version wrote
                value = orjson.dumps(from_changelog(value).to_dict())
            core.load_changelog(user, value)
        core.import_meta(first.export_meta())
    for record in records[split:]:
        cores.step(lambda core: core.feed(record))


def test_realistic_traffic_gives_the_same_decisions_and_changelog(tmp_path):
    """Two weeks of the simulator's traffic for 200 users, read from JSON as the engine
    reads it: the same requests, decisions and state bytes at every record."""
    config = Settings.from_mapping({"clock": "event", "quiet_hours": "22:00-08:00", "user_cap_day": 1,
                                    "user_cap_week": 3, "unknown_age": "allow"})
    records = [parse_record(loads(orjson.dumps(r))) for r in generate(TrafficShape(users=200, days=14), seed=3)]
    cores = feed_both(config, records, random.Random(3))
    assert cores.python.pairs_tracked() > 100


@pytest.mark.parametrize("value", [
    b"", b"{", b"[]", b"null", b'{"event_id": 1}', b'{"type": "profile"}',
    b'{"event_id":"e","app":"whatsapp","user_id":"u","bot_id":"b","direction":"inbound","ts":"2026-02-29T10:00:00.000Z","text":"x"}',
    b'{"event_id":"e","app":"whatsapp","user_id":"u","bot_id":"b","direction":"sideways","ts":"2026-02-28T10:00:00.000Z","text":"x"}',
    b'{"event_id":"","app":"whatsapp","user_id":"u","bot_id":"b","direction":"inbound","ts":"2026-02-28T10:00:00.000Z","text":"x"}',
    b'{"event_id":"e","app":"whatsapp","user_id":"u","bot_id":"b","direction":"inbound","ts":"1969-12-31T23:59:59.999Z","text":"x"}',
    b'{"event_id":"e","app":"whatsapp","user_id":"u","bot_id":"b","direction":"inbound","ts":"2026-02-28T24:00:00.000Z","text":"x"}',
    b'{"event_id":"e","app":"whatsapp","user_id":"u","bot_id":"b","direction":"inbound","ts":"2026-02-28T10:00:00.000Z","text":"x","text":"y"}',
    b'{"event_id":"e","app":"whatsapp","user_id":"\\ud800","bot_id":"b","direction":"inbound","ts":"2026-02-28T10:00:00.000Z","text":"x"}',
    b'{"event_id":"e","app":"whatsapp","user_id":"u","bot_id":"b","direction":"inbound","ts":"2024-02-29T10:00:00.000Z","text":"\xc3\xa9 STOP"}',
    ("{" + '"event_id":"' + "\u00e9" * 256 + '","app":"facebook","user_id":"u","bot_id":"b","direction":"inbound",'
     '"ts":"2024-02-29T10:00:00.000Z","text":"ARR\u00caTER!"}').encode(),
    ("{" + '"event_id":"' + "\u00e9" * 257 + '","app":"facebook","user_id":"u","bot_id":"b","direction":"inbound",'
     '"ts":"2024-02-29T10:00:00.000Z","text":"x"}').encode(),
], ids=lambda value: value[:20].decode(errors="replace"))
def test_odd_and_invalid_values_are_read_as_python_reads_them(value):
    """What the compiled parser takes, it takes as ``decode_record`` does; the rest is
    Python's, which says what is wrong."""
    cores = BothCores(Settings.from_mapping({"clock": "event", "min_inbound": 1}))
    cores.step(lambda core: core.feed_encoded(value, 1_700_000_000_000, None))
    cores.step(lambda core: core.feed(Tick(1_800_000_000_000)))


@given(st.text(max_size=40), st.sampled_from(["inbound", "outbound"]))
def test_any_text_is_checked_for_stop_words_and_distress_as_python_checks_it(text, direction):
    """The compiled core asks Python only about texts that could match: never one that does."""
    cores = BothCores(Settings.from_mapping({"clock": "event", "min_inbound": 1}))
    for index, written in enumerate((text, text.upper(), f"  {text}!! ", f"i {text} want to die")):
        event = MessageEvent(f"e{index}", "whatsapp", "u", "b", direction, 1_700_000_000_000 + index, written)
        value = orjson.dumps(event.to_dict())
        cores.step(lambda core: core.feed_encoded(value, None, None))


def test_the_setting_chooses_the_core_and_rocksdb_keeps_python():
    assert type(decision_core(Settings(core="native"))) is NativeDecisionCore
    assert type(decision_core(Settings(core="python"))) is DecisionCore
    assert type(decision_core(Settings(core="native", store="rocksdb"))) is DecisionCore


def test_a_control_the_engine_reads_goes_through_python_and_counts_no_event():
    core = NativeDecisionCore(Settings.from_mapping({"clock": "event"}))
    control: ControlEvent = parse_record({"type": "opt_out", "user_id": "u", "bot_id": None})
    assert core.feed_encoded(orjson.dumps(control_to_dict(control)), 5, None) is None
    assert core.user("u").opt_out_all
    assert changelog_value(core.user("u")) == core.changelog_value("u")


class Record:
    """What the engine reads of a Kafka record: its value and headers."""

    def __init__(self, value: bytes | None, headers: tuple) -> None:
        self.value, self.headers = value, headers


def odd_headers(clock: int, rng: random.Random) -> tuple:
    """The feeder's clock header, mostly as it writes it; sometimes odd, missing or doubled."""
    shape = rng.random()
    if shape < 0.8:
        return ((CLOCK_HEADER, str(clock).encode()),)
    return rng.choice([
        (), (("other", b"x"),), ((CLOCK_HEADER, b" 12"),), ((CLOCK_HEADER, b"+12"),), ((CLOCK_HEADER, b"1_000"),),
        ((CLOCK_HEADER, b"abc"),), ((CLOCK_HEADER, b""),), ((CLOCK_HEADER, None),), ((b"bytes-name", b"1"),),
        ((CLOCK_HEADER, b"-1"),), ((CLOCK_HEADER, b"253402300800000"),), ((CLOCK_HEADER, b"999999999999999999"),),
        (("other", b"x"), (CLOCK_HEADER, str(clock).encode()), (CLOCK_HEADER, b"1")),
    ])


@PROPERTY
@given(settings_strategy, st.integers(0, 2**32 - 1), st.integers(20, 150), st.booleans())
def test_the_engine_feeds_a_batch_to_either_core_with_the_same_result(config, seed, length, wall):
    """``feed_partition``: the compiled core takes a batch itself up to each record it
    leaves to Python (odd clock headers, empty values, controls, invalid values); the
    counts, dead letters and everything decided are the Python core's."""
    config = replace(config, clock="wall" if wall else "event")
    rng = random.Random(seed)
    records, _ = untidy_stream(rng, config.window, length)
    batch, clock = [], -1
    for record in records:
        if isinstance(record, (MessageEvent, Tick)):
            clock = max(clock, record.ts)
        value = rng.choice([b"", None, b"{", b'{"event_id": 1}']) if rng.random() < 0.05 else encoded(record, rng)
        batch.append(Record(value, odd_headers(clock, rng)))
    now = records[0].ts if wall and isinstance(records[0], MessageEvent) else None
    outcomes = []
    for core in (DecisionCore(config), NativeDecisionCore(config)):
        events_in, invalid, done = Counter(), [], []
        for first in range(0, len(batch), 17):
            empty = feed_partition(core, batch[first:first + 17], now, None if wall else CLOCK_HEADER, events_in, invalid)
            requests, decisions, erased, dirty = core.drain()
            done.append((empty, requests, decisions, erased, {user: core.changelog_value(user) for user in sorted(dirty)}))
        outcomes.append((events_in, [(batch.index(record), str(error), error.kind) for record, error in invalid], done,
                         core.clock, dict(core.stats)))
    assert outcomes[1] == outcomes[0]


@pytest.mark.parametrize("make_core", [DecisionCore, NativeDecisionCore])
@pytest.mark.parametrize("header", [b"253402300800000", b"999999999999999999"])
def test_a_clock_header_past_the_last_time_a_record_can_carry_is_invalid_and_moves_no_clock(make_core, header):
    """The clock is the largest ``ts`` seen (spec section 3), and no record's ``ts`` is past
    9999-12-31T23:59:59.999Z: a header beyond is a dead letter, and the follow-up of the
    messages around it is decided when the real clock reaches their T."""
    config = Settings.from_mapping({"clock": "event", "unknown_age": "allow"})
    core = make_core(config)
    t = 1_795_856_400_000

    def message(n: int, headers: tuple) -> Record:
        event = MessageEvent(f"e{n}", "whatsapp", "u1", "maestro", "inbound", t + n * 60_000, "hello")
        return Record(orjson.dumps(event.to_dict()), headers)
    batch = [message(n, ((CLOCK_HEADER, str(t + n * 60_000).encode()),)) for n in range(5)]
    batch.append(message(5, ((CLOCK_HEADER, header),)))
    batch.append(Record(b"", ((CLOCK_HEADER, str(t + DAY).encode()),)))  # the feeder's clock, a day on
    invalid: list = []
    feed_partition(core, batch, None, CLOCK_HEADER, Counter(), invalid)
    assert [(batch.index(record), error.kind) for record, error in invalid] == [(5, "invalid_header")]
    assert core.clock == t + DAY
    _, decisions, _, _ = core.drain_encoded()
    assert [decision.due_ts for decision in decisions] == [t + 4 * 60_000 + 12 * 3_600_000]  # T = last inbound + D
