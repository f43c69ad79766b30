"""The rule of spec sections 3 and 4, one behaviour per test."""
from __future__ import annotations

import pytest

from domain.rules import DecisionCore, event_key, followup_id
from foundation.settings import Settings
from schemas.records import InvalidRecord, OptOut
from tests.rulebook import DAY, HOUR, MINUTE, at, burst, msg, run, tick

pytestmark = pytest.mark.usefixtures("each_core")  # every test on both decision cores

T0 = at("11-28 09:00")


def test_five_inbound_then_silence_gives_one_followup_at_L_plus_D():
    r = run().feed(burst("u1", "maestro", T0, 5), tick(T0 + 4 * MINUTE + 12 * HOUR))
    assert len(r.requests) == 1
    request = r.requests[0]
    assert (request.user_id, request.bot_id) == ("u1", "maestro")
    assert request.due_ts == T0 + 4 * MINUTE + 12 * HOUR
    assert request.inbound_in_window == 5
    assert request.last_inbound_ts == T0 + 4 * MINUTE


def test_nothing_before_the_due_time():
    r = run().feed(burst("u1", "maestro", T0, 5), tick(T0 + 4 * MINUTE + 12 * HOUR - 1))
    assert r.requests == [] and r.decisions == []


def test_four_inbound_are_not_enough_and_the_record_says_engaged():
    r = run().feed(burst("u1", "maestro", T0, 4), tick(T0 + 13 * HOUR))
    assert r.requests == []
    (decision,) = r.decisions
    assert decision.outcome == "suppressed" and decision.stopped_by == "engaged"
    assert decision.inbound_in_window == 4


def test_bot_messages_never_count():
    records = burst("u1", "maestro", T0, 4) + [msg("u1", "maestro", T0 + 10 * MINUTE, direction="outbound")]
    r = run().feed(records, tick(T0 + 23 * HOUR))
    assert r.requests == []
    assert r.decisions[0].stopped_by == "engaged"


def test_window_lower_edge_is_exclusive():
    # T = L + D. The first inbound sits exactly at T - W: it does not count. W < 2D keeps
    # the gap before the burst shorter than D, so no earlier silence is decided.
    window, delay = 20 * HOUR, 12 * HOUR
    last = T0 + window - delay            # T - W == T0
    records = [msg("u1", "b", T0)] + burst("u1", "b", last - 3 * MINUTE, 4)
    r = run(window="20h").feed(records, tick(last + delay))
    assert r.decisions[-1].stopped_by == "engaged" and r.decisions[-1].inbound_in_window == 4
    records = [msg("u2", "b", T0 + 1)] + burst("u2", "b", last - 3 * MINUTE, 4)
    r = run(window="20h").feed(records, tick(last + delay))
    assert len(r.requests) == 1 and r.requests[0].inbound_in_window == 5


def test_followup_goes_to_the_app_of_the_latest_inbound():
    records = burst("u1", "b", T0, 4, app="whatsapp") + [
        msg("u1", "b", T0 + 10 * MINUTE, app="instagram"),
        msg("u1", "b", T0 + 11 * MINUTE, app="facebook", direction="outbound"),
    ]
    r = run().feed(records, tick(T0 + 11 * MINUTE + 12 * HOUR))
    assert r.requests[0].app == "instagram"


def test_unanswered_followup_is_the_last_one_until_the_user_writes():
    r = run().feed(burst("u1", "b", T0, 5), tick(T0 + 13 * HOUR))
    assert len(r.requests) == 1
    sent = r.requests[0].due_ts
    # The delivered follow-up comes back as an outbound message: it moves L, not the silence.
    r.feed(msg("u1", "b", sent + 1000, direction="outbound"), tick(sent + 1000 + 12 * HOUR), tick(sent + 10 * DAY))
    assert len(r.requests) == 1
    assert r.decisions[-1].stopped_by == "one_per_silence"


def test_an_answer_opens_a_new_silence_and_counts_towards_N():
    r = run().feed(burst("u1", "b", T0, 5), tick(T0 + 13 * HOUR))
    answer_ts = T0 + 20 * HOUR
    r.feed(msg("u1", "b", answer_ts), tick(answer_ts + 12 * HOUR))
    assert len(r.requests) == 2
    first, second = r.requests
    assert second.last_inbound_ts == answer_ts
    assert second.followup_id != first.followup_id


