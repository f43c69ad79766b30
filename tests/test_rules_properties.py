"""Invariants of the rule on random streams (hypothesis).

The first test judges every decision against ``tests/oracle.py``, the spec read straight
from its text, on thousands of untidy streams; the others hold the core to properties
that need no reading of the rule (determinism, restore, packing, re-sends).
"""
from __future__ import annotations

import os
import random
from dataclasses import replace

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings as hsettings, strategies as st

from domain.native import NativeDecisionCore
from domain.rules import DecisionCore
from domain.state import changelog_value, from_changelog
from foundation.settings import Settings
from schemas.records import Erase, Kill, MessageEvent, OptIn, OptOut, Profile, Tick
from tests.oracle import Oracle
from tests.rulebook import DAY, HOUR, MINUTE, at

T0 = at("11-28 09:00")
USERS = ("u0", "u1", "u2")
BOTS = ("b0", "b1")
APPS = ("whatsapp", "facebook", "instagram")
TEXTS = ("hi", "any tips?", "", "STOP", "I want to die", "merci")
DIRECTIONS = ("inbound",) * 4 + ("outbound",)

settings_strategy = st.fixed_dictionaries({
    "min_inbound": st.integers(1, 6),
    "idle_delay": st.sampled_from(["1h", "3h", "12h"]),
    "window": st.sampled_from(["1d", "3d", "14d"]),
    "messaging_window": st.sampled_from(["6h", "24h"]),
    "quiet_hours": st.sampled_from(["off", "22:00-08:00", "01:00-03:00"]),
    "user_cap_day": st.integers(0, 2),
    "user_cap_week": st.integers(0, 4),
    "unknown_age": st.sampled_from(["allow", "deny"]),
    "holdout": st.sampled_from([0.0, 0.3]),
    "distress_cooloff": st.sampled_from(["1h", "2d"]),
}).map(lambda raw: Settings.from_mapping({**raw, "clock": "event"}))


@st.composite
def streams(draw, max_records: int = 120):
    """Mostly forward in time, with late events, re-sent webhooks, controls and ticks."""
    clock = T0
    records: list = []
    messages: list[MessageEvent] = []
    for index in range(draw(st.integers(1, max_records))):
        kind = draw(st.sampled_from(["msg"] * 12 + ["dup", "late", "tick", "control"]))
        if kind == "dup" and messages:
            first = draw(st.sampled_from(messages))
            # Re-sent as it was, or "whatever its ts" (not moving the clock) while the first counts.
            ts = draw(st.sampled_from([first.ts, clock])) if first.ts >= clock - DAY else first.ts
            records.append(replace(first, ts=ts))
            continue
        if kind == "tick":
            clock += draw(st.integers(0, 30 * HOUR))
            records.append(Tick(clock))
            continue
        if kind == "control":
            records.append(draw(controls()))
            continue
        if kind == "late":
            ts = clock - draw(st.integers(0, 3 * 24 * HOUR))
        else:
            clock += draw(st.sampled_from([0, MINUTE, 10 * MINUTE, 2 * HOUR, 13 * HOUR, 3 * 24 * HOUR]))
            ts = clock
        event = MessageEvent(
            event_id=f"e{index}", app=draw(st.sampled_from(APPS)), user_id=draw(st.sampled_from(USERS)),
            bot_id=draw(st.sampled_from(BOTS)),
            direction=draw(st.sampled_from(["inbound"] * 4 + ["outbound"])), ts=ts,
            text=draw(st.sampled_from(TEXTS)) if draw(st.integers(0, 9)) == 0 else "hello",
        )
        messages.append(event)
        records.append(event)
    records.append(Tick(clock + 40 * 24 * HOUR))
    return records


def controls():
    user, bot = st.sampled_from(USERS), st.sampled_from(BOTS + (None,))
    return st.one_of(
        st.builds(Profile, user, st.sampled_from([None, "Europe/Paris", "Asia/Tokyo"]), st.sampled_from([None, False, True])),
        st.builds(OptOut, user, bot), st.builds(OptIn, user, bot), st.builds(Erase, user),
        st.builds(Kill, st.just("bot"), st.sampled_from(BOTS), st.booleans()),
        st.builds(Kill, st.just("app"), st.sampled_from(APPS), st.booleans()),
    )


