"""``relance worker``: run Relance's agents as one Faust worker process."""
from __future__ import annotations

import argparse
import logging.config

from relance.cliflags import add_setting_flags, load_settings

WORKER_SETTINGS = (
    "clock", "broker", "redis_url", "topic_prefix", "partitions", "app_id", "data_dir", "store",
    "web_port", "registry", "llm_base_url", "llm_model", "graph_base_url",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    from relance.app import ROLES
    parser = subparsers.add_parser(
        "worker",
        help="run the stream agents (ingest, engine, context, generator, sender) as a Faust worker",
        description="Run a Relance worker. Workers with the same app id share the partitions "
        "of every topic, so more workers means more throughput. Topics of the catalog are "
        "created first if missing. Health at /health, metrics at /metrics, a pair's state at "
        "/explain on --web-port. Logs are JSON, one object a line, on standard error.",
    )
    parser.add_argument(
        "--role", action="append", choices=ROLES, metavar="ROLE",
        help=f"an agent group to run, repeatable: {', '.join(ROLES)} (default: all)",
    )
    parser.add_argument("--loglevel", default="info", help="debug, info, warning or error")
    add_setting_flags(parser, *WORKER_SETTINGS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import faust

    from streams.admin import create_topics
    from foundation.logs import logging_config
    from relance.app import ROLES, build
    from streams.topics import CATALOG

    log_config = logging_config(args.loglevel)
    logging.config.dictConfig(log_config)  # JSON from the first line, before Faust takes over
    settings = load_settings(args)
    create_topics(settings.broker, CATALOG, settings.topic_prefix, settings.partitions)
    wiring = build(settings, tuple(args.role or ROLES))
    worker = faust.Worker(wiring.app, loglevel=args.loglevel, quiet=True, logging_config=log_config)
    worker.execute_from_commandline()
    return 0
