"""``relance gateway``: receive the platforms' signed webhooks over HTTP, into raw.<app>."""
from __future__ import annotations

import argparse
import asyncio
import logging.config
import signal
import sys

from relance.cliflags import add_setting_flags, load_settings

# No flag for the app secret or the verify token: a command line is visible to every
# user of the machine (ps). They come from the environment or a file only.
GATEWAY_SETTINGS = (
    "broker", "topic_prefix", "gateway_port", "web_port", "gateway_max_body",
    "gateway_ack_timeout", "gateway_read_timeout",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gateway",
        help="receive WhatsApp, Messenger and Instagram webhooks over HTTP and write them to raw.<app>",
        description="Serve /webhooks/whatsapp, /webhooks/facebook and /webhooks/instagram on "
        "--gateway-port: GET answers the platforms' verification handshake, POST checks "
        "X-Hub-Signature-256 and writes the body as it came to raw.<app>, answering 200 once "
        "Kafka acknowledged it. Health and metrics on --web-port. The app secret comes from "
        "RELANCE_APP_SECRET (two, comma-separated, during a rotation) or the file named by "
        "RELANCE_APP_SECRET_FILE, the verify token from RELANCE_VERIFY_TOKEN or "
        "RELANCE_VERIFY_TOKEN_FILE. Stateless: run as many as the traffic needs, behind a "
        "load balancer or on one port of one machine (SO_REUSEPORT).",
    )
    parser.add_argument("--loglevel", default="info", help="debug, info, warning or error")
    add_setting_flags(parser, *GATEWAY_SETTINGS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from foundation.logs import logging_config

    logging.config.dictConfig(logging_config(args.loglevel))
    settings = load_settings(args)  # a missing or unreadable secret stops here, with its setting named
    try:
        return asyncio.run(serve(settings))
    except OSError as exc:  # a port in use, say
        print(f"relance gateway: {exc}", file=sys.stderr)
        return 1


async def serve(settings) -> int:
    from agents.gateway import Gateway

    gateway = Gateway(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await gateway.start()
    try:
        await stop.wait()
    finally:
        await gateway.stop()
    return 0
