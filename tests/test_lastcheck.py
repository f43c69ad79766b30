"""The last-moment check (spec section 3): every reason a request is cancelled between its
decision and its hand-over, and the safety facts the context stage mirrors in Redis for it."""
from __future__ import annotations

import random
from dataclasses import replace

import orjson
import pytest

from agents.context import ContextWriter
from domain.lastcheck import PairNow, cancel_reason, facts_of, mirror_of, pair_now_of
from domain.rules import DecisionCore
from domain.state import SafetyFacts
from foundation.settings import Settings
from schemas.records import (
    CANCEL_REASONS, Erase, FollowupRequest, MessageEvent, OptIn, OptOut, Profile, Tick, control_to_dict,
)
from streams.lastcheck import pair_now
from streams.ledger import ledger_key
from streams.rediskeys import safety_key
from tests.rulebook import DAY, HOUR, MINUTE, at
from tests.test_rules_properties import BOTS, USERS, untidy_stream

T0 = at("11-28 09:00")
M = 24 * HOUR
REQUEST = FollowupRequest("f-1", "u-1", "maestro", "whatsapp", due_ts=T0 + 12 * HOUR, last_inbound_ts=T0, inbound_in_window=5)
FINE = PairNow(published=True, killed=False, last_inbound_ts=T0)


# -- the reasons ------------------------------------------------------------------------------

@pytest.mark.parametrize("pair, reason", [
    (replace(FINE, opted_out=True), "opted_out"),
    (replace(FINE, minor=True), "minor"),
    (replace(FINE, distress_until=REQUEST.due_ts + 1), "distress"),  # a late message: its cool-off covers the send time
    (replace(FINE, distress_until=REQUEST.due_ts), None),            # the cool-off ended as it was due
    (replace(FINE, opted_out=True, minor=True, last_inbound_ts=REQUEST.due_ts + 1), "user_returned"),
    (replace(FINE, published=False, opted_out=True), "erased"),
])
def test_every_reason_of_the_spec_cancels_in_event_mode(pair, reason):
    assert cancel_reason(REQUEST, pair, now=None, messaging_window=M) == reason


def test_the_reasons_are_the_spec_words():
    assert set(CANCEL_REASONS) == {"user_returned", "opted_out", "minor", "distress", "killed", "erased", "window_closed"}


def test_distress_in_wall_mode_counts_at_the_moment_it_would_leave():
    late = REQUEST.due_ts + 2 * HOUR
    assert cancel_reason(REQUEST, replace(FINE, distress_until=late), now=late - 1, messaging_window=M) == "distress"
    assert cancel_reason(REQUEST, replace(FINE, distress_until=REQUEST.due_ts - 1), now=late, messaging_window=M) is None


def test_window_closed_counts_from_the_pairs_latest_inbound_message():
    # A late inbound message from before the due time moves I: the follow-up may still leave.
    later_inbound = replace(FINE, last_inbound_ts=REQUEST.due_ts - HOUR)
    assert cancel_reason(REQUEST, FINE, now=T0 + M + 1, messaging_window=M) == "window_closed"
    assert cancel_reason(REQUEST, later_inbound, now=T0 + M + 1, messaging_window=M) is None
    assert cancel_reason(REQUEST, FINE, now=None, messaging_window=M) is None  # event mode: only the engine judged M


# -- the mirror's encoding ----------------------------------------------------------------------

def test_the_mirror_says_opted_out_per_bot_and_age_by_the_setting():
    facts = SafetyFacts()
    facts.opt_out(None)
    facts.opt_in("chef", T0)
    for unknown_age, stops in (("allow", False), ("deny", True)):
        mirror = mirror_of(facts, unknown_age)
        assert pair_now_of(REQUEST, True, False, None, mirror).opted_out
        assert not pair_now_of(replace(REQUEST, bot_id="chef"), True, False, None, mirror).opted_out
        assert pair_now_of(REQUEST, True, False, None, mirror).minor is stops
    assert facts_of(mirror_of(facts, "allow"))[0] == facts
    assert pair_now_of(REQUEST, True, False, None, None) == PairNow(True, False, None)  # nothing known: nothing stops it


# -- the context stage keeps the mirror, and it agrees with the engine -----------------------------

def stamps(records: list) -> list[tuple[int, int]]:
    """What the feeder stamps on each record: the stream's clock after its time."""
    clock, out = -1, []
    for record in records:
        if isinstance(record, (MessageEvent, Tick)):
            clock = max(clock, record.ts)
        out.append((0, clock))
    return out


def encoded(record) -> bytes:
    return record.to_json() if isinstance(record, MessageEvent) else orjson.dumps(control_to_dict(record))


