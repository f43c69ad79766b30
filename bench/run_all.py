"""Every benchmark in one run, on one stack, and one summary table with the issue's targets.

Starts one LocalStack (unless ``--bootstrap``/``--redis-url``), runs each bench script as a
child process against it (their ``RESULT`` lines are collected), stops the stack, and
prints the summary. ``--quick`` uses small sizes (a smoke run, numbers not meaningful).

Run: ``.venv/bin/python -m bench.run_all`` (about 10 minutes on 2 cores)
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench.common import ROOT, add_stack_flags, bench_stack


def scripts(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    if args.quick:
        return [
            ("pipeline", ["bench.pipeline_bench", "--events", "2000", "--repeat", "1", "--workers", "1"]),
            ("ingest", ["bench.ingest_bench", "--webhooks", "500", "--repeat", "1"]),
            ("quix", ["bench.quix_bench", "--events", "2000", "--repeat", "1"]),
            ("latency", ["bench.latency_bench", "--pairs", "50", "--spread", "0.5", "--delay", "1", "--repeat", "1",
                         "--load-records", "2000"]),
            ("memory", ["bench.memory_bench", "--pairs", "2000"]),
            ("gateway", ["bench.gateway_bench", "--posts", "500", "--warmup", "100"]),
            ("sender", ["bench.sender_bench", "--records", "300", "--numbers", "2"]),
        ]
    return [
        ("pipeline", ["bench.pipeline_bench", "--events", str(args.events), "--repeat", str(args.repeat),
                      "--workers", "1,2"] + (["--before", args.before] if args.before else [])),
        ("ingest", ["bench.ingest_bench", "--webhooks", str(args.webhooks), "--repeat", str(args.repeat)]
                   + (["--before", args.before] if args.before else [])),
        ("quix", ["bench.quix_bench", "--events", str(args.events), "--repeat", str(args.repeat)]),
        ("latency", ["bench.latency_bench", "--pairs", "2000", "--spread", "10", "--repeat", str(args.repeat)]),
        ("memory", ["bench.memory_bench", "--pairs", args.pairs] + (["--source", args.source] if args.source else [])),
        ("gateway", ["bench.gateway_bench", "--posts", str(args.posts), "--repeat", str(args.repeat)]),
        ("sender", ["bench.sender_bench", "--records", str(args.sends), "--numbers", "4"]),
    ]


def parse_results(text: str) -> dict[str, tuple[float, str, dict]]:
    out = {}
    for line in text.splitlines():
        if line.startswith("RESULT "):
            _, name, value, unit, *rest = line.split()
            out[name] = (float(value), unit, dict(item.split("=", 1) for item in rest if "=" in item))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--webhooks", type=int, default=300_000)
    parser.add_argument("--pairs", default="100000,1000000")
    parser.add_argument("--posts", type=int, default=20_000, help="gateway bench: posts per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sends", type=int, default=4000, help="follow-ups the sender bench sends, per phase")
    parser.add_argument("--only", help="comma-separated subset: pipeline,ingest,quix,latency,memory,gateway,sender")
    parser.add_argument("--source", help="memory bench workers run from this copy of the code")
    parser.add_argument("--before", metavar="TREE", help="pipeline and ingest benches: also run the workers of this tree (a git "
                        "worktree of an earlier commit), alternating, and print the ratio")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    add_stack_flags(parser)
    args = parser.parse_args(argv)
    results: dict[str, tuple[float, str, dict]] = {}
    failed = []
    with bench_stack(args) as (bootstrap, redis_url, _):
        for name, command in scripts(args):
            if args.only and name not in args.only.split(","):
                continue
            started = time.monotonic()
            if name == "latency":  # under load: half the engine's maximum, as measured in this run
                command = command + ["--load-rate", f"{load_rate(results, args.quick):.0f}"]
            print(f"== {name}: {' '.join(command)}", flush=True)
            done = subprocess.run([sys.executable, "-m", *command, "--bootstrap", bootstrap, "--redis-url", redis_url],
                                  capture_output=True, text=True, cwd=ROOT)
            shown = [line for line in done.stdout.splitlines() if not line.startswith("RESULT ")]
            print("\n".join(shown))
            if done.returncode != 0:
                failed.append(name)
                print(f"!! {name} failed ({done.returncode}):\n{done.stderr[-2000:]}")
            results.update(parse_results(done.stdout))
            print(f"   ({time.monotonic() - started:.0f}s)\n", flush=True)
    summary(results)
    return 1 if failed else 0


def load_rate(results: dict[str, tuple[float, str, dict]], quick: bool) -> float:
    """Half the engine worker's maximum rate measured by the pipeline bench of this run."""
    if "engine_x1" in results:
        return results["engine_x1"][0] / 2
    return 1000 if quick else 20_000  # pipeline not run (--only): a stated default


