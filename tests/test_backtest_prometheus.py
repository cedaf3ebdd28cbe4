"""The backtest against real Prometheus on backfilled simulated history.

- Agreement: for every rule, Prometheus itself evaluates the alert condition (window statistics as subqueries,
  guard as `and on(...)`, `for` as "held at every evaluation of the last `for`") over the same range, and the
  firing timestamps equal the backtest's, series by series.
- Findings: `rules-engine evaluate --prometheus` finds the simulator's incidents on the right instances and
  writes the export contract.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from rules_engine.evaluate.alerting import steps_for
from rules_engine.api import backtest as run_backtest
from rules_engine.promql.windows import window_stat_query
from rules_engine.source.prometheus import PrometheusSource
from rules_engine.spec import format_duration, load_ruleset
from rules_engine.promql.selectors import inject_selector
from rules_engine.simulate import FleetSpec, Incident, simulate
from tests import processes
from tests.conftest import require_binary

pytestmark = pytest.mark.integration

END = pd.Timestamp("2026-11-20T00:00:00Z")
HOURS = 14
STEP = pd.Timedelta("30s")
INCIDENTS = [
    Incident("queue_buildup", ("vllm-1:8000",), start="6h", duration=3600, magnitude=1.3),
    Incident("kv_pressure", ("vllm-3:8000",), start="9h", duration=2400),
    Incident("ttft_spike", ("vllm-4:8000",), start="11h", duration=1800, magnitude=8.0),
    Incident("client_aborts", ("vllm-2:8000",), start="4h", duration=1800),
]


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    require_binary(processes.PROMTOOL)
    require_binary(processes.PROMETHEUS)
    root = tmp_path_factory.mktemp("backtest")
    start = END - pd.Timedelta(hours=HOURS)
    sim = simulate(root / "fleet.om", FleetSpec(start=start.timestamp(), end=END.timestamp(), instances=6, seed=11),
                   INCIDENTS, truth_path=root / "truth.json")
    processes.backfill(root / "fleet.om", root / "data")
    (root / "fleet.om").unlink()
    with processes.running_prometheus(root / "data") as prometheus:
        yield prometheus, sim.truth, root


# A pack exercising every window statistic, guards, `for` and both directions on the simulated signals.
AGREEMENT_PACK = """\
kind: RulePack
name: agreement
selector: '{model_name!=""}'
keep_labels: [instance, model_name]
rules:
  - {name: WaitingMean, category: queue_buildup, stat: mean, window: 10m, above: 5, for: 5m,
     signal: 'sum by (instance, model_name) (vllm:num_requests_waiting)'}
  - {name: WaitingMax, category: queue_buildup, stat: max, window: 3m, above: 20, for: 2m,
     signal: 'sum by (instance, model_name) (vllm:num_requests_waiting)'}
  - {name: KVp95, category: memory_pressure, stat: p95, window: 15m, above: 0.93, for: 5m,
     signal: 'max by (instance, model_name) (vllm:kv_cache_usage_perc)'}
  - {name: KVp50, category: memory_pressure, stat: p50, window: 5m, above: 0.9,
     signal: 'max by (instance, model_name) (vllm:kv_cache_usage_perc)'}
  - {name: RunningMinLow, category: batch_size_suboptimal, stat: min, window: 5m, below: 3, for: 10m,
     signal: 'sum by (instance, model_name) (vllm:num_requests_running)'}
  - {name: RunningLast, category: batch_size_suboptimal, stat: last, window: 2m, above: 40, for: 1m,
     signal: 'sum by (instance, model_name) (vllm:num_requests_running)'}
  - {name: TTFTp99Over, category: high_latency, stat: p99, window: 10m, above: 2, for: 3m,
     signal: 'histogram_quantile(0.95, sum by (le, instance, model_name) (rate(vllm:time_to_first_token_seconds_bucket[5m])))',
     guard: 'sum by (instance, model_name) (rate(vllm:time_to_first_token_seconds_count[5m])) > 0.5'}
  - {name: AbortShare, category: error_rate, above: 0.05, for: 5m,
     signal: 'sum by (instance, model_name) (rate(vllm:request_success_total{finished_reason="abort"}[5m])) / sum by (instance, model_name) (rate(vllm:request_success_total[5m]))',
     guard: 'sum by (instance, model_name) (rate(vllm:request_success_total[5m])) > 0.05'}
  - {name: Preempting, category: memory_pressure, above: 0.05,
     signal: 'sum by (instance, model_name) (rate(vllm:num_preemptions_total[5m]))'}
  # Computed from WaitingMean's fetched signal rather than asked of Prometheus: a plain comparison, and a guard.
  - {name: WaitingPlain, category: queue_buildup, above: 10, for: 2m,
     signal: 'sum by (instance, model_name) (vllm:num_requests_waiting)'}
  - {name: RunningWhileWaiting, category: batch_size_suboptimal, stat: mean, window: 5m, above: 30,
     signal: 'sum by (instance, model_name) (vllm:num_requests_running)',
     guard: 'sum by (instance, model_name) (vllm:num_requests_waiting) > 2'}
  # Signals no other rule uses: with pushdown their cheap windows are computed by Prometheus.
  - {name: PushedMean, category: queue_buildup, stat: mean, window: 5m, above: 8, for: 2m,
     signal: 'max by (instance, model_name) (vllm:num_requests_waiting)'}
  - {name: PushedMinGuarded, category: batch_size_suboptimal, stat: min, window: 5m, below: 3, for: 5m,
     signal: 'max by (instance, model_name) (vllm:num_requests_running)',
     guard: 'sum by (instance, model_name) (rate(vllm:request_success_total[5m])) > 0.05'}
