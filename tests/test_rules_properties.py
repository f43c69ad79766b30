"""Invariants of the rule on random streams (hypothesis)."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from domain.rules import DecisionCore, UserState
from foundation.settings import Settings
from schemas.records import Erase, Kill, MessageEvent, OptIn, OptOut, Profile, Tick
from tests.rulebook import HOUR, MINUTE, at

T0 = at("11-28 09:00")
USERS = ("u0", "u1", "u2")
BOTS = ("b0", "b1")
APPS = ("whatsapp", "facebook", "instagram")
TEXTS = ("hi", "any tips?", "", "STOP", "I want to die", "merci")

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
            records.append(draw(st.sampled_from(messages)))
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


PROPERTY = hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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


@PROPERTY
@given(settings_strategy, streams(), st.integers(0, 200))
def test_restoring_state_mid_stream_changes_nothing(config, records, cut):
    """A worker that restarts from its changelog must decide exactly as one that did not."""
    cut = min(cut, len(records))
    whole = [r for _, r in feed_all(DecisionCore(config), records)]
    first = DecisionCore(config)
    before = [r for _, r in feed_all(first, records[:cut])]
    restored = DecisionCore(config)
    restored.import_meta(first.export_meta())
    for user_id, user in first.users.items():
        restored.load_user(user_id, UserState.from_dict(user.to_dict()))
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