def summary(results: dict[str, tuple[float, str, dict]]) -> None:
    def get(name: str) -> float | None:
        return results[name][0] if name in results else None

    def extra(name: str, key: str) -> str:
        return results[name][2].get(key, "") if name in results else ""

    plain = get("plain_consumer")
    rows = [
        ("plain aiokafka consumer (limit)", "plain_consumer", "events/s", None, "-"),
        ("DecisionCore in-process, parse+feed", "core_parse_feed", "events/s", None, "-"),
        ("DecisionCore + encode (our per-event cost)", "core_parse_feed_encode", "events/s", None, "-"),
        ("compiled core in-process, parse+feed", "core_native_parse_feed", "events/s", None, "-"),
        ("compiled core + encode", "core_native_parse_feed_encode", "events/s", None, "-"),
        ("engine worker x1", "engine_x1", "events/s", lambda v: v >= 100_000 and plain and v / plain >= 0.45,
         ">=100k/s and >=0.45x plain"),
        ("engine worker x1, the tree before (--before)", "engine_x1_before", "events/s", None, "-"),
        ("engine worker x2 (same group)", "engine_x2", "events/s",
         lambda v: get("engine_x1") and v / get("engine_x1") >= 1.8, ">=1.8x x1"),
        ("ingest worker: webhooks", "ingest_webhooks", "webhooks/s", None, "-"),
        ("ingest worker: canonical events", "ingest_events", "events/s", lambda v: v >= 100_000, ">=100k/s"),
        ("ingest worker, the tree before (--before)", "ingest_events_before", "events/s", None, "-"),
        ("plain confluent-kafka consumer (Quix's limit)", "quix_plain_consumer", "events/s", None, "-"),
        ("Quix Streams peer (window per pair, RocksDB)", "quix_peer", "events/s", None, "-"),
        ("load beside the latency probes", "latency_load_rate", "events/s", None, "half of engine x1"),
        ("decision latency p50 (wall mode, under load)", "latency_p50", "ms", None, "-"),
        ("decision latency p99 (wall mode, under load)", "latency_p99", "ms", lambda v: v <= 1000, "<=1000 ms"),
        ("follow-ups that never arrived (failures)", "latency_missing", "followups", lambda v: v == 0, "0"),
        ("DecisionCore bytes/pair at 1M, minimal", "core_minimal_bytes_per_pair_1000000", "bytes",
         lambda v: v * 1e6 <= 512 * 2**20, "1M pairs <=512 MB"),
        ("DecisionCore bytes/pair at 1M, realistic", "core_realistic_bytes_per_pair_1000000", "bytes",
         lambda v: v * 1e6 <= 512 * 2**20, "1M pairs <=512 MB"),
        ("engine worker RSS at 1M minimal pairs, memory", "worker_memory_minimal_rss_mb_1000000", "MB", lambda v: v <= 512, "<=512 MB"),
        ("engine worker RSS at 1M realistic pairs, memory", "worker_memory_realistic_rss_mb_1000000", "MB", lambda v: v <= 512, "<=512 MB"),
        ("engine worker RSS at 1M minimal pairs, rocksdb", "worker_rocksdb_minimal_rss_mb_1000000", "MB", None, "flat"),
        ("engine worker RSS at 1M realistic pairs, rocksdb", "worker_rocksdb_realistic_rss_mb_1000000", "MB", None, "flat"),
        ("bare aiohttp handler", "gateway_bare_rate", "posts/s", None, "-"),
        ("gateway x1: signed posts, acks=all", "gateway_x1_rate", "posts/s", None, "-"),
        ("gateway x1: p99 latency", "gateway_x1_p99", "ms", None, "-"),
        ("gateway x2 (SO_REUSEPORT)", "gateway_x2_rate", "posts/s", None, "-"),
        ("sender x1 at the fake's limit (80/s a number)", "sender_sends_at_limit", "sends/s",
         lambda v: extra("sender_sends_at_limit", "busiest_second") and int(extra("sender_sends_at_limit", "busiest_second")) <= 80,
         "never over 80/s a number"),
        ("sender x1, no limit (its own ceiling)", "sender_sends_unlimited", "sends/s", None, "-"),
    ]
    print(f"{'measure':<48} {'value':>12} {'unit':<11} {'spread / ratio':<34} {'target':<26} {'met':<4}")
    for label, name, unit, check, target in rows:
        value = get(name)
        if value is None:
            continue
        note = extra(name, "spread")
        if name.startswith("engine_") and plain:
            note = f"{note} {value / plain:.3f}x plain"
        if name == "quix_peer" and get("quix_plain_consumer"):
            note = f"{note} {value / get('quix_plain_consumer'):.3f}x its plain"
        if name == "latency_load_rate":
            note = f"asked {extra(name, 'asked')}/s, {note}"
        if name == "engine_x2" and get("engine_x1"):
            note += f", {value / get('engine_x1'):.2f}x of x1"
        if name.startswith("gateway_x") and name.endswith("_rate") and get("gateway_bare_rate"):
            note = f"{note} {value / get('gateway_bare_rate'):.2f}x bare"
        if name.startswith("latency") and extra(name, "runs"):
            note = "runs " + extra(name, "runs")
        if name == "sender_sends_at_limit":
            note = f"limit {extra(name, 'limit')}/s, busiest number-second {extra(name, 'busiest_second')}"
        if name.startswith("worker_"):
            note = f"{extra(name, 'bytes_per_pair')} B/pair over empty, {extra(name, 'restored_pairs')} pairs restored"
        met = "-" if check is None else ("yes" if check(value) else "NO")
        print(f"{label:<48} {value:>12,.0f} {unit:<11} {note:<34} {target:<26} {met:<4}")


if __name__ == "__main__":
    sys.exit(main())
