"""Did follow-ups help? The figures of ``relance report``, from the topics' records, no IO.

Everything here is computed from the records the pipeline already writes: the decisions
(``decisions``: every due time, the rule that stopped it, ``holdout`` for held-out pairs),
the follow-ups' stories (``followups.outcomes``: cancelled, generated, sent, delivered,
read, answered), the delivered texts (``delivery.<app>``: ``replaced`` when the honesty
check refused the generated text) and the conversation itself (``messages``: what users
wrote after, and their opt-outs).

- **Funnel**: every due time reached (spec section 3), what stopped it (the first failed
  rule), what quiet hours deferred, what was emitted, then what each follow-up's outcome
  records say happened to it.
- **After**: for the follow-ups that left (emitted, not cancelled or dead-lettered), the
  share whose user answered the bot, stopped it (a stop word or an opt-out) or showed
  distress (to any bot), within ``M``, a day and a week of the send time.
- **Treated against the holdout**: the holdout (spec section 2) is chosen by a stable hash
  of the pair, independent of everything else, so the held-out silences that passed every
  other rule are what the treated silences would have been without a follow-up. Both arms
  are the silences whose decision passed every rule but the holdout (each silence once,
  from its first such decision, whatever happened to the follow-up later: intention to
  treat), measured from the send time the decision gives. Differences come with Newcombe's
  hybrid score interval (Wilson intervals of each arm), and one sentence says what they
  show, or that the sample is too small to say.
- **Safety**: follow-ups stopped by distress, age, kill switches, caps and opt-outs, at the
  decision or cancelled later; texts the honesty check refused; distress seen.
- **What-if**: two reports over the same messages side by side.

A window is counted only for silences observed for all of it: a follow-up sent an hour
before the data ends says nothing about the week after it.
"""
from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from domain.rules import RULES
from domain.safety import DistressClassifier, PhraseListClassifier, is_stop_word
from foundation.settings import format_duration
from schemas.records import (
    ControlEvent, DecisionRecord, DeliveryRecord, FollowupOutcome, MessageEvent, OptOut,
)

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
Z_95 = 1.959963984540054  # two-sided 95%
# The verdict's "too small to say" rule: fewer silences than this in either arm, observed
# for the whole window of the measure, and no sentence is drawn from them.
MIN_ARM = 30
MIN_USERS = 10  # ... from at least this many users: silences of one user rise and fall together

EFFECTS = ("answered", "stopped", "distress")
WINDOWS = ("M", "day", "week")
# The verdict weighs these: answers within M (what a follow-up is for), stops within a week.
ANSWERS, STOPS, DISTRESS = ("answered", "M"), ("stopped", "week"), ("distress", "week")

# Outcome words after the hand-over, in the order of a follow-up's story.
DELIVERY_STEPS = ("generated", "dead_lettered", "sent", "unknown", "failed", "delivered", "read", "answered")
HOLDOUT = "holdout"

# Safety at a glance: each row, the rules that stopped a follow-up at its decision and the
# reasons that cancelled one later.
SAFETY_ROWS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("distress cool-off", ("distress",), ("distress",)),
    ("minor or unknown age", ("age",), ("minor",)),
    ("kill switch", ("kill_switch",), ("killed",)),
    ("cap reached", ("user_cap",), ()),
    ("opted out", ("opt_out",), ("opted_out",)),
)
REFUSED_TEXTS = "text refused, template sent"
DISTRESS_SEEN = "messages showing distress"

Group = tuple[str, str]           # ("all", ""), ("bot", bot_id) or ("app", app)
ALL: Group = ("all", "")


@dataclass(frozen=True, slots=True)
class Timed:
    """A record of ``messages`` at its place in time: a message at its ``ts``, a control
    event at the stream's clock where it stands (control events carry no time)."""

    at: int
    record: MessageEvent | ControlEvent


@dataclass(frozen=True)
class Inputs:
    decisions: Sequence[DecisionRecord]
    outcomes: Sequence[FollowupOutcome] = ()
    stream: Sequence[Timed] = ()
    deliveries: Sequence[DeliveryRecord] = ()


