"""``relance explain USER BOT``: why a pair did or did not get a follow-up, from the live engine.

Asks each ``--worker`` in turn (``GET /explain?user=..&bot=..`` on the worker's web port)
until the one whose engine owns the user's partition answers, then prints the pair's
state (inbound messages in the window, L, I, due time, last follow-up), the user's
profile, opt-outs and follow-up history, and the pair's last decision records with the
rule that stopped each one, and where each follow-up sent stands (sent, unknown, failed,
cancelled; then delivered or read).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from aiokafka.errors import KafkaError

from domain.report import Story, stories
from foundation.settings import Settings
from relance.cliflags import add_setting_flags, load_settings
from schemas.records import InvalidRecord, format_ts, loads, parse_decision, parse_outcome
from streams.kafkaclient import KafkaSecurity
from streams.topicread import RangeReader, ReadStalled
from streams.topics import DECISIONS, FOLLOWUP_OUTCOMES, topic_name

DEFAULT_WORKER = "http://127.0.0.1:6066"
TIMEOUT_SECONDS = 5.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="show a pair's state and last decisions, asked of the running engine workers",
        description=__doc__.split("\n\n")[1],
        epilog="Example: relance explain u00042 maestro --worker http://10.0.0.5:6066 "
        "--worker http://10.0.0.6:6066",
    )
    parser.add_argument("user", metavar="USER", help="the user_id, as in the canonical events")
    parser.add_argument("bot", metavar="BOT", help="the bot_id, as in the bot registry")
    parser.add_argument(
        "--worker", action="append", metavar="URL",
        help=f"base URL of a worker's web interface, repeatable, tried in order "
        f"(default: {DEFAULT_WORKER}, the demo's engine worker)",
    )
    parser.add_argument("--json", action="store_true", help="print the worker's JSON answer as it is")
    parser.add_argument("--no-stories", action="store_true",
                        help="do not read the pair's follow-up stories from Kafka (--json never does)")
    add_setting_flags(parser, "broker", "topic_prefix", "messaging_window")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    workers = args.worker or [DEFAULT_WORKER]
    settings = load_settings(args)
    answer, problems = ask_workers(workers, args.user, args.bot, settings.explain_token)
    if answer is None:
        print(f"relance explain: no worker could answer for {args.user} / {args.bot}:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
    elif args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
    else:
        print(describe(answer))
    if not (args.no_stories or args.json):
        print(follow_up_stories(settings, args.user, args.bot))
    return 0 if answer is not None else 1


def ask_workers(workers: list[str], user_id: str, bot_id: str,
                token: str | None) -> tuple[dict | None, list[str]]:
    """The first owner's answer, and what each worker before it said. The token
    (setting explain_token) goes as a bearer token; the workers refuse a request without it."""
    query = urllib.parse.urlencode({"user": user_id, "bot": bot_id})
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    problems: list[str] = []
    for base in workers:
        request = urllib.request.Request(f"{base.rstrip('/')}/explain?{query}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                return json.loads(response.read()), problems
        except urllib.error.HTTPError as exc:
            problems.append(f"{base}: {_error_of(exc)}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            problems.append(f"{base}: unreachable ({getattr(exc, 'reason', exc)})")
    return None, problems


def _error_of(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
    except ValueError:
        return f"HTTP {exc.code}"
    return f"HTTP {exc.code}: {body.get('error', body)}"


# -- printing ------------------------------------------------------------------------------

def describe(answer: dict[str, Any]) -> str:
    rules = answer["rules"]
    lines = [
        f"pair {answer['user_id']} / {answer['bot_id']}  (partition {answer['partition']}, "
        f"engine clock {answer['clock'] or 'not started'}, {rules['clock']} mode)",
        f"rule: {rules['min_inbound']} inbound messages within {_duration(rules['window_ms'])}, "
        f"due {_duration(rules['idle_delay_ms'])} after the last message, "
        f"within {_duration(rules['messaging_window_ms'])} of the last inbound",
    ]
    if answer["user"] is None:
        lines.append("the engine holds nothing for this user (never seen, expired, or erased)")
        return "\n".join(lines)
    lines += _pair_lines(answer["pair"], rules["min_inbound"])
    lines += _user_lines(answer["user"], answer.get("kills") or {})
    lines += _decision_lines(answer["decisions"])
    return "\n".join(lines)


def _pair_lines(pair: dict | None, needed: int) -> list[str]:
    if pair is None:
        return ["pair: not tracked (no message between them, or expired)"]
    inbound = pair["inbound_in_window"]
    return [
        "pair:",
        f"  inbound in window  {len(inbound)} of {needed} needed: {', '.join(inbound) or '-'}",
        f"  L  last message    {pair['last_ts'] or '-'}",
        f"  I  last inbound    {pair['last_inbound_ts'] or '-'}  (app {pair['app'] or '-'})",
        f"  due                {pair['due'] or '- (no decision pending)'}",
        f"  last follow-up     {pair['emitted_at'] or '- (none since the pair was tracked)'}",
    ]


def _user_lines(user: dict, kills: dict) -> list[str]:
    opt_outs = "all bots" if user["opt_out_all"] else ", ".join(user["opt_out_bots"]) or "none"
    if user["opt_out_all"] and user["opt_in_bots"]:
        opt_outs += f" except {', '.join(user['opt_in_bots'])}"
    age = {True: "minor", False: "adult", None: "unknown"}[user["minor"]]
    killed = [name for name, on in (("everything", kills.get("everything")),) if on]
    killed += [f"bot {bot}" for bot in kills.get("bots", [])] + [f"app {app}" for app in kills.get("apps", [])]
    return [
        "user:",
        f"  time zone {user['tz'] or 'unknown (UTC)'}, age {age}, opted out of {opt_outs}",
        f"  distress cool-off until {user['distress_until'] or '-'}",
        f"  follow-ups sent (last 7 days, every bot): {', '.join(user['sends']) or 'none'}",
        f"  kill switches on: {', '.join(killed) or 'none'}",
    ]


def _decision_lines(decisions: list[dict]) -> list[str]:
    if not decisions:
        return ["last decisions: none seen by this worker since it started"]
    lines = [f"last {len(decisions)} decision(s), oldest first:"]
    for decision in decisions:
        stopped = decision["stopped_by"]
        why = next((c["detail"] for c in decision["checks"] if c["rule"] == stopped), "") if stopped else ""
        verdict = decision["outcome"] + (f", stopped by {stopped}" if stopped else "")
        lines.append(f"  due {decision['due_ts']}  {verdict}{f' ({why})' if why else ''}"
                     f"  [{decision['inbound_in_window']} inbound, via {decision['app']}]")
        followup = decision.get("followup")
        if followup:
            lines.append(f"    follow-up {decision['followup_id']}: {_stands(followup)}")
    return lines


def _stands(followup: dict) -> str:
    """``sent, then read``: the ledger's state and the furthest receipt, in words."""
    state, receipt = followup.get("state"), followup.get("receipt")
    if state is None:
        return "no longer in the ledger (erased or expired)"
    if state.startswith(("sending:", "ending:")):
        state = "being sent"
    elif state.startswith(("try:", "wait:")) or state.isdigit():
        state = "being written"
    elif state.startswith("retry:"):
        state = "waiting to be sent again"
    return state + (f", then {receipt}" if receipt and receipt != "sent" else "")