def feed_all(core: DecisionCore, records) -> list[tuple[int, object]]:
    """Feed records; return (index of the record whose arrival made it, request)."""
    emitted = []
    for index, record in enumerate(records):
        core.feed(record)
        emitted += [(index, request) for request in core.drain()[0]]
    return emitted


# Unset, every run (CI's included) tries the same streams: a failure is reproducible and
# belongs to the change that made it. RELANCE_PROPERTY_EXAMPLES=N draws fresh random
# streams instead, N for the oracle and a tenth as many for the other properties, to hunt
# for disagreements no fixed set holds; a failure prints the seed and stream to pin with
# ``@example``.
RANDOM_EXAMPLES = int(os.environ.get("RELANCE_PROPERTY_EXAMPLES") or 0)


def property_settings(fixed_examples: int, random_share: float) -> hsettings:
    return hsettings(
        max_examples=max(fixed_examples, int(RANDOM_EXAMPLES * random_share)), derandomize=not RANDOM_EXAMPLES,
        deadline=None, suppress_health_check=[HealthCheck.too_slow],
    )


PROPERTY = property_settings(150, random_share=0.1)
ORACLE = property_settings(2000, random_share=1.0)


def untidy_stream(rng: random.Random, window: int, length: int) -> tuple[list, set[int]]:
    """A stream as production sends it, and the indexes of its re-sent webhooks.

    Users talk in sessions (a few inbound messages to one bot, an answer or not); some
    messages and whole sessions arrive late (up to three days), some webhooks come again
    (as they were, or with another ts that does not move the clock, while the first could
    still count), controls and ticks fall anywhere. Plain ``random``, so that thousands of
    streams take seconds, not minutes."""
    clock, records, messages, resent = T0, [], [], set()

    def message(ts: int, user: str, bot: str, direction: str, app: str) -> None:
        nonlocal clock
        clock = max(clock, ts)
        event = MessageEvent(f"e{len(records)}", app, user, bot, direction, ts,
                             rng.choice(TEXTS) if rng.random() < 0.1 else "hello")
        messages.append(event)
        records.append(event)

    while len(records) < length:
        kind = rng.choices(("session", "late session", "late", "resend", "tick", "control"), (8, 2, 2, 2, 2, 2))[0]
        if kind == "resend" and messages:
            first = rng.choice(messages)
            ts = rng.choice((first.ts, rng.randint(max(first.ts, clock - window), clock))) if first.ts >= clock - window else first.ts
            resent.add(len(records))
            records.append(replace(first, ts=ts))
        elif kind == "tick":
            clock += rng.randint(0, 30 * HOUR)
            records.append(Tick(clock))
        elif kind == "control":
            records.append(random_control(rng))
            if isinstance(records[-1], Erase):  # the user's messages are forgotten: none can come "again"
                messages = [m for m in messages if m.user_id != records[-1].user_id]
        elif kind == "late":
            message(clock - rng.randint(0, 3 * DAY), rng.choice(USERS), rng.choice(BOTS), rng.choice(DIRECTIONS), rng.choice(APPS))
        else:
            if kind == "session":
                clock += rng.choice((0, MINUTE, 10 * MINUTE, 2 * HOUR, 13 * HOUR, 3 * DAY))
                ts = clock
            else:
                ts = clock - rng.randint(0, 3 * DAY)
            user, bot, app = rng.choice(USERS), rng.choice(BOTS), rng.choice(APPS)
            for _ in range(rng.randint(1, 6)):
                message(ts, user, bot, "inbound", rng.choice((app,) * 5 + APPS))
                if rng.random() < 0.3:
                    message(ts + MINUTE, user, bot, "outbound", app)
                ts += rng.randint(0, 5 * MINUTE)
    records.append(Tick(clock + 40 * DAY))
    return records, resent


