"""The rule where production is untidy (issue 13): late messages, deferrals, re-sends,
true counts. Spec sections 3, 4 and 6, one behaviour per test, through the decision core
that ``relance replay`` and the engine share. The cancels between the decision and the
hand-over are in ``tests/test_lastcheck.py`` and, through Kafka, ``tests/test_cancels_kafka.py``.
"""
from __future__ import annotations

from tests.rulebook import DAY, HOUR, MINUTE, Kill, OptIn, OptOut, Profile, at, burst, msg, run, tick

T0 = at("11-28 09:00")


# -- 1. the cap counts follow-ups on both sides of the new one's send time ----------------------

def test_a_late_message_cannot_slip_a_second_followup_under_the_daily_cap():
    # A's follow-up goes out at 21:04. B's fifth message (08:00) arrives hours late, after
    # it: B's pair becomes due at 20:00, in the past. With B, the 24 hours around 20:00-21:04
    # would hold two follow-ups: B is suppressed by the cap.
    r = run(user_cap_day=1)
    r.feed(burst("u1", "a", T0, 5), burst("u1", "b", at("11-28 07:56"), 4), tick(at("11-28 21:04")))
    assert [q.bot_id for q in r.requests] == ["a"] and r.requests[0].due_ts == at("11-28 21:04")
    r.feed(msg("u1", "b", at("11-28 08:00")), tick(at("11-28 22:00")))
    (late,) = [d for d in r.decisions_for("u1", "b") if d.due_ts == at("11-28 20:00")]
    assert late.stopped_by == "user_cap"
    assert [q.bot_id for q in r.requests] == ["a"]


def test_the_weekly_cap_also_counts_follow_ups_sent_after_a_late_decisions_send_time():
    r = run(user_cap_day=0, user_cap_week=2)
    # Two follow-ups on days 2 and 3; then a late message makes a pair due on day 1.
    r.feed(burst("u1", "a", T0 + DAY, 5), tick(T0 + DAY + 13 * HOUR),
           burst("u1", "b", T0 + 2 * DAY, 5), tick(T0 + 2 * DAY + 13 * HOUR))
    assert len(r.requests) == 2
    r.feed(burst("u1", "c", T0 - 4 * MINUTE, 5), tick(T0 + 3 * DAY))
    assert r.decisions_for("u1", "c")[-1].stopped_by == "user_cap"
    assert len(r.requests) == 2


def test_a_late_decision_a_full_day_before_the_next_send_is_allowed():
    # Spans are 24 hours long: sends exactly 24 hours apart are not in one span.
    r = run(user_cap_day=1)
    r.feed(burst("u1", "a", T0 + DAY - 4 * MINUTE, 5), tick(T0 + DAY + 13 * HOUR))
    sent = r.requests[0].due_ts
    r.feed(burst("u1", "b", sent - DAY - 12 * HOUR - 4 * MINUTE, 5), tick(T0 + 3 * DAY))
    assert [q.due_ts for q in r.requests] == [sent, sent - DAY]


# -- 2. a deferred follow-up is decided at T', as things stand then -----------------------------

NIGHT_BURST = at("11-28 12:40")   # due 00:44 on the 29th, inside 22:00-08:00 UTC
T_PRIME = at("11-29 08:00")


def night(**overrides):
    return run(quiet_hours="22:00-08:00", **overrides)


def test_a_kill_on_at_the_due_time_and_lifted_during_the_night_does_not_stop_the_followup():
    r = night().feed(burst("u1", "b", NIGHT_BURST, 5), tick(at("11-29 00:30")), Kill("all", None, True),
                     tick(at("11-29 00:44")))
    (deferred,) = r.decisions
    assert (deferred.outcome, deferred.send_ts, deferred.stopped_by) == ("deferred", T_PRIME, None)
    assert [check.rule for check in deferred.checks] == ["quiet_hours"]  # it says only that
    r.feed(tick(at("11-29 03:00")), Kill("all", None, False), tick(T_PRIME))
    assert len(r.requests) == 1 and r.requests[0].due_ts == T_PRIME


def test_a_kill_switched_on_during_the_night_stops_the_deferred_followup():
    r = night().feed(burst("u1", "b", NIGHT_BURST, 5), tick(at("11-29 01:00")), Kill("bot", "b", True), tick(T_PRIME))
    assert r.requests == [] and r.decisions[-1].stopped_by == "kill_switch"
    assert r.decisions[-1].due_ts == T_PRIME


def test_an_opt_out_before_the_due_time_lifted_during_the_night_does_not_stop_it():
    r = night().feed(burst("u1", "b", NIGHT_BURST, 5), OptOut("u1", "b"), tick(at("11-29 01:00")))
    assert r.decisions[0].outcome == "deferred"
    r.feed(OptIn("u1", "b"), tick(T_PRIME))
    assert len(r.requests) == 1


def test_an_opt_out_or_a_minor_profile_during_the_night_stops_it():
    for control, rule in ((OptOut("u1", None), "opt_out"), (Profile("u1", None, True), "age")):
        r = night().feed(burst("u1", "b", NIGHT_BURST, 5), tick(at("11-29 01:00")), control, tick(T_PRIME))
        assert r.requests == [] and r.decisions[-1].stopped_by == rule


def test_distress_during_the_night_stops_the_deferred_followup():
    r = night().feed(burst("u1", "b", NIGHT_BURST, 5), tick(at("11-29 01:00")))
    r.feed(msg("u1", "other", at("11-29 02:00"), text="I want to die"), tick(T_PRIME))
    assert r.requests == [] and {d.stopped_by for d in r.decisions_for("u1", "b")} == {None, "distress"}


