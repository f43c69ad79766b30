"""The page of ``relance report``: one self-contained HTML file, its charts inline SVG.

matplotlib draws each chart (its object API, no pyplot state) into SVG that goes straight
into the page: no script, no font, no image fetched, so the file opens anywhere, offline,
and a Content-Security-Policy that forbids every fetch says so to the browser.
"""
from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import matplotlib
from matplotlib.figure import Figure

from domain.report import (
    ALL, ANSWERS, DISTRESS, EFFECTS, MIN_ARM, MIN_USERS, STOPS, WINDOWS, Difference, Funnel, Group, Report,
    Share, WhatIfRow,
)
from domain.rules import RULES
from schemas.records import CANCEL_REASONS, format_ts

INK, MUTED, GRID = "#1f2933", "#616e7c", "#e4e7eb"
TREATED, HELD_OUT = "#2f6fad", "#d08a2e"
GOOD, BAD, NEUTRAL = "#3f8f5a", "#c0504d", "#9aa5b1"
SERIES = ("#2f6fad", "#d08a2e", "#3f8f5a", "#8e5ea2", "#c0504d", "#3c9d9b", "#7f7f7f", "#b07aa1")
STEP_WORDS = {"generated": "generated", "dead_lettered": "dead-lettered", "sent": "sent", "unknown": "sent, unconfirmed",
              "failed": "failed at the platform", "delivered": "delivered", "read": "read", "answered": "answered"}


@dataclass(frozen=True)
class PageMeta:
    title: str
    source: str                       # where the records came from, for a person
    generated_at: str
    settings: Sequence[tuple[str, str]]
    skipped: Sequence[str] = ()       # records that could not be read, said plainly


@dataclass(frozen=True)
class WhatIf:
    names: tuple[str, str]
    settings: Sequence[tuple[str, str, str]]   # (setting, first file's value, second's)
    rows: Sequence[WhatIfRow]
    reports: tuple[Report, Report]


# -- charts -----------------------------------------------------------------------------------

def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    figure.patch.set_alpha(0)
    return figure


def _axes(figure: Figure, *grid) -> "matplotlib.axes.Axes":
    axes = figure.add_subplot(*grid) if grid else figure.add_subplot()
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        axes.spines[side].set_color(GRID)
    axes.tick_params(colors=MUTED, labelsize=9)
    axes.grid(axis="x", color=GRID, linewidth=0.8)
    axes.set_axisbelow(True)
    return axes


_SVG_START = re.compile(r"<svg\b[^>]*>", re.S)


