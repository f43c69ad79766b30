"""``relance control ...``: send one control event (spec section 7) to the ``control`` topic.

Opt-outs and opt-ins, a user's profile (time zone, age), kill switches, erasure, and
event-mode ticks. The event is validated exactly as the workers validate it, then sent
keyed by its user_id (kill switches and ticks have none; the workers copy them to every
partition). Workers apply it at their current clock.
"""
from __future__ import annotations

import argparse
import sys

import orjson
from aiokafka.errors import KafkaError

from foundation.settings import Settings
from relance.cliflags import add_setting_flags, load_settings
from streams.admin import run_sync
from streams.kafkaclient import KafkaSecurity, start
from schemas.records import APPS, InvalidRecord, control_to_dict, parse_control
from streams.topics import CONTROL, topic_name


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "control",
        help="send a control event: opt-out, opt-in, profile, kill switch, erasure, tick",
        description=__doc__.split("\n\n")[1],
        epilog="Examples: relance control opt-out u-42 --bot maestro | relance control "
        "profile u-42 --tz Europe/Paris --adult | relance control kill app whatsapp | "
        "relance control kill all --off | relance control erase u-42",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _user_command(actions, "opt-out", "stop follow-ups to USER, from one bot (--bot) or every bot",
                  bot_help="the bot to stop (default: every bot)")
    _user_command(actions, "opt-in", "allow follow-ups to USER again, from one bot (--bot) or every bot",
                  bot_help="the bot to allow again (default: every bot)")
    profile = _user_command(actions, "profile", "set USER's time zone and age (a left-out age is unknown)")
    profile.add_argument("--tz", metavar="ZONE", help="IANA time zone, e.g. Europe/Paris (quiet hours use it)")
    age = profile.add_mutually_exclusive_group()
    age.add_argument("--minor", dest="minor", action="store_const", const=True,
                     help="USER is under 18: never any follow-up")
    age.add_argument("--adult", dest="minor", action="store_const", const=False, help="USER is 18 or over")
    _user_command(actions, "erase", "delete every piece of state and context held for USER")
    kill = _command(actions, "kill", "stop follow-ups at once for one bot, one app, or everything")
    kill.add_argument("scope", choices=("bot", "app", "all"), help="what to stop")
    kill.add_argument("id", nargs="?", metavar="ID", help=f"the bot_id, or the app ({', '.join(APPS)}); none for all")
    kill.add_argument("--off", action="store_true", help="lift the kill switch instead")
    tick = _command(actions, "tick", "event mode only: move the workers' clock forward to TS")
    tick.add_argument("ts", metavar="TS", help="RFC 3339 time with a zone (2026-11-29T08:00:00Z) or epoch ms")


def _command(actions: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    command = actions.add_parser(name, help=help_text, description=f"{help_text[0].upper()}{help_text[1:]}.")
    command.add_argument("--dry-run", action="store_true", help="print the event and send nothing")
    add_setting_flags(command, "broker", "topic_prefix")
    command.set_defaults(run=run)
    return command


def _user_command(actions: argparse._SubParsersAction, name: str, help_text: str,
                  bot_help: str | None = None) -> argparse.ArgumentParser:
    command = _command(actions, name, help_text)
    command.add_argument("user", metavar="USER", help="the user_id, as in the canonical events")
    if bot_help:
        command.add_argument("--bot", metavar="BOT", help=bot_help)
    return command


def control_event(args: argparse.Namespace) -> dict:
    """The control event the arguments describe, as JSON would carry it."""
    action = args.action
    if action in ("opt-out", "opt-in"):
        return {"type": action.replace("-", "_"), "user_id": args.user, "bot_id": args.bot}
    if action == "profile":
        event = {"type": "profile", "user_id": args.user, "tz": args.tz}
        if args.minor is not None:
            event["minor"] = args.minor
        return event
    if action == "erase":
        return {"type": "erase", "user_id": args.user}
    if action == "kill":
        return {"type": "kill", "scope": args.scope, "id": args.id, "on": not args.off}
    ts = int(args.ts) if args.ts.isdigit() else args.ts
    return {"type": "tick", "ts": ts}


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "kill" and (args.scope == "all") != (args.id is None):
            raise InvalidRecord("kill all takes no ID; kill bot and kill app need one")
        event = parse_control(control_event(args))
    except InvalidRecord as exc:
        print(f"relance control {args.action}: {exc}", file=sys.stderr)
        return 2
    body = orjson.dumps(control_to_dict(event))
    if args.dry_run:
        print(body.decode())
        return 0
    settings = load_settings(args)
    topic = topic_name(CONTROL, settings.topic_prefix)
    key = getattr(event, "user_id", None)
    try:
        run_sync(lambda: _send(settings, topic, body, key.encode() if key else None))
    except (OSError, KafkaError) as exc:
        print(f"relance control {args.action}: could not send to {settings.broker}: {exc}", file=sys.stderr)
        return 1
    print(f"sent to {topic}: {body.decode()}")
    return 0


async def _send(settings: Settings, topic: str, body: bytes, key: bytes | None) -> None:
    from aiokafka import AIOKafkaProducer

    security = KafkaSecurity.of(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker, acks="all", request_timeout_ms=10_000,
                                **security.options())
    try:
        await start(producer, settings.broker, security)
        await producer.send_and_wait(topic, body, key=key)
    finally:
        await producer.stop()
