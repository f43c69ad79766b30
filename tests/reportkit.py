"""Records for the report's tests, and counts made from them without ``domain/report.py``.

The simulator makes the traffic, ``relance replay`` (the CLI, in process) the decisions
and requests, as the issue asks: "the files `relance replay --decisions` and a records
file give". What the generator and the sender would have written is made up here,
deterministically from each follow-up id: some cancelled, some dead-lettered, the rest
generated, sent, delivered, read, answered when the user wrote to the bot within M of the
made-up send (spec section 9, as the context stage tells it), with a few records written twice (at-least-once) and a
few texts refused by the honesty check.

``Counts`` is the oracle: figures counted straight from the JSON lines, by the spec's
words (section 3: one decision per due time, a deferral decided again at its end;
section 6: stop words, opt-outs, distress; section 2: the holdout), never through the
code under test.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from devstack.traffic import DISTRESS_TEXTS, TrafficShape, generate
from domain.delivery import delivery_record
from domain.honesty import finalize
from relance.cli import main
from schemas.records import CANCEL_REASONS, FollowupOutcome, FollowupRequest, parse_followup, parse_ts

DAY = 86_400_000
WEEK = 7 * DAY
M = DAY  # the default messaging window
STOP_WORDS = {"stop", "arrêter", "parar"}  # the spec's examples: the simulator writes these
CANCELLED_SHARE, DEAD_SHARE = 10, 3        # per cent of follow-ups
PRESSURE = "I miss you! Why did you leave?"  # refused by the honesty check (spec section 6)


@dataclass
class Simulated:
    records: Path
    decisions: Path
    requests: Path
    outcomes: Path
    deliveries: Path


def simulate(folder: Path, monkeypatch, users: int, days: float, seed: int, holdout: float,
             settings: dict | None = None) -> Simulated:
    """Traffic to a records file, `relance replay --decisions` over it, made-up outcomes."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = Simulated(*(folder / name for name in ("records.jsonl", "decisions.jsonl", "requests.jsonl",
                                                   "outcomes.jsonl", "deliveries.jsonl")))
    paths.records.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in generate(TrafficShape(users=users, days=days), seed)))
    with monkeypatch.context() as patch, paths.requests.open("wb") as out:
        patch.setenv("RELANCE_HOLDOUT", str(holdout))
        for name, value in (settings or {}).items():
            patch.setenv(f"RELANCE_{name.upper()}", value)
        patch.setattr("sys.stdout", _Text(out))
        assert main(["replay", str(paths.records), "--decisions", str(paths.decisions)]) == 0
    requests = [parse_followup(orjson.loads(line)) for line in paths.requests.read_bytes().splitlines()]
    outcomes, deliveries = made_up_stories(requests, _people(lines(paths.records)).answers)
    paths.outcomes.write_bytes(b"".join(o.to_json() + b"\n" for o in outcomes))
    paths.deliveries.write_bytes(b"".join(d.to_json() + b"\n" for d in deliveries))
    return paths


class _Text:
    """A text stdout that writes into a binary file (``replay`` writes to ``sys.stdout.buffer``)."""

    def __init__(self, out) -> None:
        self.buffer = out

    def write(self, text: str) -> int:
        return self.buffer.write(text.encode())

    def flush(self) -> None:
        self.buffer.flush()


