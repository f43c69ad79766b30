"""Safety rules of spec sections 6 and 7, through the same decision core."""
from __future__ import annotations

import pytest

from domain.safety import PhraseListClassifier, is_stop_word, quiet_hours_end
from foundation.settings import parse_quiet_hours
from tests.rulebook import DAY, HOUR, MINUTE, Erase, Kill, OptIn, OptOut, Profile, at, burst, msg, run, tick

pytestmark = pytest.mark.usefixtures("each_core")  # every test on both decision cores

T0 = at("11-28 09:00")
DUE = T0 + 4 * MINUTE + 12 * HOUR  # due time of burst(T0, 5)


# -- opt-out ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["STOP", "stop", " Stop! ", "ARRÊTER", "arreter", "Parar", "PARE", "unsubscribe"])
def test_stop_words_in_four_languages(text):
    assert is_stop_word(text)


@pytest.mark.parametrize("text", ["stop by the cinema tonight", "please don't stop", "", "stopwatch", "para mi"])
def test_words_inside_sentences_are_not_stops(text):
    assert not is_stop_word(text)


def test_stop_word_opts_out_of_that_bot_only():
    records = burst("u1", "maestro", T0, 4) + [msg("u1", "maestro", T0 + 5 * MINUTE, text="STOP")]
    records += burst("u1", "chef", T0, 5)
    r = run().feed(records, tick(T0 + DAY))
    assert [q.bot_id for q in r.requests] == ["chef"]
    assert r.decisions_for("u1", "maestro")[0].stopped_by == "opt_out"


def test_opt_out_of_all_bots_then_opt_in_one():
    r = run().feed(OptOut("u1", None), OptIn("u1", "chef"), burst("u1", "maestro", T0, 5), burst("u1", "chef", T0, 5))
    r.feed(tick(T0 + DAY))
    assert [q.bot_id for q in r.requests] == ["chef"]


def test_opt_out_is_permanent_until_opt_in():
    r = run().feed(OptOut("u1", "b"), burst("u1", "b", T0, 5), tick(T0 + DAY))
    assert r.requests == []
    later = T0 + 3 * DAY
    r.feed(OptIn("u1", None), burst("u1", "b", later, 5), tick(later + DAY))
    assert len(r.requests) == 1


def test_a_resent_stop_from_before_an_opt_in_is_ignored():
    stop = msg("u1", "b", T0, text="stop")
    r = run().feed(stop, tick(T0 + HOUR), OptIn("u1", "b"))
    r.feed(msg("u1", "b", T0, text="stop", event_id="late-copy"), burst("u1", "b", T0 + 2 * HOUR, 5), tick(T0 + DAY))
    assert len(r.requests) == 1


# -- one cap across bots and apps ------------------------------------------------------

def test_daily_cap_lets_the_earliest_due_win_then_the_smaller_bot():
    records = burst("u1", "zeta", T0, 5, app="facebook") + burst("u1", "alpha", T0, 5, app="instagram")
    records += burst("u1", "beta", T0 - HOUR, 5)
    r = run(user_cap_day=1).feed(records, tick(T0 + DAY))
    assert [q.bot_id for q in r.requests] == ["beta"]
    assert {d.bot_id: d.stopped_by for d in r.decisions if d.stopped_by} == {"alpha": "user_cap", "zeta": "user_cap"}
    r = run(user_cap_day=1).feed(records[:10], tick(T0 + DAY))
    assert [q.bot_id for q in r.requests] == ["alpha"]


def test_daily_cap_rolls_after_24_hours():
    r = run(user_cap_day=1).feed(burst("u1", "a", T0, 5), burst("u1", "b", T0 + 12 * HOUR + 3 * MINUTE, 5))
    r.feed(tick(T0 + 3 * DAY))
    assert [q.bot_id for q in r.requests] == ["a"]  # b was due 12 h after a: capped
    r = run(user_cap_day=1).feed(burst("u1", "a", T0, 5), burst("u1", "b", T0 + 24 * HOUR, 5), tick(T0 + 3 * DAY))
    assert [q.bot_id for q in r.requests] == ["a", "b"]


def test_weekly_cap_counts_seven_days():
    r = run(user_cap_day=0, user_cap_week=2)
    for day in range(4):
        start = T0 + day * DAY
        r.feed(burst("u1", f"bot{day}", start, 5), tick(start + 13 * HOUR))
    assert len(r.requests) == 2
    assert r.decisions[-1].stopped_by == "user_cap"


