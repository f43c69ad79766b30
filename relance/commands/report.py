"""``relance report``: did follow-ups help? An impact and audit report in one HTML file.

Reads the decisions, the follow-ups' outcomes, the delivered texts and the messages of a
time range from Kafka (or from files: a records file, the decisions `relance replay
--decisions` wrote, and optionally outcome and delivery records), and writes one
self-contained HTML page (charts inside, nothing fetched when it opens) and a short
summary on the terminal: the funnel from due time to read receipt, what users did after a
follow-up, follow-ups against the holdout with confidence intervals and a one-sentence
verdict, safety at a glance and, with --what-if, two settings files side by side.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import orjson
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from domain.report import ALL, ANSWERS, DISTRESS, STOPS, Inputs, Report, Timed, build, what_if
from foundation.clock import wall_ms
from foundation.settings import Settings, SettingError, parse_duration
from relance.cliflags import add_setting_flags, load_settings
from relance.commands.replay import replay
from relance.reportpage import PageMeta, WhatIf, render
from schemas.records import (
    InvalidRecord, MessageEvent, Tick, clocked_records, format_ts, loads, parse_decision, parse_delivery,
    parse_outcome, parse_record, parse_ts,
)
from streams.kafkaclient import KafkaSecurity
from streams.topicread import RangeReader, ReadStalled
from streams.topics import CLOCK_HEADER, DECISIONS, DELIVERY_BY_APP, FOLLOWUP_OUTCOMES, MESSAGES, topic_name


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="an impact and audit report (HTML, with charts) from the topics or from replay files",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  relance report --from 7d --out last-week.html\n"
        "  relance simulate --days 28 --out records.jsonl\n"
        "  RELANCE_HOLDOUT=0.2 relance replay records.jsonl --decisions decisions.jsonl >/dev/null\n"
        "  relance report --records records.jsonl --decisions decisions.jsonl --what-if a.toml b.toml",
    )
    parser.add_argument("--out", default="relance-report.html", metavar="HTML",
                        help="the page to write (default relance-report.html)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON there")
    kafka = parser.add_argument_group("from Kafka (the default)")
    kafka.add_argument("--from", dest="start", metavar="TIME",
                       help="records written at or after TIME: RFC 3339, or a duration back from now (7d)")
    kafka.add_argument("--to", dest="end", metavar="TIME", help="records written up to TIME (default: now)")
    files = parser.add_argument_group("from files instead")
    files.add_argument("--records", metavar="FILE", help="the records replayed: messages and control events, one JSON a line")
    files.add_argument("--decisions", metavar="PATH",
                       help="decision records, one a line (`relance replay --decisions`); "
                       "default: replay --records here with the settings")
    files.add_argument("--outcomes", metavar="PATH", help="follow-up outcome records, one a line")
    files.add_argument("--deliveries", metavar="PATH", help="delivery records, one a line")
    parser.add_argument("--what-if", nargs=2, metavar=("A.toml", "B.toml"),
                        help="replay --records under two settings files and show them side by side "
                        "(RELANCE_* variables still apply over both)")
    add_setting_flags(parser, "broker", "topic_prefix", "messaging_window", "holdout")
    parser.set_defaults(run=run)


@dataclass
class Loaded:
    """What was read, and what could not be."""

    inputs: Inputs
    lines: list[bytes] = field(default_factory=list)   # the records file, for --what-if
    skipped: dict[str, int] = field(default_factory=dict)
    source: str = ""


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    console = Console(stderr=True)
    files = bool(args.records or args.decisions)
    if args.what_if and not args.records:
        print("relance report: --what-if replays the records: give --records FILE", file=sys.stderr)
        return 2
    if files and (args.start or args.end):
        print("relance report: --from and --to choose records by when Kafka took them; "
              "files are read whole", file=sys.stderr)
        return 2
    try:
        if files:
            loaded = load_files(args, settings, console)
        else:
            loaded = asyncio.run(load_kafka(settings, _time(args.start), _time(args.end), console))
        report = build(loaded.inputs, settings.messaging_window)
        compared = _what_if(args.what_if, loaded, console) if args.what_if else None
    except (OSError, KafkaError, ReadStalled) as exc:
        print(f"relance report: {exc}", file=sys.stderr)
        return 1
    except tomllib.TOMLDecodeError as exc:
        print(f"relance report: a --what-if settings file is not TOML: {exc}", file=sys.stderr)
        return 2
    meta = PageMeta(
        title="Relance: did follow-ups help?", source=loaded.source, generated_at=format_ts(wall_ms())[:16] + "Z",
        settings=_settings_rows(settings, replayed_here=bool(args.records and not args.decisions)),
        skipped=[f"{count:,} unreadable record(s) skipped in {where}" for where, count in loaded.skipped.items()],
    )
    out = Path(args.out)
    out.write_text(render(report, meta, compared), encoding="utf-8")
    if args.json:
        Path(args.json).write_bytes(_figures(report, compared))
    print(summary(report, loaded, out))
    return 0


def _figures(report: Report, compared: WhatIf | None) -> bytes:
    body = report.to_dict()
    if compared is not None:
        body["what_if"] = {"names": list(compared.names),
                           "rows": [[row.measure, row.first, row.second] for row in compared.rows]}
    return orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)


def _time(text: str | None) -> int | None:
    """RFC 3339, or a duration back from now."""
    if text is None:
        return None
    try:
        return parse_ts(text)
    except InvalidRecord:
        pass
    try:
        return wall_ms() - parse_duration(text)
    except ValueError:
        raise SettingError(f"{text!r} is neither an RFC 3339 time nor a duration such as 7d") from None


REPORTED_SETTINGS = ("min_inbound", "window", "idle_delay", "messaging_window", "quiet_hours", "user_cap_day",
                     "user_cap_week", "unknown_age", "distress_cooloff", "holdout")


def _settings_rows(settings: Settings, replayed_here: bool) -> list[tuple[str, str]]:
    """M, which this command uses; the rules' settings only when it made the decisions
    itself (the engine's own are not in its records)."""
    if replayed_here:
        return [(name, settings.shown(name)) for name in REPORTED_SETTINGS]
    return [("messaging_window (M, for answers)", settings.shown("messaging_window"))]


# -- reading files ----------------------------------------------------------------------------

def load_files(args: argparse.Namespace, settings: Settings, console: Console) -> Loaded:
    skipped: dict[str, int] = {}
    lines = _read_lines(Path(args.records), console) if args.records else []
    stream = list(timed_records(lines, _skip(skipped, args.records or "")))
    if args.decisions:
        decisions = _parse_file(args.decisions, parse_decision, skipped)
    else:
        decisions = []
        replay(lines, settings, on_request=lambda _: None, on_decision=decisions.append)
    outcomes = _parse_file(args.outcomes, parse_outcome, skipped) if args.outcomes else []
    deliveries = _parse_file(args.deliveries, parse_delivery, skipped) if args.deliveries else []
    source = "files: " + ", ".join(f"{what} {path}" for what, path in (
        ("records", args.records), ("decisions", args.decisions or "replayed here"), ("outcomes", args.outcomes),
        ("deliveries", args.deliveries)) if path)
    return Loaded(Inputs(decisions, outcomes, stream, deliveries), lines, skipped, source)


def _read_lines(path: Path, console: Console) -> list[bytes]:
    lines: list[bytes] = []
    with _progress(console) as progress, path.open("rb") as handle:
        task = progress.add_task(f"reading {path.name}", total=path.stat().st_size)
        for line in handle:
            lines.append(line)
            progress.advance(task, len(line))
    return lines


def timed_records(lines, on_error: Callable[[int, str], None]):
    """The records of a replay file at their place in time: a control event at the file's
    clock where it stands (as ``relance replay`` has it)."""
    for clock, record in clocked_records(lines, on_error):
        yield Timed(record.ts if isinstance(record, MessageEvent) else clock, record)


def _skip(skipped: dict[str, int], where: str) -> Callable[[int, str], None]:
    def count(_number: int, _reason: str) -> None:
        skipped[where] = skipped.get(where, 0) + 1
    return count


def _parse_file(path: str, parse, skipped: dict[str, int]) -> list:
    out = []
    with open(path, "rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                out.append(parse(loads(line)))
            except InvalidRecord:
                skipped[path] = skipped.get(path, 0) + 1
    return out


# -- reading Kafka ----------------------------------------------------------------------------

async def load_kafka(settings: Settings, start: int | None, end: int | None, console: Console) -> Loaded:
    prefix = settings.topic_prefix
    parsers = {
        topic_name(DECISIONS, prefix): ("decisions", parse_decision),
        topic_name(FOLLOWUP_OUTCOMES, prefix): ("outcomes", parse_outcome),
        **{topic_name(spec, prefix): ("deliveries", parse_delivery) for spec in DELIVERY_BY_APP.values()},
    }
    messages = topic_name(MESSAGES, prefix)
    found: dict[str, list] = {"decisions": [], "outcomes": [], "deliveries": [], "stream": []}
    skipped: dict[str, int] = {}
    async with RangeReader(settings.broker, [*parsers, messages], start, end,
                           security=KafkaSecurity.of(settings)) as reader:
        with _progress(console) as progress:
            task = progress.add_task("reading topics", total=reader.total)
            async for topic, records in reader.batches():
                if topic == messages:
                    found["stream"] += timed_messages(records, _skip(skipped, topic))
                else:
                    kind, parse = parsers[topic]
                    found[kind] += _parsed(records, parse, _skip(skipped, topic))
                progress.advance(task, len(records))
        missing = reader.missing
    window = f"written {format_ts(start)[:16] if start is not None else 'since the beginning'}" \
             f" to {format_ts(end)[:16] if end is not None else 'now'}"
    source = f"Kafka {settings.broker}, topics {prefix or ''}*, records {window}"
    if missing:
        source += f" (missing: {', '.join(missing)})"
    inputs = Inputs(found["decisions"], found["outcomes"], found["stream"], found["deliveries"])
    return Loaded(inputs, [], skipped, source)


def _parsed(records, parse, on_error: Callable[[int, str], None]) -> list:
    out = []
    for record in records:
        try:
            out.append(parse(loads(record.value or b"")))
        except InvalidRecord as exc:
            on_error(record.offset, str(exc))
    return out


def timed_messages(records, on_error: Callable[[int, str], None]) -> list[Timed]:
    """Messages at their ts; control events at the stream's clock where they stand: the
    feeder's clock header in event mode, else when Kafka took them (wall mode)."""
    out = []
    for record in records:
        if not record.value:
            continue  # the feeder's clock-only record at the end of a stream
        try:
            event = parse_record(loads(record.value))
        except InvalidRecord as exc:
            on_error(record.offset, str(exc))
            continue
        if isinstance(event, (MessageEvent, Tick)):
            at = event.ts
        else:
            at = _clock_header(record)
        out.append(Timed(at, event))
    return out


def _clock_header(record) -> int:
    """The feeder's clock where the record stands (-1 before any message), else when Kafka took it."""
    clock = dict(record.headers or ()).get(CLOCK_HEADER)
    try:
        return int(clock) if clock is not None else record.timestamp
    except ValueError:
        return record.timestamp


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


# -- what-if ----------------------------------------------------------------------------------

def _what_if(paths: list[str], loaded: Loaded, console: Console) -> WhatIf:
    reports = []
    for path in paths:
        settings = Settings.load(config_file=path)
        decisions: list = []
        with console.status(f"replaying under {path}"):
            replay(loaded.lines, settings, on_request=lambda _: None, on_decision=decisions.append)
        reports.append(build(Inputs(decisions, (), loaded.inputs.stream), settings.messaging_window))
    files = [tomllib.loads(Path(path).read_text(encoding="utf-8")) for path in paths]
    names = sorted(set(files[0]) | set(files[1]))
    rows = [(name, str(files[0].get(name, "default")), str(files[1].get(name, "default"))) for name in names]
    return WhatIf((Path(paths[0]).name, Path(paths[1]).name), rows, what_if(reports[0], reports[1]),
                  (reports[0], reports[1]))


# -- the terminal -----------------------------------------------------------------------------

def summary(report: Report, loaded: Loaded, out: Path) -> str:
    funnel = report.funnels[ALL]
    suppressed = ", ".join(f"{rule} {count:,}" for rule, count in funnel.suppressed.most_common())
    cancelled = ", ".join(f"{reason} {count:,}" for reason, count in funnel.cancelled.most_common()) or "none"
    after = report.after[ALL]
    lines = [
        f"relance report: {funnel.due:,} due times, {funnel.emitted:,} follow-ups emitted "
        f"({loaded.source})",
        f"  suppressed: {suppressed or 'none'}; deferred by quiet hours {funnel.deferred:,}",
        f"  after emission: cancelled {cancelled}; generated {funnel.steps['generated']:,}, sent "
        f"{funnel.steps['sent']:,}, delivered {funnel.steps['delivered']:,}, read {funnel.steps['read']:,}",
        f"  after a follow-up: {_pct(after[ANSWERS].value)} answered within M, {_pct(after[STOPS].value)} stopped "
        f"and {_pct(after[DISTRESS].value)} showed distress within a week",
        f"  holdout: {report.arms[ALL]['treated'][ANSWERS].n:,} treated and "
        f"{report.arms[ALL]['holdout'][ANSWERS].n:,} held-out silences observed for M",
        f"  verdict: {report.verdict.sentence}",
        "  safety: " + ", ".join(f"{name} {count:,}" for name, count in report.safety[ALL].items()),
    ]
    lines += [f"  skipped {count:,} unreadable record(s) in {where}" for where, count in loaded.skipped.items()]
    lines.append(f"  written: {out} ({out.stat().st_size / 1024:,.0f} KiB)")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
