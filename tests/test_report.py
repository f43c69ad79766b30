"""`relance report` from files: on the simulator's traffic with a holdout of 0.2, every
section is there and every figure equals a count made independently from the same
records (``tests/reportkit.py``: by the spec's words, not through ``domain/report.py``)."""
from __future__ import annotations

import re

import orjson
import pytest

from relance.cli import main
from reportkit import Counts, check_figures, count, simulate

SECTIONS = ("overview", "funnel", "over-time", "after", "holdout", "safety", "what-if", "method")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        return simulate(tmp_path_factory.mktemp("report"), monkeypatch, users=300, days=28, seed=2, holdout=0.2)


@pytest.fixture(scope="module")
def counts(simulated) -> Counts:
    return count(simulated)


def report(simulated, folder, *extra: str) -> tuple[dict, str, str]:
    page, figures = folder / "report.html", folder / "report.json"
    code = main(["report", "--records", str(simulated.records), "--decisions", str(simulated.decisions),
                 "--outcomes", str(simulated.outcomes), "--deliveries", str(simulated.deliveries),
                 "--out", str(page), "--json", str(figures), *extra])
    assert code == 0
    return orjson.loads(figures.read_bytes()), page.read_text(encoding="utf-8"), str(page)


def test_every_figure_equals_a_count_made_from_the_records(simulated, counts, tmp_path, capsys):
    figures, page, _ = report(simulated, tmp_path)
    assert check_figures(figures, counts) > 100
    # The traffic is big enough to say something, and the holdout is about a fifth.
    whole = figures["groups"]["all"]
    treated, held = whole["treated"]["answered_M"][1], whole["holdout"]["answered_M"][1]
    assert treated >= 300 and held >= 100 and 0.12 < held / (treated + held) < 0.28
    assert counts.steps[("all", "read")] > 0 and counts.cancelled[("all", "user_returned")] > 0
    assert counts.refused > 0 and counts.distress_messages > 0
    # Each bot and each app has its own funnel, and they add up to the whole.
    bots = [g for name, g in figures["groups"].items() if name.startswith("bot:")]
    apps = [g for name, g in figures["groups"].items() if name.startswith("app:")]
    assert len(bots) == 4 and len(apps) == 3
    for part in (bots, apps):
        assert sum(g["funnel"]["emitted"] for g in part) == whole["funnel"]["emitted"]
    terminal = capsys.readouterr().out
    assert f"{counts.due['all']:,} due times, {counts.emitted['all']:,} follow-ups emitted" in terminal
    assert figures["verdict"]["sentence"] in terminal
    for section in SECTIONS[:-2] + ("method",):
        assert f'<section id="{section}">' in page
    assert figures["verdict"]["sentence"].replace("'", "&#x27;") in page


def test_the_verdict_follows_its_rule(simulated, counts, tmp_path):
    figures, _, _ = report(simulated, tmp_path)
    whole = figures["groups"]["all"]
    value, low, high = whole["difference"]["answered_M"]
    stop_low = whole["difference"]["stopped_week"][1]
    kind = figures["verdict"]["kind"]
    # Simulated users never see follow-ups: their traffic is the same whatever the engine does.
    if low > 0:
        assert kind.startswith("helped")
    elif high < 0:
        assert kind.startswith("lowered")
    else:
        assert kind.startswith("no_change")
    assert ("_with_stops" in kind) == (stop_low > 0)
    assert low <= value <= high


def test_the_arms_hold_the_same_silences_whether_or_not_the_follow_ups_went_out(tmp_path, monkeypatch):
    # With the holdout at 0 every silence is treated; at 0.2 a fifth of the pairs are held
    # out. The silences counted must be the same ones: what the engine did with a
    # follow-up must not decide which silences enter the comparison.
    figures = {}
    for share in (0.0, 0.2):
        paths = simulate(tmp_path / str(share), monkeypatch, users=150, days=14, seed=5, holdout=share)
        figures[share], _, _ = report(paths, tmp_path / str(share))
    for key in ("answered_M", "stopped_week", "distress_day"):
        everyone = figures[0.0]["groups"]["all"]["treated"][key][1]
        split = figures[0.2]["groups"]["all"]
        assert everyone > 100 and figures[0.0]["groups"]["all"]["holdout"][key][1] == 0
        assert split["treated"][key][1] + split["holdout"][key][1] == everyone, key


def test_what_if_replays_two_settings_files_side_by_side(simulated, tmp_path):
    early, late = tmp_path / "idle-12h.toml", tmp_path / "idle-24h.toml"
    early.write_text('idle_delay = "12h"\nholdout = 0.2\n')
    late.write_text('idle_delay = "24h"\nholdout = 0.2\nmin_inbound = 8\n')
    figures, page, _ = report(simulated, tmp_path, "--what-if", str(early), str(late))
    rows = {measure: (first, second) for measure, first, second in figures["what_if"]["rows"]}
    # The first file is the settings the decisions were made with: its replay agrees with them.
    assert rows["emitted"][0] == figures["groups"]["all"]["funnel"]["emitted"]
    assert rows["pairs due"][0] == figures["groups"]["all"]["funnel"]["due"]
    # 8 inbound messages needed instead of 5 within M of the last one: fewer follow-ups.
    assert rows["emitted"][1] < rows["emitted"][0]
    assert rows["suppressed by engaged"][1] > rows["suppressed by engaged"][0]
    assert '<section id="what-if">' in page and "idle-24h.toml" in page
    assert re.search(r"<td>min_inbound</td><td>default</td><td>8</td>", page)


def test_what_cannot_be_done_is_said_before_anything_is_read(simulated, tmp_path, capsys):
    out = ["--out", str(tmp_path / "r.html")]
    assert main(["report", "--what-if", "a.toml", "b.toml", *out]) == 2
    assert "--records" in capsys.readouterr().err
    assert main(["report", "--records", str(simulated.records), "--from", "7d", *out]) == 2
    assert "files are read whole" in capsys.readouterr().err
    assert main(["report", "--records", str(tmp_path / "absent.jsonl"), *out]) == 1
    assert "absent.jsonl" in capsys.readouterr().err
    assert main(["report", "--from", "last tuesday", *out]) == 2
    assert "neither an RFC 3339 time nor a duration" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