# -- proportions and their intervals ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Share:
    """``hits`` of ``n`` silences, from ``users`` users. ``effective_n`` discounts users who
    contribute many silences (they answer, stop or fall silent together): ``n`` divided by
    the design effect of clustering by user (never below 1), which the interval uses."""

    hits: int
    n: int
    users: int = 0
    effective_n: float = 0.0

    @property
    def value(self) -> float | None:
        return self.hits / self.n if self.n else None

    def interval(self, z: float = Z_95) -> tuple[float, float]:
        if not self.n:
            return 0.0, 1.0
        return wilson(self.hits / self.n, self.effective_n or self.n, z)


def clustered(per_user: Iterable[tuple[int, int]]) -> Share:
    """A share over silences grouped by user, ``(hits, silences)`` per user, with its
    effective size: the binomial variance over the cluster-robust variance of the ratio."""
    per_user = sorted((hits, n) for hits, n in per_user if n)  # one order: the same sums, whatever read first
    hits, n, users = sum(h for h, _ in per_user), sum(n for _, n in per_user), len(per_user)
    if not n:
        return Share(0, 0, 0, 0.0)
    p = hits / n
    if users < 2:
        return Share(hits, n, users, 1.0)
    robust = users / (users - 1) * sum((h - p * k) ** 2 for h, k in per_user) / (n * n)
    binomial = p * (1 - p) / n
    design_effect = max(1.0, robust / binomial) if binomial > 0 else 1.0
    return Share(hits, n, users, n / design_effect)


