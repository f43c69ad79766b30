"""``relance worker``: run Relance's agents as one Faust worker process."""
from __future__ import annotations

import argparse
import logging.config

from relance.cliflags import add_setting_flags, load_settings

WORKER_SETTINGS = (
    "clock", "broker", "redis_url", "topic_prefix", "partitions", "app_id", "data_dir", "store",
    "web_port", "registry", "llm_base_url", "llm_model", "shutdown_grace", "redis_durability", "graph_base_url",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    from relance.app import ROLES
    parser = subparsers.add_parser(
        "worker",
        help="run the stream agents (ingest, engine, context, generator, sender) as a Faust worker",
        description="Run a Relance worker. Workers with the same app id share the partitions "
        "of every topic, so more workers means more throughput. Topics of the catalog are "
        "created first if missing. Health at /health, metrics at /metrics, a pair's state at "
        "/explain on --web-port. Logs are JSON, one object a line, on standard error. On "
        "SIGTERM it stops within --shutdown-grace, whatever the broker and Redis are doing.",
    )
    parser.add_argument(
        "--role", action="append", choices=ROLES, metavar="ROLE",
        help=f"an agent group to run, repeatable: {', '.join(ROLES)} (default: all)",
    )
    parser.add_argument("--loglevel", default="info", help="debug, info, warning or error")
    add_setting_flags(parser, *WORKER_SETTINGS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from streams.admin import create_topics
    from streams.kafkaclient import KafkaSecurity
    from streams.process import BoundedWorker
    from foundation.logs import logging_config
    from relance.app import ROLES, build
    from streams.topics import CATALOG

    log_config = logging_config(args.loglevel)
    logging.config.dictConfig(log_config)  # JSON from the first line, before Faust takes over
    settings = load_settings(args)
    check_redis(settings)
    create_topics(settings.broker, CATALOG, settings.topic_prefix, settings.partitions,
                  security=KafkaSecurity.of(settings))
    wiring = build(settings, tuple(args.role or ROLES))
    worker = BoundedWorker(wiring.app, grace=settings.shutdown_grace / 1000, loglevel=args.loglevel,
                           quiet=True, logging_config=log_config)
    worker.execute_from_commandline()
    return 0


def check_redis(settings) -> None:
    """Refuse (or warn about) a Redis that could lose the ledger, before anything starts."""
    import redis

    from foundation.settings import SettingError
    from streams.ledger import durability_problems
    from streams.redisclient import redis_address, redis_options

    log = logging.getLogger("relance.worker")
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=10, **redis_options(settings))
    try:
        problems = durability_problems(client.info())
    except redis.ConnectionError as exc:  # the stages crash loudly when they need it
        log.warning("Redis unreachable at start, its durability unchecked: %s", exc)
        return
    finally:
        client.close()
    if not problems:
        return
    message = f"Redis at {redis_address(settings.redis_url)} cannot keep the ledger safely: " + "; ".join(problems)
    if settings.redis_durability == "require":
        raise SettingError(message + " (README, Redis; or set redis_durability=warn)")
    log.warning(message)
