"""The HTML report: rendered by Debian's chromium (driven by playwright, offline), with no console error and no
request leaving the file; one plot per rule × series that fired, the fleet overview, one burn-down per SLO group."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import rules_engine
from rules_engine.evaluate.engine import Backtest, RuleOutcome
from rules_engine.evaluate.findings import Finding
from rules_engine.evaluate.local import LocalSource
from rules_engine.report.html import MAX_PLOTS, downsample, render_html
from rules_engine.source.frame import RangeFrame
from rules_engine.source.snapshot import SnapshotSource

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "snapshots" / "demo.snapshot"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    """`evaluate --report` and `--export` of the shipped demo, as a user runs them."""
    folder = tmp_path_factory.mktemp("report")
    report, export = folder / "report.html", folder / "findings.json"
    result = subprocess.run([sys.executable, "-m", "rules_engine.cli", "evaluate", "--rules", "rules/", "--snapshot",
                             str(SNAPSHOT), "--report", str(report), "--export", str(export)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"wrote the HTML report to {report}" in result.stdout
    return report, json.loads(export.read_text())


def render_in_chromium(path: Path, screenshot: Path | None = None) -> dict:
    """Open the file in headless chromium with the network off; collect what went wrong and count the plots."""
    from playwright.sync_api import sync_playwright

    assert shutil.which("chromium") or Path(CHROMIUM).exists(), "chromium is missing: `make system-deps` installs it"
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.on("console", lambda message: message.type in ("error", "warning")
                    and problems.append(f"console {message.type}: {message.text}"))
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url}"))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(path.as_uri(), wait_until="load")
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length === "
                                   "document.querySelectorAll('.plot').length")
            counts = page.evaluate("""() => ({
                plots: document.querySelectorAll('.plot').length,
                drawn: [...document.querySelectorAll('.plot .js-plotly-plot')]
                       .filter(div => div.querySelector('svg.main-svg .cartesianlayer .subplot')).length,
                findings: document.querySelectorAll('.plot.finding .js-plotly-plot').length,
                burn_downs: document.querySelectorAll('.plot.burn-down .js-plotly-plot').length,
                fleet_cells: document.querySelectorAll('#fleet .heatmaplayer image, #fleet .heatmaplayer path').length,
                lines: document.querySelectorAll('.plot.finding .scatterlayer .trace path.js-line').length,
                shaded: document.querySelectorAll('.plot.finding .shapelayer path').length,
            })""")
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=False)
        finally:
            browser.close()
    return {"problems": problems, "requests": requests, **counts}


@pytest.mark.integration
def test_the_demo_report_renders_offline_without_errors(demo_report, tmp_path):
    report, export = demo_report
    rendered = render_in_chromium(report, tmp_path / "report.png")
    assert rendered["problems"] == []
    assert rendered["requests"] == [report.as_uri()]  # plotly.js is inlined: nothing else is fetched
    alerts = {(f["rule"], json.dumps(f["labels"], sort_keys=True)) for f in export["findings"] if f["kind"] != "slo"}
    # The mixed demo fleet has more alerts than the page plots: the most severe are plotted, the rest listed.
    plotted = min(len(alerts), MAX_PLOTS)
    assert rendered["findings"] == plotted > 0 and len(alerts) > MAX_PLOTS
    assert f"<p>{len(alerts) - MAX_PLOTS} more not plotted:</p>" in report.read_text()
    slo_groups = [s for s in export["slos"] if s["error"] is None]
    assert rendered["burn_downs"] == min(len(slo_groups), MAX_PLOTS) > 0
    assert rendered["drawn"] == rendered["plots"] == plotted + rendered["burn_downs"] + 1  # + the fleet overview
    assert rendered["fleet_cells"] > 0
    assert rendered["lines"] >= plotted  # each finding plot draws its signal and threshold line(s)
    assert rendered["shaded"] >= plotted
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert report.stat().st_size < 12_000_000  # plotly.js is ~4.7 MB; the plots are sampled down


def test_signals_are_kept_on_request_and_burn_downs_end_at_the_budget_left():
    ruleset = rules_engine.load_ruleset([str(ROOT / "rules")])
    source = SnapshotSource(SNAPSHOT)
    backtest = rules_engine.backtest(ruleset, source, "2026-11-18T00:00:00Z", "2026-11-20T00:00:00Z", "30s",
                                     rules=["VLLMKVCacheNearlyFull", "VLLMHighTTFT"], keep_signals=True)
    by_rule = {outcome.rule: outcome for outcome in backtest.outcomes}
    kv = by_rule["VLLMKVCacheNearlyFull"]
    # The 15m mean the rule compares (computed here), over the range only, with the ladder's levels.
    assert kv.signal.values.index[0] == backtest.start and kv.signal.values.index[-1] == backtest.end
    assert not kv.signal_filtered and kv.signal.values.notna().to_numpy().mean() > 0.99
    assert kv.levels == [("low", 0.95), ("medium", 0.97), ("high", 0.98), ("critical", 0.995)]
    computing = LocalSource(source, source.raw_reader)  # the snapshot holds raw samples: compute the signal query
    raw = computing.query_range(kv.queries["signal"], backtest.start - pd.Timedelta("15m"), backtest.end, backtest.step)
    expected = raw.values.rolling("15min", closed="both", min_periods=1).mean().loc[backtest.start:]
    assert np.allclose(kv.signal.values.to_numpy(), expected.to_numpy(), equal_nan=True)
    assert by_rule["VLLMHighTTFT"].signal_filtered  # its query carries the comparison (pushed down), computed or not
    without = rules_engine.backtest(ruleset, source, "2026-11-18T00:00:00Z", "2026-11-20T00:00:00Z", "30s",
                                    rules=["VLLMKVCacheNearlyFull"])
    assert without.outcomes[0].signal is None

    slos = rules_engine.backtest(ruleset, source, "2026-11-18T00:00:00Z", "2026-11-20T00:00:00Z", "30s",
                                 rules=[slo.name for slo in ruleset.slos]).slos
    assert slos
    for result in slos:
        if result.budget_remaining is not None:
            assert result.burn_down.index[-1] == result.end
            assert result.burn_down.iloc[-1] == pytest.approx(result.budget_remaining)


def test_downsampling_keeps_peaks_and_gaps():
    index = pd.date_range("2026-01-01", periods=10_000, freq="30s", tz="UTC")
    values = pd.Series(np.zeros(10_000), index=index)
    values.iloc[4321] = 7.0
    values.iloc[6000:6500] = np.nan
    sampled = downsample(values, 1000)
    assert len(sampled) <= 1000 and sampled.max() == 7.0
    assert sampled.isna().sum() >= 45  # whole buckets without a sample stay gaps
    assert downsample(-values, 1000, largest=False).min() == -7.0
    assert downsample(values.iloc[:500], 1000) is not None and len(downsample(values.iloc[:500], 1000)) == 500


def test_labels_are_escaped_not_rendered():
    start, end, step = pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-01-01T01:00", tz="UTC"), pd.Timedelta("30s")
    hostile = '<img src=x onerror="alert(1)">'
    labels = {"instance": hostile, "model_name": "</script><script>alert(2)</script>"}
    grid = pd.date_range(start, end, freq=step, tz="UTC")
    signal = RangeFrame("q", pd.DataFrame({0: np.linspace(0, 2, len(grid))}, index=grid),
                        pd.DataFrame([labels]))
    outcome = RuleOutcome(pack="p", rule="R", kind="threshold", category="high_latency", queries={"signal": "q"},
                          signal=signal, levels=[("high", 1.0)])
    finding = Finding(rule="R", kind="threshold", category="high_latency", severity="high", labels=labels,
                      start=grid[70], end=None, value=2.0, threshold=1.0, recommendation="", playbook=None)
    page = render_html(Backtest(start=start, end=end, step=step, findings=[finding], outcomes=[outcome],
                                instances={hostile: {}}), source="test")
    assert hostile not in page and "<script>alert(2)" not in page
    assert "&lt;img src=x" in page