def wilson(p: float, n: float, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``p`` observed over ``n`` (effective) trials."""
    if n <= 0:
        return 0.0, 1.0
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n))) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class Difference:
    """Treated minus holdout, with Newcombe's hybrid score interval (his method 10)."""

    treated: Share
    holdout: Share
    low: float | None
    high: float | None

    @property
    def value(self) -> float | None:
        if self.treated.value is None or self.holdout.value is None:
            return None
        return self.treated.value - self.holdout.value

    @property
    def raised(self) -> bool:
        return self.low is not None and self.low > 0

    @property
    def lowered(self) -> bool:
        return self.high is not None and self.high < 0


def newcombe(treated: Share, holdout: Share, z: float = Z_95) -> Difference:
    if not treated.n or not holdout.n:
        return Difference(treated, holdout, None, None)
    p1, p2 = treated.hits / treated.n, holdout.hits / holdout.n
    l1, u1 = treated.interval(z)
    l2, u2 = holdout.interval(z)
    d = p1 - p2
    return Difference(treated, holdout, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
                      d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


# -- the funnel ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Due:
    """One due time reached: its first decision and, after a deferral, the decision at the
    end of the quiet hours. ``final`` is None when no later decision came (a message
    replaced the deferral, or the data ends first)."""

    first: DecisionRecord
    final: DecisionRecord | None

    @property
    def deferred(self) -> bool:
        return self.first.outcome == "deferred"


def dues(decisions: Iterable[DecisionRecord]) -> list[Due]:
    """Decisions gathered into due times. A decision seen twice (a worker deciding again
    after a crash) counts once: one pair has one decision per due time."""
    by_time: dict[tuple[str, int], DecisionRecord] = {}
    for decision in decisions:
        by_time.setdefault((decision.followup_id, decision.due_ts), decision)
    # After quiet hours, the decision of the same silence at the deferred send time.
    follow_ons = {(d.followup_id, d.send_ts) for d in by_time.values() if d.outcome == "deferred"}
    out = []
    for key, decision in by_time.items():
        if key in follow_ons:
            continue
        final: DecisionRecord | None = decision
        seen = {key}
        while final is not None and final.outcome == "deferred":
            nxt = (final.followup_id, final.send_ts)
            final = by_time.get(nxt) if nxt not in seen else None
            seen.add(nxt)
        out.append(Due(decision, final))
    return out


@dataclass
class Funnel:
    """How many due times reached each step, and what happened to the follow-ups after."""

    due: int = 0
    suppressed: Counter = field(default_factory=Counter)       # by the rule that stopped it
    deferred: int = 0                   # held back by quiet hours (then decided again, or replaced)
    deferral_replaced: int = 0          # deferred, and a message came before the quiet hours ended
    still_deferred: int = 0             # deferred past the end of the data
    emitted: int = 0
    cancelled: Counter = field(default_factory=Counter)        # by reason
    steps: Counter = field(default_factory=Counter)            # outcome words after the hand-over

    def to_dict(self) -> dict:
        return {
            "due": self.due, "suppressed": dict(self.suppressed), "deferred": self.deferred,
            "deferral_replaced": self.deferral_replaced, "still_deferred": self.still_deferred,
            "emitted": self.emitted, "cancelled": dict(self.cancelled), "steps": dict(self.steps),
        }


def _groups(bot_id: str, app: str) -> tuple[Group, Group, Group]:
    return ALL, ("bot", bot_id), ("app", app)


def day_of(ms: int) -> int:
    return ms - ms % DAY_MS


# -- what users did: the stream, indexed ---------------------------------------------------

class Aftermath:
    """When each user wrote to each bot, stopped it, or showed distress (to any bot)."""

    def __init__(self, stream: Iterable[Timed]) -> None:
        classifier = PhraseListClassifier()  # the engine's own detector
        self.inbound: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.stops: dict[tuple[str, str | None], list[int]] = defaultdict(list)  # bot None: every bot
        self.distress: dict[str, list[int]] = defaultdict(list)
        self.distress_seen: Counter = Counter()   # by group, of the message
        self._distress_ids: set[tuple[str, str]] = set()  # a re-sent webhook is one message
        self.until = -1
        for timed in stream:
            self.until = max(self.until, timed.at)
            record = timed.record
            if isinstance(record, MessageEvent):
                if record.direction == "inbound":
                    self._inbound(record, classifier)
            elif isinstance(record, OptOut):
                self.stops[(record.user_id, record.bot_id)].append(timed.at)
        for times in (*self.inbound.values(), *self.stops.values(), *self.distress.values()):
            times.sort()

    def _inbound(self, event: MessageEvent, classifier: DistressClassifier) -> None:
        self.inbound[(event.user_id, event.bot_id)].append(event.ts)
        if is_stop_word(event.text):
            self.stops[(event.user_id, event.bot_id)].append(event.ts)
        if classifier.detect(event.text) is not None:
            self.distress[event.user_id].append(event.ts)
            if (event.app, event.event_id) not in self._distress_ids:
                self._distress_ids.add((event.app, event.event_id))
                for group in _groups(event.bot_id, event.app):
                    self.distress_seen[group] += 1

    def happened(self, effect: str, user_id: str, bot_id: str, start: int, span: int) -> bool:
        """Whether ``effect`` happened in ``(start, start + span]``."""
        if effect == "answered":
            lists = (self.inbound.get((user_id, bot_id)),)
        elif effect == "stopped":
            lists = (self.stops.get((user_id, bot_id)), self.stops.get((user_id, None)))
        else:
            lists = (self.distress.get(user_id),)
        return any(times and _any_in(times, start, start + span) for times in lists)


def answered_within(sent_at: int, ts: int, messaging_window: int) -> bool:
    """An inbound message at ``ts`` answers a follow-up sent at ``sent_at`` within M (spec
    section 9): after the send and at most M after it, M counted as in section 3 (``<= M``).
    The context stage emits ``answered`` by it; the windows here count ``(start, start + span]`` alike."""
    return sent_at < ts <= sent_at + messaging_window


def _any_in(times: list[int], low: int, high: int) -> bool:
    """Some time in ``(low, high]`` of a sorted list."""
    index = bisect.bisect_right(times, low)
    return index < len(times) and times[index] <= high


Effects = dict[tuple[str, str], Share]   # (effect, window) -> share


class _Tally:
    """Per (effect, window): each user's hits and observed silences, for one set of silences."""

    def __init__(self) -> None:
        self.by_user: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))

    def add(self, aftermath: Aftermath, spans: dict[str, int], user_id: str, bot_id: str, start: int) -> None:
        for window, span in spans.items():
            if start + span > aftermath.until:
                continue  # not observed for the whole window
            for effect in EFFECTS:
                counts = self.by_user[(effect, window)][user_id]
                counts[1] += 1
                if aftermath.happened(effect, user_id, bot_id, start, span):
                    counts[0] += 1

    def shares(self) -> Effects:
        return {(e, w): clustered(map(tuple, self.by_user[(e, w)].values())) for e in EFFECTS for w in WINDOWS}


