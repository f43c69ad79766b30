"""The gateway under load: signed posts per second and latency, against a bare server.

Three measured runs, in one invocation, on loopback only, each bounded in posts and time:

  bare  an aiohttp server started the same way as the gateway (``start_server``: same
        aiohttp, no access log, same keep-alive), whose handler reads the body and answers
        200: what HTTP alone costs here;
  x1    one ``relance gateway``: signature checked, body written to raw.<app>, 200 once
        Kafka acknowledged it (acks=all);
  x2    two ``relance gateway`` processes sharing one port (SO_REUSEPORT: the kernel
        spreads the connections between them).

The load comes from a separate process (``load`` below): ``--concurrency`` keep-alive
connections on asyncio streams, each sending prebuilt signed requests of realistic
webhooks (``devstack.traffic``, as in ``ingest_bench``) one after another and timing each
answer. Every run must answer every post 200, and the raw topics must then hold exactly
as many records as posts were answered 200: otherwise the bench fails. CPU seconds of the
servers, the client and the whole machine are read from /proc to say what limits it.

Run: ``.venv/bin/python -m bench.gateway_bench --posts 20000 --concurrency 64``
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT, add_stack_flags, bench_stack, cpu_seconds, fresh_prefix, machine_busy, result, spread
from devstack.localstack import KafkaBroker, free_port, port_in_use, stop_pid
from devstack.processes import GatewayProcess
from domain.signature import SIGNATURE_HEADER, sign



# -- the bare server and the load client, each run as a child process ------------------------

def serve_bare(port: int) -> None:
    from aiohttp import web

    from agents.gateway import start_server

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    async def main() -> None:
        application = web.Application()
        application.router.add_post("/webhooks/{app}", answer)
        runner = await start_server(application, port)
        try:
            await asyncio.Event().wait()   # until SIGTERM ends the process
        finally:
            await runner.cleanup()

    asyncio.run(main())


def prebuilt_requests(secret: str, distinct: int) -> list[bytes]:
    from bench.ingest_bench import webhooks

    requests = []
    for app, body in webhooks(distinct, seed=11):
        head = (f"POST /webhooks/{app} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"{SIGNATURE_HEADER}: {sign(body, secret)}\r\nContent-Length: {len(body)}\r\n\r\n")
        requests.append(head.encode() + body)
    return requests


_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)


async def load(port: int, posts: int, concurrency: int, seconds: float, secret: str) -> dict:
    requests = prebuilt_requests(secret, distinct=min(posts, 2000))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    issued = 0
    deadline = time.monotonic() + seconds

    async def connection() -> None:
        nonlocal issued
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while issued < posts and time.monotonic() < deadline:
                request = requests[issued % len(requests)]
                issued += 1
                began = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(int(_LENGTH.search(head).group(1)))
                latencies.append(time.perf_counter() - began)
                status = int(head[9:12])
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    machine, cpu, began = machine_busy(), time.process_time(), time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    busy, total = (now - then for now, then in zip(machine_busy(), machine))
    latencies.sort()
    return {"answered": len(latencies), "statuses": statuses, "seconds": elapsed,
            "client_cpu": cpu, "machine_busy": busy / total if total else 0.0,
            "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else None}


# -- measuring -------------------------------------------------------------------------------

def measure(port: int, posts: int, concurrency: int, seconds: float, secret: str, servers: list[int],
            broker: int | None) -> dict:
    """One load run from a child process, with the CPU the servers and the broker used
    meanwhile (the client measures its own, and the machine's, over the load alone)."""
    env = {**os.environ, "RELANCE_BENCH_SECRET": secret}
    watched = servers + ([broker] if broker else [])
    before = {pid: cpu_seconds(pid) for pid in watched}   # about idle until the client's load begins
    client = subprocess.Popen([sys.executable, "-m", "bench.gateway_bench", "load", "--port", str(port),
                               "--posts", str(posts), "--concurrency", str(concurrency), "--seconds", str(seconds)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = client.communicate(timeout=seconds + 120)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    if client.returncode != 0:
        raise RuntimeError(f"the load client failed ({client.returncode})")
    outcome = json.loads(out.strip().splitlines()[-1])
    outcome["server_cpu"] = sum(cpu_seconds(pid) - before[pid] for pid in servers)
    outcome["broker_cpu"] = cpu_seconds(broker) - before[broker] if broker else float("nan")
    return outcome


def check(name: str, outcome: dict, posts: int) -> None:
    """Fail loudly: every post sent and answered 200."""
    ok = outcome["statuses"].get("200", 0)
    if outcome["answered"] < posts or ok != posts:
        raise RuntimeError(f"{name}: {outcome['answered']} of {posts} posts answered, {ok} with 200 "
                           f"({outcome['statuses']}): fewer were measured than sent")


async def raw_records(bootstrap: str, prefix: str) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from streams.topics import RAW_BY_APP, topic_name
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic_name(spec, prefix), 0) for spec in RAW_BY_APP.values()])
        return sum(ends.values())
    finally:
        await consumer.stop()