def test_messaging_window_stops_a_followup_long_after_the_last_inbound():
    # The bot kept talking: L moved twice before each due time, so T - I = 34 h > M = 24 h.
    records = burst("u1", "b", T0, 5, step=0) + [
        msg("u1", "b", T0 + 11 * HOUR, direction="outbound"),
        msg("u1", "b", T0 + 22 * HOUR, direction="outbound"),
    ]
    r = run().feed(records, tick(T0 + 34 * HOUR))
    assert r.requests == []
    assert [d.stopped_by for d in r.decisions] == ["messaging_window"]


def test_idle_delay_longer_than_the_messaging_window_never_sends():
    r = run(idle_delay="25h").feed(burst("u1", "b", T0, 5), tick(T0 + 2 * DAY))
    assert r.requests == [] and r.decisions[0].stopped_by == "messaging_window"


def test_messaging_window_is_inclusive():
    records = burst("u1", "b", T0, 5, step=0) + [msg("u1", "b", T0 + 12 * HOUR, direction="outbound")]
    r = run().feed(records, tick(T0 + 24 * HOUR))
    assert len(r.requests) == 1


def test_message_exactly_at_the_due_time_breaks_the_silence():
    records = burst("u1", "b", T0, 5)
    due = records[-1].ts + 12 * HOUR
    r = run().feed(records, msg("u1", "b", due))
    assert r.decisions == []
    r.feed(tick(due + 12 * HOUR))
    assert len(r.requests) == 1 and r.requests[0].due_ts == due + 12 * HOUR


def test_a_tick_at_the_due_time_decides_but_a_message_there_does_not_for_others():
    a = burst("ua", "b", T0, 5)
    due = a[-1].ts + 12 * HOUR
    r = run().feed(a, msg("uz", "b", due))  # another user's message at exactly T
    assert r.requests == []
    r.feed(tick(due))
    assert len(r.requests) == 1


def test_decisions_happen_in_due_order_with_user_then_bot_ties():
    records = burst("u2", "a", T0, 5) + burst("u1", "b", T0, 5) + burst("u1", "a", T0, 5)
    r = run().feed(records, tick(T0 + DAY))
    assert [(q.user_id, q.bot_id) for q in r.requests] == [("u1", "a"), ("u1", "b"), ("u2", "a")]


def test_duplicate_webhooks_are_one_message():
    records = burst("u1", "b", T0, 4)
    duplicate = msg("u1", "b", T0 + 5 * MINUTE, event_id=records[0].event_id, app=records[0].app)
    r = run().feed(records, duplicate, tick(T0 + DAY))
    assert r.requests == [] and r.decisions[0].inbound_in_window == 4
    assert r.core.stats["duplicates"] == 1
    assert r.core.duplicates_by_app == {"whatsapp": 1}


def test_duplicates_are_counted_per_app_for_the_metric_label():
    first = msg("u1", "b", T0, app="facebook")
    second = msg("u1", "b", T0 + MINUTE, app="instagram")
    r = run().feed(first, second, first, second, second)
    assert r.core.duplicates_by_app == {"facebook": 1, "instagram": 2}
    assert r.core.stats["duplicates"] == 3


def test_same_event_id_on_another_app_is_another_message():
    records = burst("u1", "b", T0, 4, app="facebook")
    other = msg("u1", "b", T0 + 5 * MINUTE, event_id=records[0].event_id, app="instagram")
    r = run().feed(records, other, tick(T0 + DAY))
    assert len(r.requests) == 1


def test_late_event_counts_while_the_decision_is_pending():
    records = burst("u1", "b", T0 + 10 * MINUTE, 4) + [msg("u1", "b", T0)]  # the fifth arrives late
    r = run().feed(records, tick(T0 + DAY))
    assert len(r.requests) == 1


def test_late_event_never_takes_back_a_decision():
    r = run().feed(burst("u1", "b", T0, 4), tick(T0 + 13 * HOUR))
    assert r.decisions[0].stopped_by == "engaged"
    r.feed(msg("u1", "b", T0 - MINUTE), tick(T0 + 2 * DAY))
    assert r.requests == []
    assert len(r.decisions) == 1


def test_event_older_than_clock_minus_window_changes_nothing():
    r = run().feed(tick(T0 + 30 * DAY), burst("u1", "b", T0, 5), tick(T0 + 31 * DAY))
    assert r.requests == [] and r.decisions == []
    assert r.core.stats["too_old"] == 5
    assert not r.core.has_user("u1")


def test_an_event_exactly_at_clock_minus_window_still_counts():
    # Only events *older* than clock - W change nothing (spec section 4).
    r = run(window="2d", min_inbound=1).feed(tick(T0 + 2 * DAY), msg("u1", "b", T0))
    assert r.core.stats["too_old"] == 0 and r.core.pairs_tracked() == 1
    r.feed(msg("u2", "b", T0 - 1))
    assert r.core.stats["too_old"] == 1