def test_a_decision_made_late_still_counts_the_sends_of_its_own_week():
    # Sends at day 0 + 12h and day 1 + 12h; the next pair is due at day 7 - 2h but decided
    # at day 7 + 13h, when the next record arrives: the first send is inside (due - 7d, due].
    r = run(user_cap_day=0, user_cap_week=2)
    r.feed(burst("u1", "a", T0, 5), tick(T0 + 13 * HOUR), burst("u1", "b", T0 + DAY, 5), tick(T0 + DAY + 13 * HOUR))
    assert len(r.requests) == 2
    due = T0 + 7 * DAY - 2 * HOUR
    r.feed(burst("u1", "c", due - 12 * HOUR - 4 * MINUTE, 5), msg("u9", "x", T0 + 7 * DAY + 13 * HOUR))
    decision = r.decisions_for("u1", "c")[0]
    assert (decision.due_ts, decision.decided_at) == (due, T0 + 7 * DAY + 13 * HOUR)
    assert decision.stopped_by == "user_cap"


def test_cap_zero_means_no_cap():
    r = run(user_cap_day=0, user_cap_week=0).feed(*(burst("u1", f"b{i}", T0, 5) for i in range(5)), tick(T0 + DAY))
    assert len(r.requests) == 5


# -- quiet hours -----------------------------------------------------------------------

def test_quiet_hours_hold_a_followup_to_their_end_and_it_replaces_T():
    start = at("11-28 11:00")  # due 23:04 UTC, inside 22:00-08:00
    r = run(quiet_hours="22:00-08:00").feed(burst("u1", "b", start, 5), tick(at("11-29 07:59")))
    assert r.requests == []
    assert r.decisions[0].outcome == "deferred" and r.decisions[0].send_ts == at("11-29 08:00")
    r.feed(tick(at("11-29 08:00")))
    assert len(r.requests) == 1 and r.requests[0].due_ts == at("11-29 08:00")


def test_quiet_hours_drop_a_followup_when_their_end_is_outside_the_messaging_window():
    start = at("11-28 11:00")
    r = run(quiet_hours="22:00-08:00", messaging_window="20h").feed(burst("u1", "b", start, 5), tick(at("11-29 09:00")))
    assert r.requests == []
    assert r.decisions[0].stopped_by == "quiet_hours"


def test_quiet_hours_follow_the_users_time_zone():
    start = at("11-28 10:00")   # due 22:04 UTC = 23:04 in Paris, 17:04 in New York
    paris = run(quiet_hours="22:00-08:00").feed(Profile("u1", "Europe/Paris", False), burst("u1", "b", start, 5), tick(at("11-29 06:00")))
    assert paris.requests == [] and paris.decisions[0].send_ts == at("11-29 07:00")  # 08:00 Paris
    ny = run(quiet_hours="22:00-08:00").feed(Profile("u1", "America/New_York", False), burst("u1", "b", start, 5), tick(at("11-29 06:00")))
    assert len(ny.requests) == 1 and ny.requests[0].due_ts == start + 4 * MINUTE + 12 * HOUR


def test_a_message_during_the_deferral_replaces_it():
    start = at("11-28 11:00")
    r = run(quiet_hours="22:00-08:00").feed(burst("u1", "b", start, 5), tick(at("11-29 01:00")))
    assert r.decisions[0].outcome == "deferred"
    r.feed(msg("u1", "b", at("11-29 02:00")), tick(at("11-29 08:00")))
    assert r.requests == []
    r.feed(tick(at("11-29 14:00")))
    assert len(r.requests) == 1 and r.requests[0].due_ts == at("11-29 14:00")


def test_quiet_hours_end_handles_same_day_windows_and_dst():
    window = parse_quiet_hours("01:00-05:00")
    assert quiet_hours_end(at("11-28 03:00"), None, window) == at("11-28 05:00")
    assert quiet_hours_end(at("11-28 05:00"), None, window) is None
    # Paris leaves summer time on 2026-10-25: 08:00 local is then 07:00 UTC, the day before 06:00.
    overnight = parse_quiet_hours("22:00-08:00")
    assert quiet_hours_end(at("10-24 21:00"), "Europe/Paris", overnight) == at("10-25 07:00")


# -- minors ----------------------------------------------------------------------------

