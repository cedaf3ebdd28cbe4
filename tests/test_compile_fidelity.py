"""Fidelity: the pandas evaluation and the PromQL evaluation of the *generated* alerts agree on backfilled history.

Simulated vLLM history (with incidents that make the shipped rules fire) is backfilled with promtool into a real
Prometheus. Each compilable rule is backtested twice: by the engine (pandas over fetched signals) and by
`backtest(..., engine="promql")` (Prometheus computes the generated alert condition, `for` applied by the shared state code).
Firing intervals must match per series to within one evaluation step at the edges.

Where they cannot agree by design the test says so and checks only what does hold:
- regression rules: the engine also requires a significant Mann-Whitney U test, which has no PromQL form, so the
  compiled alert fires on the change ratio alone: every engine finding must lie inside a PromQL finding;
- trend rules with `min_r2 > 0`: the R² filter is engine-only; the same containment is checked. (The trend pack
  below sets `min_r2: 0`, so its rules are compared exactly like threshold rules.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rules_engine.api import generate
from rules_engine.compile.generate import GenerateOptions, write_outputs
from rules_engine.api import backtest
from rules_engine.simulate.fleet import FleetSpec
from rules_engine.simulate.history import simulate
from rules_engine.simulate.incidents import Incident
from rules_engine.source.prometheus import PrometheusSource
from rules_engine.spec import load_ruleset
from tests import processes
from tests.conftest import require_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parent.parent
START = pd.Timestamp("2026-01-05T00:00:00Z")
HOURS = 10
STEP = pd.Timedelta("30s")
INCIDENTS = (
    Incident("queue_buildup", ("vllm-0:8000",), start="3h", duration=40 * 60, magnitude=1.2),
    Incident("ttft_spike", ("vllm-1:8000",), start="4h", duration=30 * 60, magnitude=6.0),
    Incident("kv_pressure", ("vllm-2:8000",), start="5h", duration=40 * 60, magnitude=0.985),
    Incident("error_burst", ("vllm-0:8000",), start="6h", duration=30 * 60, magnitude=0.3),
    Incident("kv_linear_climb", ("vllm-1:8000",), start="6h30m", duration=2 * 3600, magnitude=0.5, hold=1800),
    Incident("low_cache_hit", ("vllm-2:8000",), start="7h", duration=2 * 3600, magnitude=0.1),
)
TREND_PACK = """\
kind: RulePack
name: fidelity_trends
selector: '{model_name!=""}'
keep_labels: [instance, model_name]
rules:
  - name: FidelityKVCacheCrossing
    type: trend
    category: memory_pressure
    signal: max by (instance, model_name) (vllm:kv_cache_usage_perc or vllm:gpu_cache_usage_perc)
    window: 30m
    horizon: 1h
    above: 0.98
    min_samples: 30
    min_r2: 0
    for: 5m
  - name: FidelityQueueSlope
    type: trend
    category: queue_buildup
    signal: sum by (instance, model_name) (vllm:num_requests_waiting)
    window: 15m
    slope_above: 0.5
    per: 1m
    min_samples: 20
    min_r2: 0
    for: 2m
  - name: FidelityITLRegression
    type: regression
    category: high_latency
    histogram: {metric: "vllm:inter_token_latency_seconds", by: [instance, model_name]}
    window: 1h
    baseline: {offset: 2h}
    ratio_above: 1.3
    every: 5m
"""


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Prometheus serving HOURS of simulated history for 3 vLLM instances, and one TGI and one SGLang instance for
    the shipped TGI and SGLang SLOs (about 10 s to simulate and backfill)."""
    require_binary(processes.PROMETHEUS)
    require_binary(processes.PROMTOOL)
    root = tmp_path_factory.mktemp("fidelity")
    spec = FleetSpec(start=START.timestamp(), end=(START + pd.Timedelta(hours=HOURS)).timestamp(), instances=3,
                     step=30, seed=11, tgi_instances=1, sglang_instances=1)
    simulate(root / "history.om", spec, INCIDENTS)
    processes.backfill(root / "history.om", root / "data")
    with processes.running_prometheus(data_dir=root / "data") as prometheus:
        yield prometheus


@pytest.fixture(scope="module")
def ruleset(tmp_path_factory):
    root = tmp_path_factory.mktemp("packs")
    (root / "trends.yaml").write_text(TREND_PACK)
    return load_ruleset([ROOT / "rules" / "vllm.yaml", ROOT / "rules" / "vllm-trends.yaml", root / "trends.yaml"])


def firing_masks(findings, grid: pd.DatetimeIndex, end: pd.Timestamp) -> dict[tuple, np.ndarray]:
    """(rule, series labels) → boolean mask over the grid of evaluations at which an alert was firing."""
    masks: dict[tuple, np.ndarray] = {}
    for finding in findings:
        key = (finding.rule, tuple(sorted(finding.labels.items())))
        mask = masks.setdefault(key, np.zeros(len(grid), dtype=bool))
        stop = finding.end if finding.end is not None else end + STEP
        mask |= (grid >= finding.start) & (grid < stop)
    return masks