# -- the verdict --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Verdict:
    kind: str       # too_small, helped, helped_with_stops, no_change, no_change_with_stops, lowered...
    sentence: str


def verdict(comparison: dict[tuple[str, str], Difference], messaging_window: int) -> Verdict:
    """The plain sentence: did follow-ups raise answers without raising opt-outs?"""
    answers, stops, distress = comparison[ANSWERS], comparison[STOPS], comparison[DISTRESS]
    if not answers.holdout.n and not stops.holdout.n:
        return Verdict("too_small", "Too small to say: there are no held-out silences to compare with "
                                    "(set holdout above 0 to measure what follow-ups change).")
    arms = (answers.treated, answers.holdout, stops.treated, stops.holdout)
    if min(share.n for share in arms) < MIN_ARM or min(share.users for share in arms) < MIN_USERS:
        return Verdict("too_small", (
            f"Too small to say: {_arm_words(answers)} observed for {format_duration(messaging_window)}, "
            f"{_arm_words(stops)} for a week; a verdict needs at least {MIN_ARM} silences "
            f"from {MIN_USERS} users in each."))
    answer_words = f"answers within {format_duration(messaging_window)}"
    if answers.raised:
        kind, head = "helped", f"Follow-ups raised {answer_words}"
    elif answers.lowered:
        kind, head = "lowered", f"Follow-ups lowered {answer_words}"
    else:
        kind, head = "no_change", f"Follow-ups did not measurably change {answer_words}"
    if stops.raised:
        kind += "_with_stops"
        head += (", and raised opt-outs" if kind != "helped_with_stops" else ", but also raised opt-outs")
    elif kind == "helped":
        head += " without raising opt-outs"
    else:
        head += ", and did not raise opt-outs"
    sentence = (f"{head}: {_compared(answers)} answered; {_compared(stops)} stopped within a week.")
    if distress.raised:
        kind += "_with_distress"
        sentence += f" Distress within a week rose too: {_compared(distress)}."
    return Verdict(kind, sentence)


def _arm_words(difference: Difference) -> str:
    treated, holdout = difference.treated, difference.holdout
    return (f"{treated.n} treated silences ({treated.users} users) and {holdout.n} held out "
            f"({holdout.users} users)")


def _compared(difference: Difference) -> str:
    return (f"{_percent(difference.treated.value)} against {_percent(difference.holdout.value)} held out "
            f"({_points(difference.value)} points, 95% CI {_points(difference.low)} to {_points(difference.high)})")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}"


# -- the report ---------------------------------------------------------------------------