def settings(**overrides) -> Settings:
    return Settings.from_mapping({"clock": "event", "distress_cooloff": "2d", "window": "3d", **overrides})


async def facts_in_redis(redis, request: FollowupRequest) -> PairNow:
    await redis.hset(ledger_key(request.user_id), request.followup_id, request.due_ts)
    return await pair_now(redis, request)


@pytest.mark.kafka
async def test_the_context_stage_mirrors_opt_outs_stop_words_profiles_and_distress(redis_client):
    writer = ContextWriter(redis_client, settings(unknown_age="deny"))
    records = [Profile(user, None, False) for user in ("u-1", "u-2", "u-3")] + [
        OptOut("u-1", None), OptIn("u-1", "maestro"),
        MessageEvent("e1", "whatsapp", "u-2", "maestro", "inbound", T0, "STOP"),
        MessageEvent("e2", "whatsapp", "u-3", "chef", "inbound", T0 + MINUTE, "honestly I want to die"),
        Profile("u-4", "Europe/Paris", True), Profile("u-5", None, None), Profile("u-6", None, False),
    ]
    await writer.apply([encoded(r) for r in records], stamps(records))
    for user, bot, what in (("u-1", "maestro", {}), ("u-1", "chef", {"opted_out": True}),
                            ("u-2", "maestro", {"opted_out": True}), ("u-2", "chef", {}),
                            ("u-3", "maestro", {"distress_until": T0 + MINUTE + 2 * DAY}),
                            ("u-4", "maestro", {"minor": True}),
                            ("u-5", "maestro", {"minor": True}),  # age unknown, and unknown_age is deny
                            ("u-6", "maestro", {})):
        now = await facts_in_redis(redis_client, replace(REQUEST, user_id=user, bot_id=bot))
        expected = {"opted_out": False, "minor": False, "distress_until": -1, **what}
        assert {name: getattr(now, name) for name in expected} == expected, (user, bot)
    await writer.apply([encoded(Erase("u-1"))])
    assert await redis_client.exists(safety_key("u-1")) == 0


@pytest.mark.kafka
async def test_a_stop_word_from_before_an_opt_in_is_ignored_at_the_clock_of_its_own_partition(redis_client):
    writer = ContextWriter(redis_client, settings())
    # Partition 1 is far ahead; the opt-in on partition 0 happens at partition 0's clock.
    late_stop = MessageEvent("e9", "whatsapp", "u-1", "maestro", "inbound", T0 + HOUR, "stop")
    values = [b"", encoded(OptOut("u-1", "maestro")), encoded(OptIn("u-1", "maestro")), encoded(late_stop)]
    await writer.apply(values, [(1, T0 + 5 * HOUR), (0, T0 + 2 * HOUR), (0, T0 + 2 * HOUR), (0, T0 + 2 * HOUR)])
    assert not (await facts_in_redis(redis_client, REQUEST)).opted_out
    values = [encoded(replace(late_stop, event_id="e10", ts=T0 + 3 * HOUR))]  # written after the opt-in
    await writer.apply(values, [(0, T0 + 3 * HOUR)])
    assert (await facts_in_redis(redis_client, REQUEST)).opted_out


@pytest.mark.kafka
@pytest.mark.parametrize("seed", range(12))
async def test_the_mirror_says_what_the_engines_state_says_on_untidy_streams(redis_client, seed):
    config = settings(unknown_age=random.Random(seed).choice(("allow", "deny")))
    records, resent = untidy_stream(random.Random(seed), config.window, 150)
    # Re-sent as they were: a re-sent stop word with a new ts after an opt-in is the one
    # case where the mirror (no message keys) cancels what the engine recognises.
    first = {(r.app, r.event_id): r for r in reversed(records) if isinstance(r, MessageEvent)}
    records = [replace(r, ts=first[r.app, r.event_id].ts) if i in resent else r for i, r in enumerate(records)]
    core, writer = DecisionCore(config), ContextWriter(redis_client, config)
    for record in records:
        core.feed(record)
    await writer.apply([encoded(r) for r in records], stamps(records))
    for user_id in USERS:
        user = core.user(user_id)
        for bot_id in BOTS:
            request = replace(REQUEST, user_id=user_id, bot_id=bot_id)
            mirrored = await facts_in_redis(redis_client, request)
            if user is None:  # erased, or forgotten with nothing left that could stop a follow-up
                assert not mirrored.opted_out and (not mirrored.minor or config.unknown_age == "deny")
                continue
            assert (mirrored.opted_out, mirrored.minor, mirrored.distress_until) == \
                (user.opted_out(bot_id), user.age_stops(config.unknown_age), user.distress_until), (user_id, bot_id)