def run_gateways(count: int, args, bootstrap: str, work: Path, secret: str, broker: int | None) -> dict:
    from streams.admin import create_topics
    from streams.topics import RAW_BY_APP
    prefix = fresh_prefix(f"gw{count}")
    create_topics(bootstrap, RAW_BY_APP.values(), prefix, 1)
    port = free_port()
    gateways = [GatewayProcess(work, broker=bootstrap, topic_prefix=prefix, gateway_port=port, app_secret=secret)
                for _ in range(count)]
    try:
        for gateway in gateways:
            gateway.start()
        for gateway in gateways:
            gateway.wait_ready(60)
        warm = measure(port, args.warmup, args.concurrency, args.seconds, secret, [g.pid for g in gateways], broker)
        check(f"gateway x{count} warm-up", warm, args.warmup)
        outcome = measure(port, args.posts, args.concurrency, args.seconds, secret, [g.pid for g in gateways], broker)
        check(f"gateway x{count}", outcome, args.posts)
        outcome["shares"] = [share_of(gateway) for gateway in gateways]
    finally:
        for gateway in gateways:
            gateway.stop()
    on_topics = asyncio.run(raw_records(bootstrap, prefix))
    if on_topics != args.warmup + args.posts:
        raise RuntimeError(f"gateway x{count}: {on_topics} records on the raw topics for "
                           f"{args.warmup + args.posts} posts answered 200")
    return outcome


def share_of(gateway: GatewayProcess) -> float:
    """Posts this gateway answered 200, from its own /metrics."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.web_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("relance_gateway_requests_total{") and 'status="200"' in line)


def run_bare(args, secret: str, broker: int | None) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.gateway_bench", "bare", "--port", str(port)],
                              cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not port_in_use(port):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bare server did not start")
            time.sleep(0.05)
        check("bare warm-up", measure(port, args.warmup, args.concurrency, args.seconds, secret, [server.pid], broker),
              args.warmup)
        outcome = measure(port, args.posts, args.concurrency, args.seconds, secret, [server.pid], broker)
        check("bare", outcome, args.posts)
        return outcome
    finally:
        stop_pid(server.pid, timeout=10)


LABELS = {"bare": "bare aiohttp handler (reads body, 200)", "x1": "relance gateway x1 (signature, acks=all)",
          "x2": "relance gateway x2 (SO_REUSEPORT)"}


def main_run(args: argparse.Namespace) -> None:
    secret = secrets.token_hex(16)
    print(f"{args.posts} signed posts per run ({args.warmup} more to warm up), {args.concurrency} connections, "
          f"{args.repeat} round(s) of bare, x1, x2, on {os.cpu_count()} cores shared with the broker and the "
          f"load client", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in LABELS}
    with bench_stack(args) as (bootstrap, _redis_url, work):
        broker = KafkaBroker(work / "stack").pid()   # a broker this bench started: its CPU is measured too
        for round_ in range(1, args.repeat + 1):
            runs["bare"].append(run_bare(args, secret, broker))
            runs["x1"].append(run_gateways(1, args, bootstrap, work, secret, broker))
            runs["x2"].append(run_gateways(2, args, bootstrap, work, secret, broker))
            print(f"  round {round_}: " + ", ".join(
                f"{name} {args.posts / outcomes[-1]['seconds']:,.0f}/s p99 {outcomes[-1]['p99_ms']:.1f} ms"
                for name, outcomes in runs.items()), flush=True)
    bare_rate = statistics.median(args.posts / o["seconds"] for o in runs["bare"])
    print(f"\n{'what (median of the rounds)':<42} {'posts/s':>22} {'p50 ms':>7} {'p99 ms':>7} {'vs bare':>8} "
          f"{'server CPU':>11} {'us/post':>8} {'broker CPU':>11} {'client CPU':>11} {'machine busy':>13}")
    for name, outcomes in runs.items():
        rates = [args.posts / o["seconds"] for o in outcomes]
        rate = statistics.median(rates)
        p50, p99 = (statistics.median(o[key] for o in outcomes) for key in ("p50_ms", "p99_ms"))
        server, broker_cpu, client, busy = (
            statistics.median(o[key] / (o["seconds"] if key != "machine_busy" else 1) for o in outcomes)
            for key in ("server_cpu", "broker_cpu", "client_cpu", "machine_busy"))
        print(f"{LABELS[name]:<42} {spread(rates):>22} {p50:>7.2f} {p99:>7.2f} {rate / bare_rate:>7.2f}x "
              f"{server:>10.2f}c {1e6 * server / rate:>8.0f} {broker_cpu:>10.2f}c {client:>10.2f}c {busy:>12.0%}")
        result(f"gateway_{name}_rate", rate, "posts/s", spread=spread(rates).replace(" ", ""))
        result(f"gateway_{name}_p50", p50, "ms")
        result(f"gateway_{name}_p99", p99, "ms")
    shares = runs["x2"][-1]["shares"]
    print(f"x2: the two gateways answered {', '.join(f'{s / sum(shares):.0%}' for s in shares)} of the posts "
          f"(last round). CPU in cores: CPU seconds per second of the measured run; us/post: server CPU "
          f"per post; broker CPU only when the bench started the broker.")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bare"]:
        parser = argparse.ArgumentParser(prog="gateway_bench bare")
        parser.add_argument("--port", type=int, required=True)
        serve_bare(parser.parse_args(argv[1:]).port)
        return
    if argv[:1] == ["load"]:
        parser = argparse.ArgumentParser(prog="gateway_bench load")
        for flag, kind in (("--port", int), ("--posts", int), ("--concurrency", int), ("--seconds", float)):
            parser.add_argument(flag, type=kind, required=True)
        options = parser.parse_args(argv[1:])
        outcome = asyncio.run(load(options.port, options.posts, options.concurrency, options.seconds,
                                   os.environ["RELANCE_BENCH_SECRET"]))
        print(json.dumps(outcome))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=20_000, help="posts measured per run (default 20000)")
    parser.add_argument("--warmup", type=int, default=1_000, help="posts before each measured run (default 1000)")
    parser.add_argument("--concurrency", type=int, default=64, help="client connections (default 64)")
    parser.add_argument("--seconds", type=float, default=120.0, help="a run stops after this, and fails (default 120)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the three runs, alternating (default 1)")
    add_stack_flags(parser)
    main_run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