"""


def prometheus_firing_expression(rule, pack) -> str:
    """The alert condition as Prometheus evaluates it, with `for` as "the condition held at each of the last
    for/step + 1 evaluations" (a subquery inclusive at both ends, on the same step grid)."""
    signal = inject_selector(rule.signal, pack.selector)
    if rule.stat:
        signal = window_stat_query(signal, rule.stat, rule.window, STEP)
    condition = f"({signal}) {'>' if rule.direction == 'above' else '<'} {rule.threshold!r}"
    if rule.guard:
        condition = f"({condition}) and on ({', '.join(pack.keep_labels)}) ({inject_selector(rule.guard, pack.selector)})"
    points = steps_for(rule.for_, STEP) + 1
    if points == 1:
        return condition
    return f"count_over_time(({condition})[{format_duration(rule.for_)}:{format_duration(STEP)}]) >= {points}"


def firing_points_from_prometheus(prometheus, query, start, end) -> set[tuple]:
    import requests

    answer = requests.post(f"{prometheus.url}/api/v1/query_range", timeout=120, data={
        "query": query, "start": start.timestamp(), "end": end.timestamp(), "step": STEP.total_seconds()}).json()
    assert answer["status"] == "success", answer
    return {(frozenset(series["metric"].items()), int(float(ts))) for series in answer["data"]["result"]
            for ts, _ in series["values"]}


def firing_points_from_findings(findings, start, end) -> set[tuple]:
    points = set()
    for finding in findings:
        last = finding.end - STEP if finding.end is not None else end
        for ts in pd.date_range(max(finding.start, start), min(last, end), freq=STEP):
            points.add((frozenset(finding.labels.items()), int(ts.timestamp())))
    return points


@pytest.mark.parametrize("pushdown", [False, True], ids=["windows-in-pandas", "cheap-windows-in-prometheus"])
def test_firing_intervals_agree_with_prometheus(history, tmp_path, pushdown):
    prometheus, _, _ = history
    (tmp_path / "pack.yaml").write_text(AGREEMENT_PACK)
    ruleset = load_ruleset(tmp_path / "pack.yaml")
    pack = ruleset.packs[0]
    start, end = END - pd.Timedelta(hours=HOURS - 1), END - STEP
    backtest = run_backtest(ruleset, PrometheusSource(prometheus.url), start, end, STEP, pushdown=pushdown)
    windowed = {o.rule for o in backtest.outcomes if "windowed" in o.queries}
    assert windowed == ({"PushedMean", "PushedMinGuarded"} if pushdown else set())
    assert not backtest.failed
    total = 0
    for rule in pack.rules:
        ours = firing_points_from_findings([f for f in backtest.findings if f.rule == rule.name], start, end)
        theirs = firing_points_from_prometheus(prometheus, prometheus_firing_expression(rule, pack), start, end)
        assert ours == theirs, (rule.name, sorted(ours - theirs)[:5], sorted(theirs - ours)[:5])
        total += len(ours)
    assert total > 200, "the scenario should make most rules fire for a while"
    assert {f.rule for f in backtest.findings} >= {"WaitingMean", "KVp95", "TTFTp99Over", "AbortShare", "WaitingPlain",
                                                   "RunningWhileWaiting", "PushedMean"}


