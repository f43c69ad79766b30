"""The report's arithmetic (``domain/report.py``): intervals against published values, the
verdict's rule, due times, a planted effect found, and a pair's stories."""
from __future__ import annotations

import hashlib

import orjson
import pytest

from devstack.traffic import TrafficShape, generate
from domain.report import (
    ALL, ANSWERS, DISTRESS, MIN_ARM, MIN_USERS, STOPS, Difference, Inputs, Share, Timed, build, clustered, dues,
    newcombe, stories, verdict, wilson,
)
from foundation.settings import Settings
from relance.commands.replay import replay
from relance.commands.report import timed_records
from schemas.records import FollowupOutcome, MessageEvent, format_ts, parse_followup, parse_ts

DAY = 86_400_000


# -- intervals --------------------------------------------------------------------------------

@pytest.mark.parametrize("hits, n, low, high", [
    (0, 10, 0.0, 0.2775),     # Newcombe 1998 (single proportion), example 0/10
    (81, 263, 0.2553, 0.3662),  # 81/263, the same paper
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_the_published_intervals(hits, n, low, high):
    got = wilson(hits / n, n)
    assert got == pytest.approx((low, high), abs=1e-4)


@pytest.mark.parametrize("first, second, low, high", [
    ((56, 70), (48, 80), 0.0524, 0.3339),   # Newcombe 1998, two proportions, method 10, example (a)
    ((9, 10), (3, 10), 0.1705, 0.8090),     # example (c)
])
def test_newcombe_matches_the_published_intervals(first, second, low, high):
    difference = newcombe(Share(*first, users=first[1], effective_n=first[1]),
                          Share(*second, users=second[1], effective_n=second[1]))
    assert (difference.low, difference.high) == pytest.approx((low, high), abs=1e-4)


def test_silences_of_one_user_count_for_less_than_independent_ones():
    independent = clustered([(1, 1)] * 30 + [(0, 1)] * 70)
    assert independent.effective_n == pytest.approx(100, rel=0.02)  # n/(n-1): a small-sample factor
    together = clustered([(10, 10)] * 3 + [(0, 10)] * 7)  # ten users, each all or nothing
    assert together.value == independent.value and together.users == 10
    assert together.effective_n < 12
    assert together.interval()[1] - together.interval()[0] > 2 * (independent.interval()[1] - independent.interval()[0])


# -- the verdict ------------------------------------------------------------------------------

def arm(hits: int, n: int, users: int | None = None) -> Share:
    return Share(hits, n, users if users is not None else n, float(n))


def comparison(answers, stops, distress=((5, 400), (5, 400))) -> dict:
    return {ANSWERS: newcombe(arm(*answers[0]), arm(*answers[1])),
            STOPS: newcombe(arm(*stops[0]), arm(*stops[1])),
            DISTRESS: newcombe(arm(*distress[0]), arm(*distress[1]))}


@pytest.mark.parametrize("answers, stops, kind", [
    (((240, 400), (120, 400)), ((8, 400), (8, 400)), "helped"),
    (((240, 400), (120, 400)), ((60, 400), (8, 400)), "helped_with_stops"),
    (((160, 400), (150, 400)), ((8, 400), (9, 400)), "no_change"),
    (((160, 400), (150, 400)), ((60, 400), (8, 400)), "no_change_with_stops"),
    (((100, 400), (200, 400)), ((8, 400), (8, 400)), "lowered"),
])
def test_the_verdict_reads_the_intervals(answers, stops, kind):
    said = verdict(comparison(answers, stops), DAY)
    assert said.kind == kind
    assert "24h" in said.sentence and "95% CI" in said.sentence
    assert ("without raising opt-outs" in said.sentence) == (kind == "helped")


def test_distress_that_rose_is_always_said():
    said = verdict(comparison(((240, 400), (120, 400)), ((8, 400), (8, 400)), ((80, 400), (8, 400))), DAY)
    assert said.kind == "helped_with_distress" and "Distress within a week rose" in said.sentence


@pytest.mark.parametrize("treated, held, users", [
    (400, MIN_ARM - 1, 400),       # too few held-out silences
    (MIN_ARM - 1, 400, 400),       # too few treated
    (400, 400, MIN_USERS - 1),     # plenty of silences, from too few people
])
def test_too_small_to_say_is_its_own_answer(treated, held, users):
    answers = newcombe(arm(treated, treated, users), arm(0, held, users))  # a huge difference...
    stops = newcombe(arm(0, treated, users), arm(0, held, users))
    said = verdict({ANSWERS: answers, STOPS: stops, DISTRESS: stops}, DAY)
    assert said.kind == "too_small" and said.sentence.startswith("Too small to say")  # ...still says nothing


def test_no_holdout_says_how_to_get_one():
    empty = Difference(arm(10, 100), Share(0, 0), None, None)
    said = verdict({ANSWERS: empty, STOPS: empty, DISTRESS: empty}, DAY)
    assert said.kind == "too_small" and "set holdout above 0" in said.sentence


# -- due times --------------------------------------------------------------------------------

T0 = parse_ts("2026-11-28T11:00:00Z")


def pair_records(user: str = "u1", bot: str = "maestro", start: int = T0) -> list[bytes]:
    return [orjson.dumps({"event_id": f"wamid.{user}{n}", "app": "whatsapp", "user_id": user, "bot_id": bot,
                          "direction": "inbound", "ts": format_ts(start + n * 60_000), "text": "hi"})
            for n in range(5)]


def decided(lines: list[bytes], **settings) -> tuple[list, list]:
    decisions, requests = [], []
    replay(lines, Settings(**settings), on_request=requests.append, on_decision=decisions.append)
    return decisions, requests


def test_a_deferral_and_its_second_decision_are_one_due_time_and_a_repeat_counts_once():
    # Due at 23:04 UTC, inside quiet hours: deferred to 08:00, then emitted at 08:00.
    lines = pair_records() + [orjson.dumps({"type": "tick", "ts": "2026-11-29T08:00:00Z"})]
    decisions, requests = decided(lines)
    assert [d.outcome for d in decisions] == ["deferred", "emitted"] and len(requests) == 1
    found = dues(decisions + decisions)  # every record written twice, as after a crash
    assert len(found) == 1 and found[0].deferred and found[0].final.outcome == "emitted"
    report = build(Inputs(decisions + decisions), DAY)
    funnel = report.funnels[ALL]
    assert (funnel.due, funnel.deferred, funnel.emitted, sum(funnel.suppressed.values())) == (1, 1, 1, 0)
    # When the records end at 01:00 the engine's clock never reached 08:00: still deferred, not replaced.
    night = pair_records() + [orjson.dumps({"type": "tick", "ts": "2026-11-29T01:00:00Z"})]
    pending = build(Inputs(decided(night)[0]), DAY).funnels[ALL]
    assert (pending.due, pending.still_deferred, pending.deferral_replaced, pending.emitted) == (1, 1, 0, 0)
    # A bot message at 02:00 replaces the deferral (section 3: the rule is applied again at
    # the new due time, 14:00, by then more than M after the last inbound message).
    reply = orjson.dumps({"event_id": "m_reply", "app": "whatsapp", "user_id": "u1", "bot_id": "maestro",
                          "direction": "outbound", "ts": "2026-11-29T02:00:00Z", "text": "still there?"})
    replaced = build(Inputs(decided(night + [reply, orjson.dumps({"type": "tick", "ts": "2026-11-29T20:00:00Z"})])[0]),
                     DAY).funnels[ALL]
    assert (replaced.due, replaced.deferral_replaced, replaced.still_deferred) == (2, 1, 0)
    assert dict(replaced.suppressed) == {"messaging_window": 1}


# -- a planted effect -------------------------------------------------------------------------

def _share(text: str, percent: int) -> bool:
    return int(hashlib.blake2b(text.encode(), digest_size=2).hexdigest(), 16) % 100 < percent


@pytest.fixture(scope="module")
def simulated():
    lines = [orjson.dumps(r) for r in generate(TrafficShape(users=300, days=21), seed=4)]
    decisions, requests = decided(lines, holdout=0.2)
    return lines, decisions, requests


def planted(simulated, words: str, percent: int) -> Inputs:
    """The simulated traffic, where users answer ``percent`` of the follow-ups that went out
    with ``words`` an hour later: an effect only follow-ups can have made."""
    lines, decisions, requests = simulated
    stream = list(timed_records(lines, lambda *_: None))
    for request in requests:
        if _share(request.followup_id, percent):
            at = request.due_ts + 3_600_000
            stream.append(Timed(at, MessageEvent(f"planted-{request.followup_id}", request.app, request.user_id,
                                                 request.bot_id, "inbound", at, words)))
    return Inputs(decisions, (), stream)


def test_a_planted_rise_in_answers_is_found(simulated):
    report = build(planted(simulated, "thanks, good idea!", 70), DAY)
    assert report.verdict.kind == "helped", report.verdict.sentence
    assert report.comparison[ALL][ANSWERS].low > 0.1


def test_planted_stop_words_are_found_too(simulated):
    report = build(planted(simulated, "STOP", 40), DAY)
    assert "_with_stops" in report.verdict.kind, report.verdict.sentence


# -- a pair's stories -------------------------------------------------------------------------

def test_a_pair_story_runs_from_decision_to_answer():
    answer = orjson.dumps({"event_id": "wamid.answer", "app": "whatsapp", "user_id": "u1", "bot_id": "maestro",
                           "direction": "inbound", "ts": "2026-11-29T09:00:00Z", "text": "oh nice, thanks"})
    lines = pair_records() + [orjson.dumps({"type": "tick", "ts": "2026-11-29T08:00:00Z"}), answer,
                              orjson.dumps({"type": "tick", "ts": "2026-11-30T12:00:00Z"})]
    decisions, requests = decided(lines)
    request = parse_followup(orjson.loads(requests[0].to_json()))
    outcomes = [FollowupOutcome.of(request, word, None, 0, parse_ts("2026-11-29T08:00:05Z") + n * 60_000)
                for n, word in enumerate(("read", "delivered", "sent", "generated"))]  # arriving out of order
    outcomes.insert(0, FollowupOutcome.of(request, "answered", None, 0, parse_ts("2026-11-29T09:00:00Z")))
    told = stories("u1", "maestro", decisions, outcomes)
    first, second = told
    assert [d.outcome for d in first.decisions] == ["deferred", "emitted"]
    # Spec section 9: in order, sent, delivered, read, then whether the user answered.
    assert [o.outcome for o in first.outcomes] == ["generated", "sent", "delivered", "read", "answered"]
    assert first.answer_ts == parse_ts("2026-11-29T09:00:00Z")
    # The answer opened a new silence; one follow-up a day: the cap stops the next one.
    assert [d.stopped_by for d in second.decisions] == ["user_cap"] and second.answer_ts is None
    assert stories("u1", "chef-lucie", decisions, outcomes) == []