def test_messages_that_leave_the_window_during_the_night_are_not_counted_at_T_prime():
    # W = 20 h: at T = 00:44 the five messages of 05:00-05:04 and 12:40 count; by 08:00
    # those of 05:00-05:03 have left (T' - W = 12:00): engaged fails at T'.
    records = burst("u1", "b", at("11-28 05:00"), 4) + [msg("u1", "b", NIGHT_BURST + 4 * MINUTE)]
    r = night(window="20h").feed(records, tick(T_PRIME))
    assert [d.outcome for d in r.decisions] == ["deferred", "suppressed"]
    assert r.decisions[-1].stopped_by == "engaged" and r.decisions[-1].inbound_in_window == 1


def test_a_late_inbound_message_that_arrives_during_the_night_counts_at_T_prime():
    records = burst("u1", "b", NIGHT_BURST, 4)
    r = night().feed(records, tick(at("11-29 01:00")))
    assert r.decisions[0].outcome == "deferred"
    r.feed(msg("u1", "b", NIGHT_BURST - HOUR), tick(T_PRIME))   # older than L: L stays
    assert len(r.requests) == 1 and r.requests[0].inbound_in_window == 5


def test_a_new_time_zone_during_the_night_moves_the_deferral_again():
    # At T' = 08:00 UTC it is midnight in Los Angeles: deferred again, to 08:00 there
    # (16:00 UTC), still inside M = 30 h of the last inbound message (12:44 UTC).
    r = night(messaging_window="30h").feed(burst("u1", "b", NIGHT_BURST, 5), tick(at("11-29 01:00")),
                                           Profile("u1", "America/Los_Angeles", False))
    r.feed(tick(T_PRIME))
    assert [d.outcome for d in r.decisions] == ["deferred", "deferred"]
    assert r.decisions[-1].send_ts == at("11-29 16:00")
    r.feed(tick(at("11-29 16:00")))
    assert [q.due_ts for q in r.requests] == [at("11-29 16:00")]


def test_when_the_end_of_quiet_hours_is_outside_the_window_the_followup_is_dropped_at_T():
    r = night(messaging_window="19h").feed(burst("u1", "b", NIGHT_BURST, 5), tick(at("11-29 01:00")))
    (dropped,) = r.decisions
    assert (dropped.outcome, dropped.stopped_by) == ("suppressed", "quiet_hours")


# -- 3. a re-sent webhook changes nothing while the first one could still count -----------------

def test_a_resent_old_message_with_a_new_ts_opens_no_new_silence():
    records = burst("u1", "b", T0, 7)
    r = run().feed(records, tick(T0 + 13 * HOUR))
    assert len(r.requests) == 1
    first = records[0]
    resent = msg("u1", "b", T0 + 20 * HOUR, event_id=first.event_id, app=first.app)  # days of platforms' retries
    r.feed(resent, tick(T0 + 2 * DAY))
    assert len(r.requests) == 1
    assert r.core.stats["duplicates"] == 1


def test_a_resent_outbound_message_with_a_new_ts_does_not_move_L():
    # The bot's reply at 09:10 makes the pair due at 21:10; its webhook re-sent with a
    # later ts must not push the due time back.
    records = burst("u1", "b", T0, 5) + [msg("u1", "b", T0 + 10 * MINUTE, direction="outbound", event_id="reply")]
    resent = msg("u1", "b", T0 + 5 * HOUR, direction="outbound", event_id="reply")
    r = run().feed(records, resent, tick(T0 + 2 * DAY))
    assert [q.due_ts for q in r.requests] == [T0 + 12 * HOUR + 10 * MINUTE]
    assert r.core.stats["duplicates"] == 1


def test_a_resent_message_many_messages_later_is_still_one_message():
    records = burst("u1", "b", T0, 30, step=10 * MINUTE)
    again = [msg("u1", "b", m.ts, event_id=m.event_id, app=m.app) for m in records[:10]]
    r = run().feed(records, again, tick(T0 + 2 * DAY))
    assert r.requests[0].inbound_in_window == 30 and r.core.stats["duplicates"] == 10


def test_a_resent_stop_word_after_an_opt_in_changes_nothing():
    stop = msg("u1", "b", T0, text="STOP")
    r = run().feed(stop, burst("u1", "b", T0 + MINUTE, 5), OptIn("u1", "b"))
    r.feed(msg("u1", "b", T0 + 2 * HOUR, text="STOP", event_id=stop.event_id, app=stop.app), tick(T0 + DAY))
    assert len(r.requests) == 1


# -- 4. inbound_in_window is the exact count, not a flag that N was reached ---------------------

def test_the_request_carries_the_exact_number_of_inbound_messages_in_the_window():
    r = run().feed(burst("u1", "b", T0, 23, step=20 * MINUTE), tick(T0 + 2 * DAY))
    assert r.requests[0].inbound_in_window == 23


def test_the_count_is_exact_on_a_window_that_slides_past_old_messages():
    # 40 messages, one every 9 hours; W = 14 days: those within (T - W, T] count, no more.
    records = burst("u1", "b", T0, 40, step=9 * HOUR)
    r = run(idle_delay="10h").feed(records, tick(T0 + 20 * DAY))
    due = records[-1].ts + 10 * HOUR
    expected = sum(1 for m in records if due - 14 * DAY < m.ts <= due)
    assert expected < 40 and r.requests[-1].inbound_in_window == expected