def test_clock_never_moves_backwards():
    r = run().feed(tick(T0 + DAY), msg("u1", "b", T0))
    assert r.core.clock == T0 + DAY


def test_late_message_that_makes_a_decision_due_waits_for_the_next_record():
    r = run().feed(tick(T0 + 3 * DAY), msg("u1", "b", T0 + 2 * DAY))
    assert r.decisions == []  # due at T0+2d+12h, already past: decided at the next record
    r.feed(msg("u9", "x", T0 + 3 * DAY))
    (decision,) = r.decisions_for("u1", "b")
    assert decision.due_ts == T0 + 2 * DAY + 12 * HOUR
    assert decision.decided_at == T0 + 3 * DAY
    assert decision.stopped_by == "engaged"


def test_followup_id_is_deterministic_across_runs():
    records = burst("u1", "b", T0, 5)
    first = run().feed(records, tick(T0 + DAY)).requests
    second = run().feed(records, tick(T0 + DAY)).requests
    assert first[0].followup_id == second[0].followup_id
    last = records[-1]
    assert first[0].followup_id == followup_id("u1", "b", last.ts, event_key(last.app, last.event_id))


def test_state_of_a_silent_pair_is_removed_once_no_late_event_can_need_it():
    r = run().feed(burst("u1", "b", T0, 5), tick(T0 + 13 * HOUR))
    last = T0 + 4 * MINUTE
    r.feed(tick(last + 28 * DAY - 12 * HOUR))   # L + 2W - D: a late event could still need it
    assert r.core.pairs_tracked() == 1
    r.feed(tick(last + 28 * DAY - 12 * HOUR + 1))
    assert r.core.pairs_tracked() == 0 and not r.core.has_user("u1")


def test_wall_mode_rejects_events_far_in_the_future_and_uses_the_wall_clock():
    core = DecisionCore(Settings.from_mapping({"clock": "wall", "quiet_hours": "off"}))
    with pytest.raises(InvalidRecord, match="ahead of the clock"):
        core.feed(msg("u1", "b", T0 + 6 * MINUTE), now=T0)
    core.feed(msg("u1", "b", T0 + 4 * MINUTE), now=T0)
    assert core.clock == T0


def test_wall_mode_future_boundary_is_exactly_five_minutes():
    core = DecisionCore(Settings.from_mapping({"clock": "wall", "quiet_hours": "off"}))
    core.feed(msg("u1", "b", T0 + 5 * MINUTE), now=T0)      # exactly 5 minutes ahead: valid
    with pytest.raises(InvalidRecord, match="more than 5 minutes ahead"):
        core.feed(msg("u1", "b", T0 + 5 * MINUTE + 1), now=T0)
    assert core.pairs_tracked() == 1 and core.stats["duplicates"] == 0


def test_wall_mode_decides_on_the_wall_clock_not_on_event_time():
    core = DecisionCore(Settings.from_mapping({"clock": "wall", "quiet_hours": "off"}))
    for event in burst("u1", "b", T0, 5):
        core.feed(event, now=T0 + 5 * MINUTE)
    core.feed(tick(T0 + 30 * DAY), now=T0 + 10 * HOUR)   # a tick's ts means nothing in wall mode
    assert core.drain()[0] == []
    core.advance(T0 + 4 * MINUTE + 12 * HOUR, inclusive=True)
    assert len(core.drain()[0]) == 1


def test_state_round_trips_through_its_serialised_form():
    from domain.rules import UserState
    r = run().feed(burst("u1", "b", T0, 5), OptOut("u1", None))
    state = r.core.user("u1")
    assert UserState.from_dict(state.to_dict()) == state


def test_a_later_changelog_record_of_a_user_replaces_the_earlier_one():
    # A restore reads engine.state in order, before compaction has removed old versions.
    from domain.state import UserState
    early = run().feed(burst("u1", "b", T0, 5), burst("u1", "c", T0, 5)).core.user("u1")
    late = run().feed(burst("u1", "b", T0, 2)).core.user("u1")
    core = DecisionCore(Settings.from_mapping({"clock": "event", "quiet_hours": "off"}))
    core.load_user("u1", UserState.from_dict(early.to_dict()))
    core.load_user("u1", UserState.from_dict(late.to_dict()))
    assert core.pairs_tracked() == 1
    core.feed(tick(T0 + DAY))
    requests, decisions, _, _ = core.drain()
    assert requests == [] and [d.stopped_by for d in decisions] == ["engaged"]
    core.forget_user("u1")
    assert core.pairs_tracked() == 0 and not core.has_user("u1")