def test_minors_never_receive_a_followup():
    r = run().feed(Profile("u1", None, True), burst("u1", "b", T0, 5), tick(T0 + DAY))
    assert r.requests == [] and r.decisions[0].stopped_by == "age"


def test_a_profile_that_arrives_after_the_messages_counts_at_the_decision():
    # Messages first, the profile later but before the due time: it is the user's now.
    r = run().feed(burst("u1", "b", T0, 5), Profile("u1", None, True), tick(T0 + DAY))
    assert r.requests == [] and r.decisions[0].stopped_by == "age"
    start = at("11-28 10:00")   # due 22:04 UTC: 17:04 in New York, 23:04 in Paris
    r = run(quiet_hours="22:00-08:00").feed(burst("u1", "b", start, 5), Profile("u1", "America/New_York", False))
    r.feed(tick(at("11-29 06:00")))
    assert [q.due_ts for q in r.requests] == [start + 4 * MINUTE + 12 * HOUR]
    r = run(quiet_hours="22:00-08:00").feed(burst("u1", "b", start, 5), Profile("u1", "Europe/Paris", False))
    r.feed(tick(at("11-29 06:00")))
    assert r.requests == [] and r.decisions[0].send_ts == at("11-29 07:00")


@pytest.mark.parametrize("unknown_age,sent", [("allow", 1), ("deny", 0)])
def test_unknown_age_follows_the_setting(unknown_age, sent):
    r = run(unknown_age=unknown_age).feed(burst("u1", "b", T0, 5), tick(T0 + DAY))
    assert len(r.requests) == sent
    adult = run(unknown_age=unknown_age).feed(Profile("u2", None, False), burst("u2", "b", T0, 5), tick(T0 + DAY))
    assert len(adult.requests) == 1


# -- distress --------------------------------------------------------------------------

@pytest.mark.parametrize("text,language", [
    ("honestly I want to die", "en"), ("j'ai envie de mourir", "fr"),
    ("QUIERO MORIR", "es"), ("às vezes eu quero morrer", "pt"), ("I might kill myself", "en"),
])
def test_distress_phrases_are_detected(text, language):
    detection = PhraseListClassifier().detect(text)
    assert detection is not None and detection.language == language


@pytest.mark.parametrize("text", ["this film is killer", "I am dying to see it!", "Die Hard is a classic"])
def test_ordinary_talk_is_not_distress(text):
    assert PhraseListClassifier().detect(text) is None


def test_distress_cools_the_user_off_then_a_new_silence_may_earn_one():
    records = burst("u1", "b", T0, 4) + [msg("u1", "b", T0 + 5 * MINUTE, text="I want to die")]
    r = run(distress_cooloff="3d").feed(records, tick(T0 + DAY))
    assert r.requests == [] and r.decisions[0].stopped_by == "distress"
    later = T0 + 4 * DAY
    r.feed(burst("u1", "b", later, 5), tick(later + DAY))
    assert len(r.requests) == 1
    assert r.core.stats["distress"] == 1


def test_distress_with_one_bot_cools_off_every_bot_of_the_user():
    records = burst("u1", "a", T0, 5) + [msg("u1", "b", T0, text="no reason to live")] + burst("u1", "b", T0 + MINUTE, 5)
    r = run().feed(records, tick(T0 + DAY))
    assert r.requests == []
    assert {d.stopped_by for d in r.decisions} == {"distress"}


def test_a_late_message_due_inside_a_cooloff_that_ended_before_it_arrived_is_stopped():
    """Found by the property suite (seed 40416): the cool-off ended on the clock, but a late
    message makes a decision due before its end. Spec section 6, "gets no follow-up from any
    bot for a cool-off period", judged at T (section 3); section 4, "a late event still
    counts if the decision it could change has not been made yet"."""
    r = run(min_inbound=1, window="1d", idle_delay="1h", messaging_window="6h", distress_cooloff="2d")
    r.feed(msg("u1", "a", T0, text="I want to die"), tick(T0 + 50 * HOUR))  # cool-off ended at T0 + 48 h
    late = msg("u1", "b", T0 + 40 * HOUR)  # not older than the clock minus W: it counts, due at T0 + 41 h
    r.feed(late, tick(T0 + 50 * HOUR))
    [decision] = r.decisions_for("u1", "b")
    assert (decision.due_ts, decision.stopped_by) == (late.ts + HOUR, "distress")
    assert r.requests == []