def widen(mask: np.ndarray) -> np.ndarray:
    """The mask grown by one evaluation step on each side: the tolerance at interval edges."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    return grown


@pytest.fixture(scope="module")
def backtests(history, ruleset):
    source = PrometheusSource(history.url)
    start, end = START + pd.Timedelta(hours=2), START + pd.Timedelta(hours=HOURS)
    engine = backtest(ruleset, source, start, end, STEP)
    promql = backtest(ruleset, source, start, end, STEP, engine="promql")
    return engine, promql


def test_every_rule_was_evaluated_by_both_engines(backtests, ruleset):
    engine, promql = backtests
    assert not engine.failed, [o.error for o in engine.failed]
    assert not promql.failed, [o.error for o in promql.failed]
    assert {o.rule for o in promql.outcomes} == set(ruleset.rule_names())


def test_threshold_and_trend_rules_fire_at_the_same_evaluations(backtests, ruleset):
    engine, promql = backtests
    grid = pd.date_range(engine.start - pd.Timedelta(hours=2), engine.end, freq=STEP, tz="UTC")
    exact = {rule.name for _, rule in ruleset.rules()
             if rule.type == "threshold" or (rule.type == "trend" and rule.min_r2 == 0)}
    pandas_masks = {k: m for k, m in firing_masks(engine.findings, grid, engine.end).items() if k[0] in exact}
    promql_masks = {k: m for k, m in firing_masks(promql.findings, grid, promql.end).items() if k[0] in exact}
    # The history must exercise the comparison: several rules of both kinds fire.
    fired = {key[0] for key in pandas_masks}
    assert len(fired) >= 5, f"too few rules fired to judge fidelity: {sorted(fired)}"
    assert {"FidelityKVCacheCrossing", "FidelityQueueSlope"} & fired
    empty = np.zeros(len(grid), dtype=bool)
    mismatches = []
    for key in sorted(set(pandas_masks) | set(promql_masks)):
        ours, theirs = pandas_masks.get(key, empty), promql_masks.get(key, empty)
        if (ours & ~widen(theirs)).any() or (theirs & ~widen(ours)).any():
            differ = grid[ours != theirs]
            mismatches.append(f"{key[0]} {dict(key[1])}: pandas {ours.sum()} / promql {theirs.sum()} firing "
                              f"evaluations, first difference at {differ[0].isoformat()}")
    assert not mismatches, "\n".join(mismatches)


def test_threshold_severities_agree(backtests):
    engine, promql = backtests
    ours = {(f.rule, tuple(sorted(f.labels.items())), f.start): f.severity for f in engine.findings if f.kind == "threshold"}
    theirs = {(f.rule, tuple(sorted(f.labels.items())), f.start): f.severity for f in promql.findings if f.kind == "threshold"}
    same_start = set(ours) & set(theirs)
    assert same_start
    assert {k: ours[k] for k in same_start} == {k: theirs[k] for k in same_start}


def test_engine_only_filters_narrow_the_compiled_alerts(backtests, ruleset):
    """By design not equal: the engine adds a Mann-Whitney U test (regression) and an R² filter (trend with
    min_r2 > 0) that the compiled alerts cannot run, so the engine's findings of those rules must lie inside (within
    one step) where the compiled alert fires."""
    engine, promql = backtests
    grid = pd.date_range(engine.start - pd.Timedelta(hours=2), engine.end, freq=STEP, tz="UTC")
    regression = {rule.name for _, rule in ruleset.rules()
                  if rule.type == "regression" or (rule.type == "trend" and rule.min_r2 > 0)}
    assert {"VLLMKVCacheSaturationPredicted", "FidelityITLRegression"} <= regression
    pandas_masks = {k: m for k, m in firing_masks(engine.findings, grid, engine.end).items() if k[0] in regression}
    promql_masks = firing_masks(promql.findings, grid, promql.end)
    empty = np.zeros(len(grid), dtype=bool)
    for key, mask in pandas_masks.items():
        assert not (mask & ~widen(promql_masks.get(key, empty))).any(), key


def test_generated_rule_files_load_into_prometheus_over_the_history(history, ruleset, tmp_path, start_prometheus):
    """The generated files are what a live Prometheus loads: start one with them over the same data."""
    write_outputs(generate(ruleset, GenerateOptions()), tmp_path)
    files = sorted((tmp_path / "prometheus").glob("*.yml"))
    live = start_prometheus(rule_files=files)
    import requests
    groups = requests.get(f"{live.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert {g["name"] for g in groups} == {"rules-engine.vllm", "rules-engine.vllm_trends", "rules-engine.fidelity_trends"}
    assert all(rule["health"] != "err" for g in groups for rule in g["rules"])


def test_compiled_sli_error_ratios_match_the_engine_attainment(history):
    """The compiled SLI expressions (selectors, `le` regex, rate-then-sum by group) measure what the engine measures:
    the error ratio over the whole history, queried in Prometheus from the compiled expression, equals the engine's
    1 - attainment per group. Not to the digit by design: rate() extrapolates to the window's edges where the
    engine counts exact increases between grid points, so a 1% relative (1e-5 absolute) tolerance."""
    from rules_engine.compile.slo import sli_error_ratio
    from rules_engine.evaluate.slo import evaluate_slos
    slos = [slo for slo in load_ruleset(ROOT / "rules" / "slo").slos if slo.sli.type in ("ratio", "latency")]
    assert len(slos) >= 2
    source = PrometheusSource(history.url)
    end = START + pd.Timedelta(hours=HOURS)
    results = evaluate_slos(slos, source, START + pd.Timedelta(hours=2), end, STEP)
    compared = 0
    for slo in slos:
        ours = {tuple(sorted(r.labels.items())): r for r in results if r.slo == slo.name and r.attainment is not None}
        assert ours, f"engine evaluated no group of {slo.name}: {[r.error for r in results if r.slo == slo.name]}"
        window = pd.Timedelta(hours=HOURS)
        expr = sli_error_ratio(slo, window, STEP).replace("\n", " ")
        theirs = {tuple(sorted((k, v) for k, v in series["metric"].items() if k in slo.group_by)): float(series["value"][1])
                  for series in history.query(expr, time=end.timestamp())}
        assert set(theirs) == set(ours), slo.name
        for key, result in ours.items():
            assert theirs[key] == pytest.approx(1 - result.attainment, rel=0.01, abs=1e-5), (slo.name, key)
            compared += 1
    assert compared >= 6