def random_control(rng: random.Random):
    user, bot = rng.choice(USERS), rng.choice(BOTS + (None,))
    return rng.choice((
        lambda: Profile(user, rng.choice((None, "Europe/Paris", "Asia/Tokyo", "America/Los_Angeles")),
                        rng.choice((None, False, False, True))),
        lambda: OptOut(user, bot), lambda: OptIn(user, bot), lambda: Erase(user),
        lambda: Kill("bot", rng.choice(BOTS), rng.random() < 0.5),
        lambda: Kill("app", rng.choice(APPS), rng.random() < 0.5),
        lambda: Kill("all", None, rng.random() < 0.3),
    ))()


@pytest.mark.parametrize("core_type", [DecisionCore, NativeDecisionCore], ids=["python", "native"])
@ORACLE
@given(settings_strategy, st.integers(0, 2**32 - 1), st.integers(40, 200))
# A late message due inside a distress cool-off whose end the clock had passed: the core
# had forgotten the user, cool-off and all.
@example(config=Settings.from_mapping({
    "min_inbound": 1, "window": "1d", "idle_delay": "1h", "messaging_window": "6h", "quiet_hours": "off",
    "user_cap_day": 0, "user_cap_week": 0, "distress_cooloff": "2d", "clock": "event"}), seed=40416, length=64)
def test_every_decision_is_the_one_the_spec_makes(core_type, config, seed, length):
    """Each decision record and request, record by record, against the spec's reading:
    which pairs are due and in what order, each condition's verdict, the exact count, and
    the safety invariants of every request (cap on any span, quiet hours, send - I <= M,
    no minor, opted-out, killed or erased pair). Both decision cores, the compiled one too."""
    records, _ = untidy_stream(random.Random(seed), config.window, length)
    core, oracle = core_type(config), Oracle(config)
    for index, record in enumerate(records):
        core.feed(record)
        requests, decisions, _, _ = core.drain()
        try:
            oracle.step(record, decisions, requests)
        except AssertionError as exc:
            raise AssertionError(f"record {index} of seed {seed} ({record}): {exc}") from None


@PROPERTY
@given(settings_strategy, st.integers(0, 2**32 - 1), st.integers(40, 200))
def test_a_resent_webhook_changes_nothing(config, seed, length):
    """The same stream without its re-sent webhooks gives the same follow-ups and the same
    decisions (only when each was made may differ: a re-send is a record, and a decision
    made due by a late message happens at the next record)."""
    records, resent = untidy_stream(random.Random(seed), config.window, length)
    once = [record for index, record in enumerate(records) if index not in resent]

    def outputs(stream):
        core, requests, decisions = DecisionCore(config), [], []
        for record in stream:
            core.feed(record)
            out, made, _, _ = core.drain()
            requests += out
            decisions += [replace(d, decided_at=0) for d in made]
        return requests, decisions
    assert outputs(records) == outputs(once)


@PROPERTY
@given(settings_strategy, streams())
def test_never_two_followups_for_a_pair_without_an_inbound_message_between(config, records):
    emitted = feed_all(DecisionCore(config), records)
    last_for_pair: dict = {}
    for index, request in emitted:
        pair = (request.user_id, request.bot_id)
        previous = last_for_pair.get(pair)
        # An erasure forgets the user entirely, follow-ups sent included.
        if previous is not None and not erased_between(records, request.user_id, previous[0], index):
            assert request.last_inbound_ts > previous[1].due_ts, (previous, request)
        last_for_pair[pair] = (index, request)


def erased_between(records: list, user_id: str, start: int, end: int) -> bool:
    return any(isinstance(r, Erase) and r.user_id == user_id for r in records[start:end])


@PROPERTY
@given(settings_strategy, streams())
def test_never_a_followup_with_fewer_than_N_inbound_in_the_window(config, records):
    emitted = feed_all(DecisionCore(config), records)
    for index, request in emitted:
        assert counted_inbound(records[:index], request, config) >= config.min_inbound