@dataclass
class Report:
    messaging_window: int
    until: int                                   # the end of what was observed
    first_due: int | None
    last_due: int | None
    funnels: dict[Group, Funnel]
    daily: dict[Group, dict[int, Funnel]]        # by day (UTC midnight, ms)
    after: dict[Group, Effects]                  # follow-ups that left
    arms: dict[Group, dict[str, Effects]]        # "treated" / "holdout"
    comparison: dict[Group, dict[tuple[str, str], Difference]]
    verdict: Verdict
    safety: dict[Group, Counter]
    unmatched_outcomes: int                      # outcome records of follow-ups decided outside the data

    def groups(self, dimension: str) -> list[Group]:
        return sorted(group for group in self.funnels if group[0] == dimension)

    def to_dict(self) -> dict:
        """Every figure, for a machine (``relance report --json``)."""
        return {
            "messaging_window_ms": self.messaging_window, "until": self.until,
            "first_due": self.first_due, "last_due": self.last_due,
            "groups": {_name(g): self._group_dict(g) for g in self.funnels},
            "verdict": {"kind": self.verdict.kind, "sentence": self.verdict.sentence},
            "unmatched_outcomes": self.unmatched_outcomes,
        }

    def _group_dict(self, group: Group) -> dict:
        def effects(shares: Effects) -> dict:
            return {f"{e}_{w}": [shares[(e, w)].hits, shares[(e, w)].n, shares[(e, w)].users,
                                 round(shares[(e, w)].effective_n, 1)] for e in EFFECTS for w in WINDOWS}
        return {
            "funnel": self.funnels[group].to_dict(),
            "daily": {str(day): funnel.to_dict() for day, funnel in sorted(self.daily[group].items())},
            "after": effects(self.after[group]),
            "treated": effects(self.arms[group]["treated"]), "holdout": effects(self.arms[group][HOLDOUT]),
            "difference": {f"{e}_{w}": [_rounded(d.value), _rounded(d.low), _rounded(d.high)]
                           for (e, w), d in self.comparison[group].items()},
            "safety": dict(self.safety[group]),
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _name(group: Group) -> str:
    return "all" if group == ALL else f"{group[0]}:{group[1]}"


def build(inputs: Inputs, messaging_window: int) -> Report:
    """The whole report; observation ends at the stream's last time."""
    aftermath = Aftermath(inputs.stream)
    due_list = dues(inputs.decisions)
    funnels, daily, emitted = _funnels(due_list, _engine_clock(inputs.decisions))
    words = _outcome_words(inputs.outcomes)
    unmatched = _count_outcomes(words, emitted, funnels, daily)
    spans = {"M": messaging_window, "day": DAY_MS, "week": WEEK_MS}
    after: dict[Group, _Tally] = defaultdict(_Tally)
    for fid, (_day, decision) in emitted.items():
        if not any(word in ("cancelled", "dead_lettered") for word, _ in words.get(fid, ())):  # it left
            for group in _groups(decision.bot_id, decision.app):
                after[group].add(aftermath, spans, decision.user_id, decision.bot_id, decision.send_ts)
    arms: dict[Group, dict[str, _Tally]] = defaultdict(lambda: {"treated": _Tally(), HOLDOUT: _Tally()})
    for decision, arm in _silences(inputs.decisions):
        for group in _groups(decision.bot_id, decision.app):
            arms[group][arm].add(aftermath, spans, decision.user_id, decision.bot_id, decision.send_ts)

    groups = set(funnels) | set(after) | set(arms) | {ALL}
    arm_shares = {g: {arm: tally.shares() for arm, tally in arms[g].items()} for g in groups}
    comparison = {g: {key: newcombe(arm_shares[g]["treated"][key], arm_shares[g][HOLDOUT][key])
                      for key in arm_shares[g]["treated"]} for g in groups}
    safety = _safety(funnels, inputs.deliveries, aftermath)
    due_times = [d.first.due_ts for d in due_list]
    return Report(
        messaging_window=messaging_window, until=aftermath.until,
        first_due=min(due_times, default=None), last_due=max(due_times, default=None),
        funnels={g: funnels[g] for g in groups}, daily={g: dict(daily[g]) for g in groups},
        after={g: after[g].shares() for g in groups}, arms=arm_shares, comparison=comparison,
        verdict=verdict(comparison[ALL], messaging_window),
        safety={g: safety[g] for g in groups}, unmatched_outcomes=unmatched,
    )


def _engine_clock(decisions: Sequence[DecisionRecord]) -> int:
    """The engine's clock at its last decision: a deferral whose send time is later was
    still waiting when the records end; an earlier one was replaced by a message."""
    return max((d.decided_at for d in decisions), default=-1)


Daily = dict[Group, dict[int, Funnel]]
Emitted = dict[str, tuple[int, DecisionRecord]]   # follow-up id -> (day, its emitted decision)


def _funnels(due_list: list[Due], engine_clock: int) -> tuple[dict[Group, Funnel], Daily, Emitted]:
    """Funnels per group and per group and day, and each emitted follow-up's (day, decision)."""
    funnels: dict[Group, Funnel] = defaultdict(Funnel)
    daily: Daily = defaultdict(lambda: defaultdict(Funnel))
    emitted: Emitted = {}
    for due in due_list:
        day = day_of(due.first.due_ts)
        for group in _groups(due.first.bot_id, due.first.app):
            for funnel in (funnels[group], daily[group][day]):
                _count_due(funnel, due, engine_clock)
        if due.final is not None and due.final.outcome == "emitted":
            emitted.setdefault(due.final.followup_id, (day, due.final))
    return funnels, daily, emitted


def _count_outcomes(words: dict[str, list[tuple[str, str | None]]], emitted: Emitted,
                    funnels: dict[Group, Funnel], daily: Daily) -> int:
    """Each follow-up's outcome words into the funnels of its decision's groups and day;
    returns how many follow-ups were decided outside the records."""
    unmatched = 0
    for fid, told in words.items():
        if fid not in emitted:
            unmatched += 1
            continue
        day, decision = emitted[fid]
        for group in _groups(decision.bot_id, decision.app):
            for funnel in (funnels[group], daily[group][day]):
                for word, reason in told:
                    if word == "cancelled":
                        funnel.cancelled[reason] += 1
                    else:
                        funnel.steps[word] += 1
    return unmatched


def _count_due(funnel: Funnel, due: Due, engine_clock: int) -> None:
    funnel.due += 1
    if due.deferred:
        funnel.deferred += 1
    final = due.final
    if final is None:
        if due.first.send_ts > engine_clock:
            funnel.still_deferred += 1
        else:
            funnel.deferral_replaced += 1
    elif final.outcome == "emitted":
        funnel.emitted += 1
    elif final.outcome == "suppressed":
        funnel.suppressed[final.stopped_by or "unknown"] += 1
    else:  # deferred again: a quiet-hours end inside quiet hours, the data ends first
        funnel.still_deferred += 1


def _outcome_words(outcomes: Iterable[FollowupOutcome]) -> dict[str, list[tuple[str, str | None]]]:
    """Each follow-up's distinct outcome words (a record repeated at least once counts once);
    a follow-up is cancelled for one reason, the first recorded."""
    words: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for outcome in outcomes:
        kept = words[outcome.followup_id]
        if any(word == outcome.outcome for word, _ in kept):
            continue
        kept.append((outcome.outcome, outcome.reason if outcome.outcome == "cancelled" else None))
    return words


# The rules checked before the holdout: a silence that passes them reached the random
# assignment, whichever arm it fell in. The rules after it (quiet hours past M, the cap)
# are left out: a treated follow-up uses the user's cap, a held-out one does not, so
# counting them would make the arms differ by more than the follow-up.
BEFORE_HOLDOUT = frozenset(RULES[:RULES.index(HOLDOUT)])


def _silences(decisions: Iterable[DecisionRecord]) -> Iterable[tuple[DecisionRecord, str]]:
    """Each silence that reached the holdout, once (its first decision that did), with its arm."""
    seen: set[str] = set()
    for decision in decisions:
        if decision.followup_id in seen:
            continue
        holdout = [check for check in decision.checks if check.rule == HOLDOUT]
        if not holdout or not all(check.passed for check in decision.checks if check.rule in BEFORE_HOLDOUT):
            continue
        seen.add(decision.followup_id)
        yield decision, ("treated" if holdout[0].passed else HOLDOUT)


def _safety(funnels: dict[Group, Funnel], deliveries: Iterable[DeliveryRecord], aftermath: Aftermath) -> dict[Group, Counter]:
    safety: dict[Group, Counter] = defaultdict(Counter)
    for group, funnel in funnels.items():
        for name, rules, reasons in SAFETY_ROWS:
            safety[group][name] = (sum(funnel.suppressed[rule] for rule in rules)
                                   + sum(funnel.cancelled[reason] for reason in reasons))
    refused = {(d.followup_id, d.bot_id, d.app) for d in deliveries if d.replaced}
    for _fid, bot_id, app in refused:
        for group in _groups(bot_id, app):
            safety[group][REFUSED_TEXTS] += 1
    for group, count in aftermath.distress_seen.items():
        safety[group][DISTRESS_SEEN] += count
    for counter in safety.values():
        for name in (REFUSED_TEXTS, DISTRESS_SEEN):
            counter.setdefault(name, 0)
    return safety


# -- what-if ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WhatIfRow:
    measure: str
    first: float | int | None
    second: float | int | None


def what_if(first: Report, second: Report) -> list[WhatIfRow]:
    """Two reports over the same messages (two settings files), measure by measure."""
    a, b = first.funnels[ALL], second.funnels[ALL]
    rows = [WhatIfRow("pairs due", a.due, b.due)]
    rows += [WhatIfRow(f"suppressed by {rule}", a.suppressed[rule], b.suppressed[rule]) for rule in _rules_seen(a, b)]
    rows += [WhatIfRow("deferred by quiet hours", a.deferred, b.deferred), WhatIfRow("emitted", a.emitted, b.emitted)]
    for arm in ("treated", HOLDOUT):
        rows.append(WhatIfRow(f"{arm} silences observed for M", first.arms[ALL][arm][ANSWERS].n,
                              second.arms[ALL][arm][ANSWERS].n))
    for words, key in (("answered within M", ANSWERS), ("stopped within a week", STOPS)):
        rows.append(WhatIfRow(f"{words}, treated", first.arms[ALL]["treated"][key].value,
                              second.arms[ALL]["treated"][key].value))
        rows.append(WhatIfRow(f"{words}, treated minus held out", first.comparison[ALL][key].value,
                              second.comparison[ALL][key].value))
    return rows


def _rules_seen(*funnels: Funnel) -> list[str]:
    seen = set().union(*(funnel.suppressed for funnel in funnels))
    return [rule for rule in RULES if rule in seen] + sorted(seen - set(RULES))


# -- one pair's stories (``relance explain``) -----------------------------------------------

@dataclass(frozen=True)
class Story:
    """One silence of a pair: its decisions, its follow-up's outcome records, and the ts of
    the user's answer within M of the send, as its ``answered`` record tells (None: none)."""

    followup_id: str
    decisions: tuple[DecisionRecord, ...]
    outcomes: tuple[FollowupOutcome, ...]
    answer_ts: int | None


def stories(user_id: str, bot_id: str, decisions: Iterable[DecisionRecord],
            outcomes: Iterable[FollowupOutcome]) -> list[Story]:
    """The pair's silences, oldest first."""
    by_silence: dict[str, list[DecisionRecord]] = defaultdict(list)
    for decision in decisions:
        if decision.user_id == user_id and decision.bot_id == bot_id:
            by_silence[decision.followup_id].append(decision)
    told: dict[str, list[FollowupOutcome]] = defaultdict(list)
    for outcome in outcomes:
        if outcome.user_id == user_id and outcome.bot_id == bot_id:
            told[outcome.followup_id].append(outcome)
    order = {word: index for index, word in enumerate(("generated", "cancelled", *DELIVERY_STEPS))}
    out = []
    for fid in set(by_silence) | set(told):
        kept = sorted({(d.due_ts, d.outcome): d for d in by_silence.get(fid, ())}.values(), key=lambda d: d.due_ts)
        steps = sorted(told.get(fid, ()), key=lambda o: (order.get(o.outcome, len(order)), o.at))
        answer = next((o.at for o in steps if o.outcome == "answered"), None)
        out.append(Story(fid, tuple(kept), tuple(steps), answer))
    return sorted(out, key=lambda s: s.decisions[0].due_ts if s.decisions else min(o.at for o in s.outcomes))

