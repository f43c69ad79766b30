"""``relance topics create``: the catalog's topics on a broker, before any worker starts."""
from __future__ import annotations

import argparse

from relance.cliflags import add_setting_flags, load_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "topics",
        help="create the topics of the catalog (streams/topics.py) on a broker",
        description="Create every topic Relance reads or writes, with the catalog's partitions, "
        "retention and compaction. Topics that exist are left as they are, so it can run on "
        "every deployment (compose's 'topics' service and the k8s Job run it).",
    )
    parser.add_argument("action", choices=["create"], help="create: the missing topics")
    add_setting_flags(parser, "broker", "topic_prefix", "partitions")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from streams.admin import create_topics
    from streams.kafkaclient import KafkaSecurity
    from streams.topics import CATALOG, topic_name

    settings = load_settings(args)
    create_topics(settings.broker, CATALOG, settings.topic_prefix, settings.partitions,
                  security=KafkaSecurity.of(settings))
    for spec in CATALOG:
        print(topic_name(spec, settings.topic_prefix))
    return 0