def counted_inbound(before: list, request, config: Settings) -> int:
    """An independent count: distinct inbound messages of the pair, fed before the decision,
    not too old when they arrived, not erased, with due - W < ts <= due."""
    clock, seen, times = -1, set(), []
    for record in before:
        if isinstance(record, Erase) and record.user_id == request.user_id:
            seen, times = set(), []
        if isinstance(record, Tick):
            clock = max(clock, record.ts)
        if not isinstance(record, MessageEvent):
            continue
        clock = max(clock, record.ts)
        if (record.user_id, record.bot_id) != (request.user_id, request.bot_id) or record.direction != "inbound":
            continue
        if record.ts < clock - config.window or (record.app, record.event_id) in seen:
            continue
        seen.add((record.app, record.event_id))
        times.append(record.ts)
    return sum(1 for ts in times if request.due_ts - config.window < ts <= request.due_ts)


@PROPERTY
@given(
    n=st.integers(1, 8), delay_h=st.integers(1, 20), extra=st.integers(0, 10),
    spacing=st.integers(0, 30 * MINUTE), apps=st.lists(st.sampled_from(APPS), min_size=1, max_size=3),
    noise=streams(max_records=40),
)
def test_always_one_followup_when_every_condition_holds(n, delay_h, extra, spacing, apps, noise):
    config = Settings.from_mapping({
        "min_inbound": n, "idle_delay": f"{delay_h}h", "messaging_window": "24h", "window": "14d",
        "quiet_hours": "off", "user_cap_day": 0, "user_cap_week": 0, "clock": "event",
    })
    # Noise from other users; then "me" writes enough, in order, and goes quiet.
    start = max(getattr(r, "ts", T0) for r in noise) + 1
    mine = [
        MessageEvent(f"mine{i}", apps[i % len(apps)], "me", "bot", "inbound", start + i * spacing, "hello")
        for i in range(n + extra)
    ]
    due = mine[-1].ts + delay_h * HOUR
    background = [r for r in noise if not isinstance(r, (Tick, Kill))]  # kills stop everyone
    emitted = feed_all(DecisionCore(config), background + mine + [Tick(due)])
    mine_requested = [r for _, r in emitted if r.user_id == "me"]
    assert len(mine_requested) == 1
    assert mine_requested[0].due_ts == due and mine_requested[0].app == mine[-1].app


# The changelog as the engine writes it, and as earlier versions wrote it (JSON).
CHANGELOG_ENCODINGS = {"packed": changelog_value, "json": lambda user: orjson.dumps(user.to_dict())}


@pytest.mark.parametrize("encoding", sorted(CHANGELOG_ENCODINGS))
@PROPERTY
@given(settings_strategy, streams(), st.integers(0, 200))
def test_restoring_state_mid_stream_changes_nothing(encoding, config, records, cut):
    """A worker that restarts from its changelog must decide exactly as one that did not."""
    cut = min(cut, len(records))
    whole = [r for _, r in feed_all(DecisionCore(config), records)]
    first = DecisionCore(config)
    before = [r for _, r in feed_all(first, records[:cut])]
    restored = DecisionCore(config)
    restored.import_meta(first.export_meta())
    for user_id, user in first.users.items():
        restored.load_user(user_id, from_changelog(CHANGELOG_ENCODINGS[encoding](user)))
    after = [r for _, r in feed_all(restored, records[cut:])]
    assert before + after == whole


@PROPERTY
@given(settings_strategy, streams())
def test_the_same_stream_gives_the_same_followups(config, records):
    assert feed_all(DecisionCore(config), records) == feed_all(DecisionCore(config), records)


@PROPERTY
@given(settings_strategy, streams(), st.lists(st.integers(0, 120), max_size=40))
def test_packing_idle_users_at_any_point_changes_nothing(config, records, pack_after):
    """A worker packs idle users at each checkpoint; nothing it decides may change."""
    plain, packing = DecisionCore(config), DecisionCore(config)
    for index, record in enumerate(records):
        plain.feed(record)
        packing.feed(record)
        assert packing.drain()[:3] == plain.drain()[:3]
        for _ in range(pack_after.count(index)):  # twice in a row packs even the last touched
            packing.pack_idle()
        assert packing.pairs_tracked() == sum(len(user.pairs) for user in plain.users.values())
    assert set(packing.users) | set(packing.idle) == set(plain.users)
    for user_id, user in plain.users.items():
        assert packing.user(user_id).to_dict() == user.to_dict()