def _roll(followup_id: str, salt: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{salt}:{followup_id}".encode(), digest_size=4).digest(), "big") % 100


def made_up_stories(requests: list[FollowupRequest], inbound: dict[tuple[str, str], list[int]]
                    ) -> tuple[list[FollowupOutcome], list]:
    outcomes, deliveries = [], []
    for number, request in enumerate(requests):
        at = request.due_ts + 2_000
        roll = _roll(request.followup_id, "fate")
        if roll < CANCELLED_SHARE:
            outcomes.append(FollowupOutcome.of(request, "cancelled", CANCEL_REASONS[number % len(CANCEL_REASONS)], 1, at))
            continue
        if roll < CANCELLED_SHARE + DEAD_SHARE:
            outcomes.append(FollowupOutcome.of(request, "dead_lettered", "generation_failed", 3, at))
            continue
        story = ["generated"]
        if _roll(request.followup_id, "sent") < 95:
            story.append("sent")
            if _roll(request.followup_id, "delivered") < 85:
                story.append("delivered")
                if _roll(request.followup_id, "read") < 60:
                    story.append("read")
        told = [FollowupOutcome.of(request, word, None, 1 if word == "generated" else 0, at + step * 60_000)
                for step, word in enumerate(story)]
        if "sent" in story:
            sent_at = at + 60_000
            answer = next((ts for ts in sorted(inbound.get((request.user_id, request.bot_id), ()))
                           if sent_at < ts <= sent_at + M), None)
            if answer is not None:
                told.append(FollowupOutcome.of(request, "answered", None, 0, answer))
        for outcome in told:
            outcomes.append(outcome)
            if number % 7 == 0:
                outcomes.append(outcome)  # written twice: at-least-once
        text = PRESSURE if number % 15 == 0 else "Any new soundtrack on your list?"
        deliveries.append(delivery_record(request, finalize(text, "en"), at))
    return outcomes, deliveries


# -- the oracle -------------------------------------------------------------------------------

def lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@dataclass
class Counts:
    due: Counter = field(default_factory=Counter)                 # by group name
    due_by_day: Counter = field(default_factory=Counter)          # (group, day ms)
    suppressed: Counter = field(default_factory=Counter)          # (group, rule)
    deferred: Counter = field(default_factory=Counter)
    emitted: Counter = field(default_factory=Counter)
    cancelled: Counter = field(default_factory=Counter)           # (group, reason)
    steps: Counter = field(default_factory=Counter)               # (group, word)
    refused: int = 0
    distress_messages: int = 0
    after: Counter = field(default_factory=Counter)               # (effect_window, "hits"|"n")
    arms: Counter = field(default_factory=Counter)                # (arm, effect_window, "hits"|"n")


def groups(bot: str, app: str) -> tuple[str, str, str]:
    return "all", f"bot:{bot}", f"app:{app}"


def count(paths: Simulated) -> Counts:
    counts = Counts()
    decisions = lines(paths.decisions)
    requests = lines(paths.requests)
    outcomes = lines(paths.outcomes)
    # Section 3: a deferred decision is decided again at its send time T'; that second
    # decision is the same due time's, not a new one.
    deferred_at = {(d["user_id"], d["bot_id"], d["send_ts"]) for d in decisions if d["outcome"] == "deferred"}
    for d in decisions:
        names = groups(d["bot_id"], d["app"])
        second = (d["user_id"], d["bot_id"], d["due_ts"]) in deferred_at
        for name in names:
            if not second:
                counts.due[name] += 1
                counts.due_by_day[(name, parse_ts(d["due_ts"]) // DAY * DAY)] += 1
            if d["outcome"] == "suppressed":
                counts.suppressed[(name, d["stopped_by"])] += 1
            if d["outcome"] == "deferred":
                counts.deferred[name] += 1
    for r in requests:
        for name in groups(r["bot_id"], r["app"]):
            counts.emitted[name] += 1
    words: dict[str, set] = defaultdict(set)
    for o in outcomes:
        if (o["outcome"], o["reason"]) in words[o["followup_id"]]:
            continue
        words[o["followup_id"]].add((o["outcome"], o["reason"]))
        for name in groups(o["bot_id"], o["app"]):
            if o["outcome"] == "cancelled":
                counts.cancelled[(name, o["reason"])] += 1
            else:
                counts.steps[(name, o["outcome"])] += 1
    counts.refused = len({d["followup_id"] for d in lines(paths.deliveries) if d["replaced"]})
    people = _people(lines(paths.records))
    counts.distress_messages = len(people.distress_ids)
    left = [r for r in requests if not any(w in ("cancelled", "dead_lettered") for w, _ in words[r["followup_id"]])]
    for r in left:
        _tally(counts.after, (), people, r["user_id"], r["bot_id"], parse_ts(r["due_ts"]))
    seen = set()
    for d in decisions:  # section 2: held-out pairs' silences that reached the holdout
        # Section 3: a deferral only says the follow-up waits for T'; the silence is decided there.
        if d["outcome"] == "deferred" or d["followup_id"] in seen \
                or d["stopped_by"] not in (None, "holdout", "quiet_hours", "user_cap"):
            continue
        seen.add(d["followup_id"])
        arm = "holdout" if d["stopped_by"] == "holdout" else "treated"
        _tally(counts.arms, (arm,), people, d["user_id"], d["bot_id"], parse_ts(d["send_ts"]))
    return counts


@dataclass
class _People:
    answers: dict = field(default_factory=lambda: defaultdict(list))    # (user, bot) -> ts
    stops: dict = field(default_factory=lambda: defaultdict(list))      # (user, bot or None) -> ts
    distress: dict = field(default_factory=lambda: defaultdict(list))   # user -> ts
    distress_ids: set = field(default_factory=set)
    end: int = -1


def _people(records: list[dict]) -> _People:
    people, clock = _People(), -1
    for record in records:
        if "type" in record:
            if record["type"] == "tick":
                clock = max(clock, parse_ts(record["ts"]))
            elif record["type"] == "opt_out":  # no time of its own: the clock where it stands
                people.stops[(record["user_id"], record.get("bot_id"))].append(clock)
            continue
        ts = parse_ts(record["ts"])
        clock = max(clock, ts)
        if record["direction"] != "inbound":
            continue
        people.answers[(record["user_id"], record["bot_id"])].append(ts)
        if record["text"].strip().casefold() in STOP_WORDS:
            people.stops[(record["user_id"], record["bot_id"])].append(ts)
        if record["text"] in DISTRESS_TEXTS:
            people.distress[record["user_id"]].append(ts)
            people.distress_ids.add((record["app"], record["event_id"]))
    people.end = clock
    return people


def _tally(counter: Counter, prefix: tuple, people: _People, user: str, bot: str, start: int) -> None:
    for window, span in (("M", M), ("day", DAY), ("week", WEEK)):
        if start + span > people.end:
            continue
        for effect, times in (("answered", people.answers[(user, bot)]),
                              ("stopped", people.stops[(user, bot)] + people.stops[(user, None)]),
                              ("distress", people.distress[user])):
            counter[(*prefix, f"{effect}_{window}", "n")] += 1
            if any(start < t <= start + span for t in times):
                counter[(*prefix, f"{effect}_{window}", "hits")] += 1


def check_figures(figures: dict, counts: Counts) -> int:
    """Every figure of the report's JSON against the counts; returns how many were compared."""
    compared = 0
    for name, group in figures["groups"].items():
        funnel = group["funnel"]
        assert funnel["due"] == counts.due[name], name
        assert funnel["emitted"] == counts.emitted[name], name
        assert funnel["deferred"] == counts.deferred[name], name
        assert funnel["suppressed"] == {r: n for (g, r), n in counts.suppressed.items() if g == name}, name
        assert funnel["cancelled"] == {r: n for (g, r), n in counts.cancelled.items() if g == name}, name
        assert funnel["steps"] == {w: n for (g, w), n in counts.steps.items() if g == name}, name
        assert {int(day): f["due"] for day, f in group["daily"].items() if f["due"]} == \
            {day: n for (g, day), n in counts.due_by_day.items() if g == name}, name
        compared += 6 + len(group["daily"])
    whole = figures["groups"]["all"]
    for key, (hits, n, _users, _effective) in whole["after"].items():
        assert (hits, n) == (counts.after[(key, "hits")], counts.after[(key, "n")]), key
        compared += 1
    for arm in ("treated", "holdout"):
        for key, (hits, n, _users, _effective) in whole[arm].items():
            assert (hits, n) == (counts.arms[(arm, key, "hits")], counts.arms[(arm, key, "n")]), (arm, key)
            compared += 1
    safety = whole["safety"]
    assert safety["text refused, template sent"] == counts.refused
    assert safety["messages showing distress"] == counts.distress_messages
    assert safety["cap reached"] == counts.suppressed[("all", "user_cap")]
    assert safety["kill switch"] == counts.suppressed[("all", "kill_switch")] + counts.cancelled[("all", "killed")]
    assert safety["distress cool-off"] == counts.suppressed[("all", "distress")] + counts.cancelled[("all", "distress")]
    assert safety["minor or unknown age"] == counts.suppressed[("all", "age")] + counts.cancelled[("all", "minor")]
    return compared + 6