# -- kill switches ---------------------------------------------------------------------

@pytest.mark.parametrize("kill,stopped", [
    (Kill("bot", "b", True), True), (Kill("bot", "other", True), False),
    (Kill("app", "whatsapp", True), True), (Kill("app", "facebook", True), False),
    (Kill("all", None, True), True),
])
def test_kill_switches(kill, stopped):
    r = run().feed(burst("u1", "b", T0, 5), kill, tick(T0 + DAY))
    assert (r.requests == []) == stopped
    if stopped:
        assert r.decisions[0].stopped_by == "kill_switch"


def test_lifting_a_kill_lets_later_decisions_through():
    r = run().feed(Kill("all", None, True), Kill("all", None, False), burst("u1", "b", T0, 5), tick(T0 + DAY))
    assert len(r.requests) == 1


@pytest.mark.parametrize("scope, target", [("bot", "b"), ("app", "whatsapp")])
def test_lifting_a_kill_of_a_bot_or_an_app_lets_its_followups_through_again(scope, target):
    r = run().feed(burst("u1", "b", T0, 5), Kill(scope, target, True), tick(T0 + DAY))
    assert r.requests == [] and r.decisions[0].stopped_by == "kill_switch"
    later = T0 + 3 * DAY
    r.feed(Kill(scope, target, False), burst("u1", "b", later, 5), tick(later + DAY))
    assert len(r.requests) == 1 and r.decisions[-1].checks[3] == ("kill_switch", True, "")
    # Lifting one kill leaves the others on.
    r = run().feed(Kill("bot", "b", True), Kill("app", "whatsapp", True), Kill(scope, target, False),
                   burst("u1", "b", T0, 5), tick(T0 + DAY))
    assert r.requests == [] and r.decisions[0].stopped_by == "kill_switch"


# -- erasure ---------------------------------------------------------------------------

def test_erase_forgets_everything_about_the_user():
    r = run().feed(Profile("u1", "Europe/Paris", False), OptOut("u1", "x"), burst("u1", "b", T0, 5), burst("u2", "b", T0, 5))
    r.feed(Erase("u1"))
    assert not r.core.has_user("u1")
    assert r.erased == ["u1"]
    r.feed(tick(T0 + DAY))
    assert [q.user_id for q in r.requests] == ["u2"]


# -- holdout ---------------------------------------------------------------------------

def test_holdout_is_stable_and_recorded():
    records = [burst(f"u{i}", "b", T0, 5) for i in range(200)]
    first = run(holdout=0.3).feed(*records, tick(T0 + DAY))
    second = run(holdout=0.3).feed(*records, tick(T0 + DAY))
    held = {d.user_id for d in first.decisions if d.stopped_by == "holdout"}
    assert held == {d.user_id for d in second.decisions if d.stopped_by == "holdout"}
    assert 30 <= len(held) <= 90   # about 30% of 200
    assert len(first.requests) == 200 - len(held)


def test_every_decision_records_every_rule():
    r = run().feed(burst("u1", "b", T0, 5), tick(T0 + DAY))
    from domain.rules import RULES
    assert tuple(check.rule for check in r.decisions[0].checks) == RULES


@pytest.mark.parametrize("zone", ["Europe/Paris", "Australia/Lord_Howe", "America/St_Johns", "Pacific/Chatham"])
def test_cached_zone_offsets_give_the_local_minute_across_every_transition(zone):
    # The offset is cached per quarter hour of UTC; Lord Howe moves by 30 minutes,
    # St John's sits at -3:30, Chatham at +12:45: around each transition the local time
    # must be the one the calendar gives.
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from domain.safety import _utc_offset_ms
    tz = ZoneInfo(zone)
    start = at("01-01 00:00")
    transitions = [ts for ts in range(start, start + 366 * DAY, HOUR)
                   if tz.utcoffset(datetime.fromtimestamp(ts / 1000, tz)) != tz.utcoffset(datetime.fromtimestamp((ts + HOUR) / 1000, tz))]
    assert transitions, "the zone changes its offset in the year"
    for transition in transitions:
        for ts in range(transition - 2 * HOUR, transition + 3 * HOUR, 7 * 1000):
            local = datetime.fromtimestamp(ts / 1000, tz)
            assert (ts + _utc_offset_ms(zone, ts)) // MINUTE % 1440 == local.hour * 60 + local.minute, ts
