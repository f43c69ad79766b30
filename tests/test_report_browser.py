"""The report's page in a real headless Chromium: it loads with no console error, asks
the network for nothing, every chart renders, every section is there; a screenshot is
kept in tests/artifacts/. Planted faults show that the checks catch what they claim to."""
from __future__ import annotations

from pathlib import Path

import pytest

from browser import Chromium
from relance.cli import main
from reportkit import simulate

ARTIFACTS = Path(__file__).parent / "artifacts"
SECTIONS = {"overview", "funnel", "over-time", "after", "holdout", "safety", "what-if", "method"}
CHARTS = {"chart-funnel", "chart-fates-over-time", "chart-emitted-by-bot", "chart-emitted-by-app", "chart-after",
          "chart-holdout", "chart-safety", "chart-what-if"}


@pytest.fixture
def browser(tmp_path):
    chromium = Chromium(tmp_path / "profile").start()
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture
def page(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the page names its files as they were given: short, relative
    simulate(Path("sim"), monkeypatch, users=200, days=21, seed=2, holdout=0.2)
    Path("idle-12h.toml").write_text('holdout = 0.2\nidle_delay = "12h"\n')
    Path("idle-24h.toml").write_text('holdout = 0.2\nidle_delay = "24h"\n')
    assert main(["report", "--records", "sim/records.jsonl", "--decisions", "sim/decisions.jsonl",
                 "--outcomes", "sim/outcomes.jsonl", "--deliveries", "sim/deliveries.jsonl",
                 "--what-if", "idle-12h.toml", "idle-24h.toml", "--out", "report.html"]) == 0
    return tmp_path / "report.html"


async def test_the_report_loads_without_an_error_and_every_chart_renders(browser, page):
    seen = await browser.visit(page.as_uri())
    assert seen.errors == []
    assert seen.requests == [page.as_uri()]  # the page alone: nothing fetched, nothing to fetch
    inspected = seen.inspected
    charts = {chart["id"]: chart for chart in inspected["charts"]}
    assert set(charts) == CHARTS and inspected["declared"] == len(CHARTS)
    for name, chart in charts.items():
        assert chart["visible"] and chart["width"] > 400 and chart["height"] > 80, chart
        assert chart["drawn"] > 10, chart  # axes, bars or lines, labels
    assert {section["id"] for section in inspected["sections"] if section["height"] > 40} == SECTIONS
    assert seen.screenshot.startswith(b"\x89PNG") and len(seen.screenshot) > 50_000
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report.png").write_bytes(seen.screenshot)


PLANTED = {
    "console-error": "<script>console.error('planted error')</script>",
    "exception": "<script>window.addEventListener('load', () => { throw new Error('planted exception'); });</script>",
    "fetch": "<img src='https://example.invalid/x.png' alt=''>",
}


@pytest.mark.parametrize("fault", sorted(PLANTED))
async def test_a_planted_fault_is_caught(browser, tmp_path, fault):
    # The report's own policy: nothing may be fetched. Anything planted breaks it loudly.
    page = tmp_path / f"{fault}.html"
    page.write_text("<!doctype html><html><head><meta http-equiv=\"Content-Security-Policy\" "
                    "content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
                    f"</head><body data-charts=\"0\">{PLANTED[fault]}</body></html>")
    seen = await browser.visit(page.as_uri())
    assert seen.errors, f"the {fault} went unnoticed"
    if fault == "fetch":
        assert any("Content Security Policy" in error for error in seen.errors), seen.errors


async def test_a_chart_that_draws_nothing_is_caught(browser, tmp_path):
    page = tmp_path / "blank.html"
    page.write_text('<!doctype html><html><body data-charts="1"><figure class="chart" id="chart-x">'
                    '<svg width="0" height="0"></svg></figure></body></html>')
    chart = (await browser.visit(page.as_uri())).inspected["charts"][0]
    assert chart["width"] == 0 and chart["drawn"] == 0