def _duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


# -- follow-up stories, from Kafka -----------------------------------------------------------
# After the engine's view, the pair's stories from the user's partition of ``decisions``
# and ``followups.outcomes``: each silence's decisions, its follow-up cancelled or sent,
# the receipts, and the user's answer (the ``answered`` record the context stage writes).

STORIES_SHOWN = 10


def follow_up_stories(settings: Settings, user_id: str, bot_id: str) -> str:
    try:
        found = asyncio.run(_read_pair(settings, user_id, bot_id))
    except (OSError, KafkaError, ReadStalled) as exc:
        return f"follow-up stories: Kafka at {settings.broker} could not be read ({exc})"
    told = stories(user_id, bot_id, *found)
    if not told:
        return "follow-up stories: no decision or outcome of this pair on the topics"
    lines = [f"follow-up stories (the last {min(len(told), STORIES_SHOWN)} of {len(told)}, from the topics):"]
    for story in told[-STORIES_SHOWN:]:
        lines += _story_lines(story, settings.messaging_window)
    return "\n".join(lines)


async def _read_pair(settings: Settings, user_id: str, bot_id: str) -> tuple[list, list]:
    prefix = settings.topic_prefix
    names = {spec: topic_name(spec, prefix) for spec in (DECISIONS, FOLLOWUP_OUTCOMES)}
    decisions, outcomes = [], []
    key = user_id.encode()
    async with RangeReader(settings.broker, list(names.values()), key=key,
                           security=KafkaSecurity.of(settings)) as reader:
        async for topic, records in reader.batches():
            mine = [record for record in records if record.key == key]
            parse = parse_decision if topic == names[DECISIONS] else parse_outcome
            for record in mine:
                try:
                    parsed = parse(loads(record.value or b""))
                except InvalidRecord:
                    continue
                (decisions if parse is parse_decision else outcomes).append(parsed)
    return decisions, outcomes


def _story_lines(story: Story, messaging_window: int) -> list[str]:
    last_inbound = story.decisions[0].last_inbound_ts if story.decisions else None
    lines = [f"  silence {story.followup_id[:12]}  (last inbound {format_ts(last_inbound) if last_inbound else '-'})"]
    for decision in story.decisions:
        if decision.outcome == "deferred":
            verdict = f"deferred by quiet hours to {format_ts(decision.send_ts)}"
        elif decision.stopped_by:
            why = next((c.detail for c in decision.checks if c.rule == decision.stopped_by), "")
            verdict = f"suppressed by {decision.stopped_by}" + (f" ({why})" if why else "")
        else:
            verdict = f"emitted, via {decision.app}"
        lines.append(f"    due {format_ts(decision.due_ts)}  {verdict}")
    for outcome in story.outcomes:
        reason = f" ({outcome.reason})" if outcome.reason else ""
        lines.append(f"    {format_ts(outcome.at)}  {outcome.outcome}{reason}")
    sent = [d for d in story.decisions if d.outcome == "emitted"]
    if sent:
        if story.answer_ts is None:
            lines.append(f"    no answer within {_duration(messaging_window)} of the send (no answered record)")
        else:
            lines.append(f"    {format_ts(story.answer_ts)}  the user answered "
                         f"({_duration_between(sent[0].send_ts, story.answer_ts)} after)")
    return lines


def _duration_between(start: int, end: int) -> str:
    minutes = max(0, end - start) // 60_000
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes} min"
