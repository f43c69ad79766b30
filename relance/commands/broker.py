"""``relance broker up|down|status``: the local Kafka broker and Redis for development."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from devstack.localstack import LocalStack, StackError
from streams.admin import create_topics
from foundation.settings import Settings
from streams.topics import CATALOG

STATE_DIR = Path(".relance/stack")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "broker",
        help="start, stop or show the local Kafka broker and Redis (no Docker)",
        description="Run a real one-node Apache Kafka (KRaft) and a real Redis on 127.0.0.1, "
        "detached, tracked by pid files in .relance/stack/ under the current folder. Ports "
        "come from the settings broker (RELANCE_BROKER) and redis_url (RELANCE_REDIS_URL); "
        "the Kafka controller listens on the broker port + 1. Kafka's jars are fetched from "
        "Maven Central once, into ${RELANCE_CACHE:-~/.cache/relance}.",
    )
    parser.add_argument(
        "action", choices=["up", "down", "status"],
        help="up: start both and create the catalog's topics, then return; "
        "down: stop both (by their recorded pids); status: show what runs",
    )
    parser.add_argument("--broker", help="Kafka host:port to listen on (default: setting broker)")
    parser.add_argument("--redis-url", help="Redis URL to listen on (default: setting redis_url)")
    parser.add_argument("--topic-prefix", help="prefix of the created topics (default: setting topic_prefix)")
    parser.add_argument("--partitions", type=int, help="partitions of keyed topics (default: setting partitions)")
    parser.add_argument("--secure", action="store_true",
                        help="Kafka with a SASL_SSL listener only (a SCRAM user stored at format time) and "
                        "Redis over TLS with an ACL user; a CA, certificates and passwords are made in "
                        ".relance/stack/tls on first use. Prints the settings a client needs. A stack "
                        "is secure or not from its first start: remove .relance/stack to change")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.load({"broker": args.broker, "redis_url": args.redis_url,
                              "topic_prefix": args.topic_prefix, "partitions": args.partitions})
    stack = LocalStack.of(settings, STATE_DIR, outlive_parent=True, secure=args.secure)
    try:
        if args.action == "up":
            began = time.monotonic()
            stack.start()
            topics = create_topics(stack.bootstrap, CATALOG, settings.topic_prefix, settings.partitions,
                                   security=stack.kafka.security)
            print(f"up in {time.monotonic() - began:.1f}s; {len(topics)} topics ready "
                  f"(prefix {settings.topic_prefix!r}); logs in {stack.state_dir}")
            if args.secure:
                print("clients of this stack need (secrets stay in their files):")
                for name, value in stack.client_settings().items():
                    print(f"  export RELANCE_{name.upper()}={value}")
        elif args.action == "down":
            stack.stop()
        for status in stack.status():
            print(status)
    except StackError as exc:
        print(f"relance broker {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0