def svg(figure: Figure, name: str) -> str:
    """The figure as an ``<svg>`` element scaled to its container; ids salted by ``name``
    so that two charts' clip paths and markers never share an id."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": name, "svg.fonttype": "none", "font.size": 9,
                                "text.color": INK, "axes.labelcolor": MUTED}):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    return _SVG_START.sub(lambda m: re.sub(r'\s(width|height)="[^"]*"', "", m.group(0))
                          .replace("<svg", f'<svg role="img" aria-label="{html.escape(name)}" width="100%"', 1),
                          text, count=1)


def funnel_chart(funnel: Funnel) -> Figure:
    rows = _funnel_rows(funnel)
    figure = _figure(7.5, 0.28 * len(rows) + 0.8)
    axes = _axes(figure)
    labels = [label for label, _, _ in rows][::-1]
    values = [value for _, value, _ in rows][::-1]
    colours = [colour for _, _, colour in rows][::-1]
    bars = axes.barh(labels, values, color=colours, height=0.7)
    axes.bar_label(bars, labels=[f"{v:,}" for v in values], padding=3, fontsize=8, color=INK)
    axes.set_xlabel("due times / follow-ups")
    axes.margins(x=0.12)
    return figure


def _funnel_rows(funnel: Funnel) -> list[tuple[str, int, str]]:
    rows = [("pairs due", funnel.due, INK)]
    rows += [(f"suppressed: {rule}", funnel.suppressed[rule], HELD_OUT if rule == "holdout" else NEUTRAL)
             for rule in _rules_in(funnel)]
    rows += [("deferred by quiet hours", funnel.deferred, SERIES[3])]
    if funnel.deferral_replaced or funnel.still_deferred:
        rows.append(("deferred, replaced or pending", funnel.deferral_replaced + funnel.still_deferred, NEUTRAL))
    rows.append(("emitted", funnel.emitted, TREATED))
    rows += [(f"cancelled: {reason}", funnel.cancelled[reason], BAD) for reason in _reasons_in(funnel)]
    rows += [(STEP_WORDS[step], funnel.steps[step], GOOD if step in ("delivered", "read", "answered") else TREATED)
             for step in ("generated", "dead_lettered", "sent", "unknown", "failed", "delivered", "read", "answered")
             if step in ("generated", "sent", "delivered", "read") or funnel.steps[step]]
    return rows


def _rules_in(funnel: Funnel) -> list[str]:
    return [rule for rule in RULES if funnel.suppressed[rule]] + sorted(set(funnel.suppressed) - set(RULES))


def _reasons_in(funnel: Funnel) -> list[str]:
    return [reason for reason in CANCEL_REASONS if funnel.cancelled[reason]]


def fates_over_time_chart(report: Report) -> Figure:
    days = sorted(report.daily[ALL])
    figure = _figure(7.5, 2.8)
    axes = _axes(figure)
    axes.grid(axis="y", color=GRID, linewidth=0.8)
    axes.grid(axis="x", visible=False)
    layers = (
        ("emitted", [report.daily[ALL][d].emitted for d in days], TREATED),
        ("held out", [report.daily[ALL][d].suppressed["holdout"] for d in days], HELD_OUT),
        ("suppressed by another rule", [sum(report.daily[ALL][d].suppressed.values())
                                        - report.daily[ALL][d].suppressed["holdout"] for d in days], NEUTRAL),
        ("deferred, no second decision", [report.daily[ALL][d].deferral_replaced + report.daily[ALL][d].still_deferred
                                          for d in days], SERIES[3]),
    )
    x = range(len(days))
    bottom = [0] * len(days)
    for label, values, colour in layers:
        axes.bar(x, values, bottom=bottom, color=colour, label=label, width=0.85)
        bottom = [b + v for b, v in zip(bottom, values)]
    _day_ticks(axes, days)
    axes.set_ylabel("due times")
    axes.legend(frameon=False, fontsize=8, ncols=4, loc="upper left", bbox_to_anchor=(0, 1.16))
    return figure


def emitted_over_time_chart(report: Report, dimension: str) -> Figure:
    days = sorted(report.daily[ALL])
    figure = _figure(7.5, 2.4)
    axes = _axes(figure)
    axes.grid(axis="y", color=GRID, linewidth=0.8)
    for index, group in enumerate(report.groups(dimension)):
        daily = report.daily.get(group, {})
        axes.plot(range(len(days)), [daily[d].emitted if d in daily else 0 for d in days],
                  color=SERIES[index % len(SERIES)], label=group[1], linewidth=1.6, marker="o", markersize=2.5)
    _day_ticks(axes, days)
    axes.set_ylabel("follow-ups emitted")
    if report.groups(dimension):
        axes.legend(frameon=False, fontsize=8, ncols=4, loc="upper left", bbox_to_anchor=(0, 1.2))
    return figure


def _day_ticks(axes, days: list[int]) -> None:
    step = max(1, len(days) // 10)
    axes.set_xticks(range(0, len(days), step), [format_ts(d)[5:10] for d in days[::step]])
    axes.set_xlim(-0.6, max(len(days), 1) - 0.4)


def after_chart(report: Report) -> Figure:
    groups = [ALL] + report.groups("bot") + report.groups("app")
    measures = (("answered", "M"), ("stopped", "week"), ("distress", "week"))
    figure = _figure(7.5, 0.42 * len(groups) + 1.0)
    axes = _axes(figure)
    height = 0.26
    for index, (effect, window) in enumerate(measures):
        shares = [report.after[g][(effect, window)] for g in groups]
        positions = [row + (index - 1) * height for row in range(len(groups))]
        values = [100 * (s.value or 0) for s in shares]
        low_high = [s.interval() for s in shares]
        errors = [[max(0.0, v - 100 * lo) for v, (lo, _) in zip(values, low_high)],
                  [max(0.0, 100 * hi - v) for v, (_, hi) in zip(values, low_high)]]
        axes.barh(positions, values, height=height, color=(TREATED, BAD, SERIES[3])[index],
                  xerr=errors, error_kw={"ecolor": MUTED, "elinewidth": 0.8, "capsize": 1.5},
                  label=f"{effect} within {_window_words(window, report)}")
    axes.set_yticks(range(len(groups)), [_group_words(g) for g in groups])
    axes.invert_yaxis()
    axes.set_xlabel("% of follow-ups that left (95% interval)")
    axes.legend(frameon=False, fontsize=8, ncols=3, loc="lower left", bbox_to_anchor=(0, 1.0))
    return figure


def holdout_chart(report: Report) -> Figure:
    keys = [(effect, window) for effect in EFFECTS for window in WINDOWS]
    figure = _figure(7.5, 3.6)
    left, right = _axes(figure, 1, 2, 1), _axes(figure, 1, 2, 2)
    labels = [f"{effect} · {_window_words(window, report)}" for effect, window in keys]
    for offset, arm, colour in ((-0.17, "treated", TREATED), (0.17, "holdout", HELD_OUT)):
        shares = [report.arms[ALL][arm][key] for key in keys]
        values = [100 * (s.value or 0) for s in shares]
        intervals = [s.interval() for s in shares]
        left.errorbar(values, [i + offset for i in range(len(keys))],
                      xerr=[[max(0.0, v - 100 * lo) for v, (lo, _) in zip(values, intervals)],
                            [max(0.0, 100 * hi - v) for v, (_, hi) in zip(values, intervals)]],
                      fmt="o", color=colour, markersize=4, elinewidth=1.2, capsize=2,
                      label="treated" if arm == "treated" else "held out")
    left.set_yticks(range(len(keys)), labels)
    left.invert_yaxis()
    left.set_xlabel("% of silences (95% interval)")
    left.legend(frameon=False, fontsize=8, loc="lower right")
    differences = [report.comparison[ALL][key] for key in keys]
    for row, difference in enumerate(differences):
        if difference.value is None:
            continue
        colour = _difference_colour(keys[row], difference)
        right.plot([100 * difference.low, 100 * difference.high], [row, row], color=colour, linewidth=2)
        right.plot([100 * difference.value], [row], "o", color=colour, markersize=4)
    right.axvline(0, color=MUTED, linewidth=0.8)
    right.set_yticks(range(len(keys)), [""] * len(keys))
    right.set_ylim(left.get_ylim())
    right.set_xlabel("treated minus held out, points (95% CI)")
    return figure


def _difference_colour(key: tuple[str, str], difference: Difference) -> str:
    if not (difference.raised or difference.lowered):
        return NEUTRAL
    good = difference.raised if key[0] == "answered" else difference.lowered
    return GOOD if good else BAD


def safety_chart(report: Report) -> Figure:
    rows = sorted(report.safety[ALL].items(), key=lambda item: -item[1])
    figure = _figure(7.5, 0.32 * len(rows) + 0.8)
    axes = _axes(figure)
    bars = axes.barh([name for name, _ in rows][::-1], [count for _, count in rows][::-1], color=BAD, height=0.65)
    axes.bar_label(bars, labels=[f"{count:,}" for _, count in rows][::-1], padding=3, fontsize=8, color=INK)
    axes.margins(x=0.12)
    axes.set_xlabel("follow-ups stopped, texts refused, messages")
    return figure


def what_if_chart(what_if: WhatIf) -> Figure:
    rows = [row for row in what_if.rows if isinstance(row.first, int) or isinstance(row.second, int)]
    figure = _figure(7.5, 0.36 * len(rows) + 0.9)
    axes = _axes(figure)
    height = 0.38
    for index, (name, colour) in enumerate(zip(what_if.names, (TREATED, HELD_OUT))):
        values = [(row.first if index == 0 else row.second) or 0 for row in rows]
        bars = axes.barh([r + (index - 0.5) * height for r in range(len(rows))], values, height=height,
                         color=colour, label=name)
        axes.bar_label(bars, labels=[f"{v:,}" for v in values], padding=2, fontsize=7, color=MUTED)
    axes.set_yticks(range(len(rows)), [row.measure for row in rows])
    axes.invert_yaxis()
    axes.margins(x=0.12)
    axes.legend(frameon=False, fontsize=8, loc="lower right")
    return figure


# -- the page ---------------------------------------------------------------------------------

STYLE = """
:root { color-scheme: light; } html { background: #f5f7fa; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1f2933;
       margin: 0; background: #f5f7fa; }
main { max-width: 980px; margin: 0 auto; padding: 24px 28px 60px; }
header { border-bottom: 1px solid #e4e7eb; margin-bottom: 18px; }
h1 { font-size: 26px; margin: 8px 0 4px; } h2 { font-size: 20px; margin: 34px 0 6px; }
h3 { font-size: 15px; margin: 18px 0 6px; color: #3e4c59; }
.meta, .note, figcaption { color: #616e7c; font-size: 13px; }
.verdict { font-size: 18px; background: #fff; border-left: 6px solid #9aa5b1; padding: 14px 18px; margin: 14px 0;
           border-radius: 4px; }
.verdict.helped { border-color: #3f8f5a; } .verdict.bad { border-color: #c0504d; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; margin: 12px 0; }
.card { background: #fff; border-radius: 6px; padding: 10px 12px; box-shadow: 0 1px 2px rgba(0,0,0,.06); }
.card b { display: block; font-size: 22px; } .card span { color: #616e7c; font-size: 12px; }
figure.chart { background: #fff; margin: 12px 0; padding: 10px 12px; border-radius: 6px;
               box-shadow: 0 1px 2px rgba(0,0,0,.06); }
figure.chart svg { display: block; height: auto; }
table { border-collapse: collapse; background: #fff; margin: 10px 0; font-size: 13px; width: 100%; }
th, td { padding: 5px 8px; border-bottom: 1px solid #e4e7eb; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; } th { background: #f0f4f8; font-weight: 600; }
.scroll { overflow-x: auto; }
dl.method dt { font-weight: 600; margin-top: 10px; } dl.method dd { margin-left: 0; color: #3e4c59; }
"""


def render(report: Report, meta: PageMeta, what_if: WhatIf | None = None) -> str:
    charts = 0

    def chart(name: str, figure: Figure, caption: str) -> str:
        nonlocal charts
        charts += 1
        return (f'<figure class="chart" id="chart-{name}">{svg(figure, name)}'
                f"<figcaption>{_e(caption)}</figcaption></figure>")

    sections = [
        _overview(report),
        _section("funnel", "The funnel", [
            "<p>Every due time the engine reached (a pair quiet for the idle delay), what stopped it, "
            "and, for the follow-ups emitted, what their outcome records say happened next. Each follow-up "
            "is counted once per step, however many times a record of it was written.</p>",
            chart("funnel", funnel_chart(report.funnels[ALL]), "All bots and apps."),
            "<h3>By bot</h3>", _funnel_table(report, "bot"), "<h3>By app</h3>", _funnel_table(report, "app"),
        ]),
        _section("over-time", "Over time", [
            chart("fates-over-time", fates_over_time_chart(report), "Due times per day (UTC), by what became of them."),
            chart("emitted-by-bot", emitted_over_time_chart(report, "bot"), "Follow-ups emitted per day, per bot."),
            chart("emitted-by-app", emitted_over_time_chart(report, "app"), "Follow-ups emitted per day, per app."),
        ]),
        _section("after", "What happened after", [
            f"<p>Of the follow-ups that left (emitted, not cancelled or dead-lettered), the share whose user "
            f"answered the bot within M ({_e(_window_words('M', report))}), stopped it (a stop word or an opt-out), "
            f"or showed signs of distress to any bot, within a day and a week of the send time. A window counts "
            f"only follow-ups observed for all of it.</p>",
            chart("after", after_chart(report), "Shares with 95% intervals."),
            _after_table(report),
        ]),
        _section("holdout", "Treated against the holdout", [
            f'<p class="verdict {_verdict_class(report)}">{_e(report.verdict.sentence)}</p>',
            "<p>Held-out pairs are chosen by a stable hash, whatever they do, so their silences are what the "
            "treated silences would have been without a follow-up. Both arms count each silence that passed "
            "every rule before the holdout, once, from the send time its decision gave, whatever became of the "
            "follow-up afterwards.</p>", _holdout_share(report),
            chart("holdout", holdout_chart(report), "Left: each arm with its 95% interval. Right: the difference, "
                  "green where it favours follow-ups, red where it harms, grey where the interval holds zero."),
            _comparison_table(report),
        ]),
        _section("safety", "Safety at a glance", [
            "<p>Follow-ups stopped by a safety rule at their decision, or cancelled for it before they left; "
            "generated texts the honesty check refused (a safe template went out instead); messages "
            "showing distress.</p>",
            chart("safety", safety_chart(report), "All bots and apps."),
            _safety_table(report),
        ]),
    ]
    if what_if is not None:
        sections.append(_what_if_section(what_if, chart))
    sections.append(_method(report, meta))
    body = "\n".join(sections)
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        # Nothing may be fetched: the page is whole in itself.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(meta.title)}</title><style>{STYLE}</style></head>"
        f'<body data-charts="{charts}"><main>'
        f"<header><h1>{_e(meta.title)}</h1><p class=\"meta\">{_e(meta.source)} · generated {_e(meta.generated_at)}</p>"
        f"</header>\n{body}\n</main></body></html>\n"
    )


def _overview(report: Report) -> str:
    funnel = report.funnels[ALL]
    treated, held = report.arms[ALL]["treated"][ANSWERS], report.arms[ALL]["holdout"][ANSWERS]
    answered = report.after[ALL][ANSWERS]
    cards = [
        (f"{funnel.due:,}", "pairs due"), (f"{funnel.emitted:,}", "follow-ups emitted"),
        (f"{funnel.steps['delivered']:,}", "delivered"), (f"{funnel.steps['read']:,}", "read"),
        (_pct(answered.value), f"answered within {_window_words('M', report)}"),
        (f"{treated.n:,} / {held.n:,}", "treated / held-out silences"),
    ]
    span = ("no decisions" if report.first_due is None
            else f"due times {format_ts(report.first_due)[:10]} to {format_ts(report.last_due)[:10]}")
    return (f'<section id="overview"><p class="verdict {_verdict_class(report)}">{_e(report.verdict.sentence)}</p>'
            '<div class="cards">' + "".join(f"<div class=\"card\"><b>{_e(v)}</b><span>{_e(k)}</span></div>"
                                          for v, k in cards)
            + f'</div><p class="note">{_e(span)}; observed until {_e(format_ts(report.until)[:16]) if report.until >= 0 else "-"}'
            + (f"; {report.unmatched_outcomes:,} outcome records of follow-ups decided outside these records"
               if report.unmatched_outcomes else "") + ".</p></section>")


def _verdict_class(report: Report) -> str:
    kind = report.verdict.kind
    return "helped" if kind == "helped" else "bad" if ("stops" in kind or "distress" in kind or kind == "lowered") else ""


def _section(anchor: str, title: str, parts: Iterable[str]) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>' + "".join(parts) + "</section>"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _cell(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _funnel_table(report: Report, dimension: str) -> str:
    groups = report.groups(dimension)
    rules = sorted({rule for g in groups for rule in report.funnels[g].suppressed}, key=_rule_order)
    reasons = [r for r in CANCEL_REASONS if any(report.funnels[g].cancelled[r] for g in groups)]
    header = [dimension, "due", *[f"⊘ {r}" for r in rules], "deferred", "emitted",
              *[f"✕ {r}" for r in reasons], "sent", "delivered", "read"]
    rows = []
    for group in groups:
        f = report.funnels[group]
        rows.append([group[1], f.due, *[f.suppressed[r] for r in rules], f.deferred, f.emitted,
                     *[f.cancelled[r] for r in reasons], f.steps["sent"], f.steps["delivered"], f.steps["read"]])
    return _table(header, rows)


def _rule_order(rule: str) -> int:
    return RULES.index(rule) if rule in RULES else len(RULES)


def _after_table(report: Report) -> str:
    groups = [ALL] + report.groups("bot") + report.groups("app")
    keys = [(e, w) for e in EFFECTS for w in WINDOWS]
    header = ["", *[f"{e} · {_window_words(w, report)}" for e, w in keys]]
    rows = [[_group_words(g), *[_share_words(report.after[g][k]) for k in keys]] for g in groups]
    return _table(header, rows)


def _comparison_table(report: Report) -> str:
    groups = [ALL] + report.groups("bot") + report.groups("app")
    header = ["", "treated silences", "held out", "answered · M, treated", "held out", "difference (95% CI)",
              "stopped · week, treated", "held out", "difference (95% CI)"]
    rows = []
    for group in groups:
        answers, stops = report.comparison[group][ANSWERS], report.comparison[group][STOPS]
        rows.append([_group_words(group), answers.treated.n, answers.holdout.n,
                     _pct(answers.treated.value), _pct(answers.holdout.value), _difference_words(answers),
                     _pct(stops.treated.value), _pct(stops.holdout.value), _difference_words(stops)])
    distress = report.comparison[ALL][DISTRESS]
    return (_table(header, rows) + f'<p class="note">Distress within a week, all: treated {_pct(distress.treated.value)}, '
            f"held out {_pct(distress.holdout.value)}, difference {_e(_difference_words(distress))}. "
            f"Rows for one bot or app are often too small to read alone.</p>")


def _holdout_share(report: Report) -> str:
    treated, held = report.arms[ALL]["treated"][ANSWERS], report.arms[ALL]["holdout"][ANSWERS]
    total = treated.n + held.n
    share = f" ({100 * held.n / total:.1f}%)" if total else ""
    return (f'<p class="note">{held.n:,} of {total:,} silences observed for M were held out{share}, '
            f"from {held.users:,} users; {treated.n:,} treated, from {treated.users:,} users.</p>")


def _safety_table(report: Report) -> str:
    groups = [ALL] + report.groups("bot") + report.groups("app")
    names = list(report.safety[ALL])
    return _table(["", *names], [[_group_words(g), *[report.safety[g][n] for n in names]] for g in groups])


def _what_if_section(what_if: WhatIf, chart) -> str:
    first, second = what_if.names
    settings = _table(["setting", first, second], what_if.settings)
    rows = _table(["measure", first, second],
                  [[row.measure, _what_if_value(row.first, row.measure), _what_if_value(row.second, row.measure)]
                   for row in what_if.rows])
    verdicts = "".join(f"<p><b>{_e(name)}</b>: {_e(report.verdict.sentence)}</p>"
                       for name, report in zip(what_if.names, what_if.reports))
    return _section("what-if", "What if", [
        "<p>The same messages replayed under two settings files (<code>relance replay</code> twice), side by side.</p>",
        settings, chart("what-if", what_if_chart(what_if), "Counts under each settings file."), rows, verdicts,
    ])


def _what_if_value(value: float | int | None, measure: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{100 * value:+.1f} points" if "minus" in measure else _pct(value)


def _method(report: Report, meta: PageMeta) -> str:
    settings = _table(["setting", "value"], meta.settings)
    skipped = "".join(f"<li>{_e(line)}</li>" for line in meta.skipped)
    return _section("method", "How this is counted", [
        '<dl class="method">',
        "<dt>Pairs due</dt><dd>Every time a pair reached its due time (last message + idle delay), once, "
        "with the first rule that stopped it. A deferral by quiet hours is decided again at their end: it "
        "counts once, with its second decision's result.</dd>",
        "<dt>Silences</dt><dd>A pair's quiet time after its latest inbound message: one follow-up id. The "
        "arms count each silence once, from the first decision that passed every rule before the holdout "
        "(engaged, one per silence, messaging window, kill switches, opt-outs, age, distress).</dd>",
        f"<dt>Answered, stopped, distress</dt><dd>Answered: the user wrote to the same bot after the send time, "
        f"within the window. Stopped: a stop word to that bot, or an opt-out of it or of all bots. Distress: "
        f"a message to any bot that the distress detector flags. A window counts only silences observed for "
        f"all of it (until {_e(format_ts(report.until)[:16]) if report.until >= 0 else '-'}).</dd>",
        "<dt>Intervals</dt><dd>Wilson score intervals for each share and Newcombe's hybrid score interval for "
        "a difference, at 95%, with each arm's size discounted for users who contribute many silences "
        "(the design effect of clustering by user), since one person's silences rise and fall together.</dd>",
        f"<dt>The verdict</dt><dd>Too small to say unless each arm holds at least {MIN_ARM} silences from "
        f"{MIN_USERS} users observed for M, and as many for a week. Then answers within M are raised when "
        f"the whole interval of the difference is above zero (lowered when below), and opt-outs within a week "
        f"are raised when theirs is above zero; distress that rose is always said.</dd>",
        "</dl>", "<h3>Settings and sources</h3>", settings,
        f"<ul class=\"note\">{skipped}</ul>" if skipped else "",
    ])


# -- words ------------------------------------------------------------------------------------

def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _share_words(share: Share) -> str:
    return "-" if not share.n else f"{_pct(share.value)} of {share.n:,}"


def _difference_words(difference: Difference) -> str:
    if difference.value is None:
        return "-"
    return f"{100 * difference.value:+.1f} ({100 * difference.low:+.1f} to {100 * difference.high:+.1f})"


def _group_words(group: Group) -> str:
    return "all" if group == ALL else f"{group[0]} {group[1]}"


def _window_words(window: str, report: Report) -> str:
    if window == "M":
        hours = report.messaging_window / 3_600_000
        return f"M ({hours:g}h)"
    return "a day" if window == "day" else "a week"