def test_keep_firing_for_and_for_agree_with_promtool(tmp_path, promtool_bin):
    """Prometheus' own rule engine (promtool test rules) judges the pending/firing/kept states we compute."""
    from rules_engine.evaluate.alerting import firing_episodes, firing_mask

    rng = np.random.default_rng(3)
    values = np.where(rng.random(90) < 0.55, 9, 1)
    values[10:25] = 9  # at least one long run, so the alert fires
    rules = {"groups": [{"name": "g", "interval": "1m", "rules": [
        {"alert": "Kept", "expr": "x > 5", "for": "3m", "keep_firing_for": "4m"}]}]}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    fired = firing_mask(firing_episodes((values > 5)[:, None], 3, 4), 1)[:, 0]
    cases = [{"eval_time": f"{minute}m", "alertname": "Kept",
              "exp_alerts": [{"exp_labels": {"instance": "a"}}] if fired[minute] else []}
             for minute in range(len(values))]
    test = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": 'x{instance="a"}', "values": " ".join(str(v) for v in values)}],
        "alert_rule_test": cases}]}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test))
    result = subprocess.run([promtool_bin, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert fired.sum() > 10


def test_evaluate_cli_finds_the_simulated_incidents(history, tmp_path):
    prometheus, truth, _ = history
    export = tmp_path / "findings.json"
    result = subprocess.run(
        [sys.executable, "-m", "rules_engine.cli", "evaluate", "--rules", "rules/vllm.yaml", "--prometheus", prometheus.url,
         "--start", (END - pd.Timedelta(hours=HOURS - 1)).isoformat(), "--end", END.isoformat(), "--step", "30s",
         "--export", str(export), "--no-progress"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    assert "Findings" in result.stdout and "health" in result.stdout
    record = json.loads(export.read_text())
    findings = record["findings"]
    for finding in findings:
        assert set(finding) >= {"rule", "kind", "category", "severity", "labels", "start", "end", "value",
                                "threshold", "recommendation", "playbook"}
        assert finding["kind"] == "threshold" and finding["severity"] in ("low", "medium", "high", "critical")
        assert finding["start"].endswith("Z") and (finding["end"] is None or finding["end"].endswith("Z"))

    def found(category: str, instance: str, start: str, end: str | None) -> bool:
        begin, finish = pd.Timestamp(start), pd.Timestamp(end) if end else END
        return any(f["category"] == category and f["labels"].get("instance") == instance
                   and pd.Timestamp(f["start"]) < finish + pd.Timedelta("20m")
                   and (f["end"] is None or pd.Timestamp(f["end"]) > begin) for f in findings)

    incidents = [i for i in truth["incidents"] if i["kind"] != "restart"]
    assert len(incidents) == len(INCIDENTS)
    for incident in incidents:
        assert found(incident["category"], incident["instance"], incident["start"], incident["end"]), incident
    affected = {i["instance"] for i in incidents}
    quiet = {f"vllm-{n}:8000" for n in range(6)} - affected
    noisy = [f for f in findings if f["labels"].get("instance") in quiet]
    assert not noisy, f"instances without incidents were flagged: {noisy[:3]}"


def test_promql_engine_from_the_cli_finds_the_same_alerts(history, tmp_path):
    """`--engine promql` runs the generated alert expressions; for threshold rules it must find what pandas finds."""
    prometheus, _, _ = history
    found = {}
    for engine in ("pandas", "promql"):
        export = tmp_path / f"{engine}.json"
        result = subprocess.run(
            [sys.executable, "-m", "rules_engine.cli", "evaluate", "--rules", "rules/vllm.yaml", "--prometheus", prometheus.url, "--engine", engine,
             "--start", (END - pd.Timedelta(hours=HOURS - 1)).isoformat(), "--end", END.isoformat(),
             "--export", str(export), "--no-progress"],
            capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
        assert result.returncode == 0, result.stdout + result.stderr
        found[engine] = {(f["rule"], f["labels"]["instance"], f["start"], f["end"])
                         for f in json.loads(export.read_text())["findings"]}
    assert found["pandas"] and found["pandas"] == found["promql"]
