"""The backtest engine's planning: one fetch per distinct query, from the earliest sample any rule needs."""
import pandas as pd

from rules_engine.api import fetch_plan, recording_plan
from rules_engine.evaluate.engine import Filtered, filtered_queries, instance_labels, rule_queries, select_rules
from rules_engine.kinds import RULE_KINDS
from rules_engine.source.frame import RangeFrame
from rules_engine.spec import load_ruleset

PACK = """\
kind: RulePack
name: plan
keep_labels: [instance]
rules:
  - {name: A, category: queue_buildup, signal: 'sum by (instance) (waiting)', stat: mean, window: 1h, above: 5, for: 10m}
  - {name: B, category: queue_buildup, signal: 'sum by (instance) (waiting)', stat: p95, window: 10m, above: 9}
  - name: Deploy
    type: regression
    category: high_latency
    signal: 'avg by (instance) (itl)'
    stat: mean
    window: 1h
    baseline: {at: '2026-01-01T00:00:00Z', window: 2h}
    ratio_above: 1.2
"""
SLO = """\
kind: SLO
name: avail
objective: 99
period: 7d
sli:
  ratio:
    errors: 'sum by (model_name) (errors_total)'
    total: 'sum by (model_name) (requests_total)'
"""
START = pd.Timestamp("2026-01-03T00:00:00Z")
STEP = pd.Timedelta("30s")


def test_shared_signal_is_fetched_once_and_warmup_covers_the_longest_rule(tmp_path):
    (tmp_path / "pack.yaml").write_text(PACK)
    ruleset = load_ruleset(tmp_path)
    queries, start = fetch_plan(ruleset, START, STEP, ["A", "B"])
    assert queries == ["sum by (instance) (waiting)"]
    assert start == START - pd.Timedelta("1h10m")


def test_an_explicit_baseline_time_reaches_back_past_the_warmup(tmp_path):
    (tmp_path / "pack.yaml").write_text(PACK)
    _, start = fetch_plan(load_ruleset(tmp_path), START, STEP)
    assert start == pd.Timestamp("2025-12-31T22:00:00Z")  # the deploy minus the 2h baseline window


def test_recording_plan_adds_slo_queries_over_their_period(tmp_path):
    (tmp_path / "pack.yaml").write_text(PACK)
    (tmp_path / "slo.yaml").write_text(SLO)
    end = START + pd.Timedelta(days=1)
    queries, start = recording_plan(load_ruleset(tmp_path), START, end, STEP)
    assert "sum by (model_name) (errors_total)" in queries and "sum by (instance) (waiting)" in queries
    assert start <= end - pd.Timedelta(days=7)


def test_instance_labels_keep_only_labels_with_one_value_per_instance():
    grid = pd.date_range(START, periods=2, freq=STEP)
    labels = pd.DataFrame({"instance": ["a", "a", "b"], "model_name": ["m", "m", "n"], "reason": ["x", "y", "x"]})
    frame = RangeFrame("q", pd.DataFrame(0.0, index=grid, columns=pd.RangeIndex(3)), labels)
    assert instance_labels([frame]) == {"a": {"model_name": "m"}, "b": {"model_name": "n", "reason": "x"}}


def test_comparisons_of_a_fetched_query_are_computed_locally():
    base = 'sum by (instance)(waiting{job="vllm"})'
    queries = [base, f"{base} > 2", f"({base}) <= 5.0", f"{base} > bool 2", "other > 2"]
    found = filtered_queries(queries)
    assert set(found) == {f"{base} > 2", f"({base}) <= 5.0"}
    grid = pd.date_range(START, periods=3, freq=STEP)
    values = pd.DataFrame([[1.0, 3.0], [4.0, float("nan")], [1.0, 1.0]], index=grid, columns=pd.RangeIndex(2))
    frame = RangeFrame(base, values, pd.DataFrame({"instance": ["a", "b"]}))
    above = found[f"{base} > 2"].apply(frame, f"{base} > 2")
    assert above.values.iloc[1, 0] == 4.0 and pd.isna(above.values.iloc[1, 1])
    assert above.series_count == 2 and above.values.iloc[0, 1] == 3.0 and pd.isna(above.values.iloc[0, 0])
    low = found[f"({base}) <= 5.0"].apply(frame, "q")
    assert low.series_count == 2
    nothing = Filtered(base, ">", 10).apply(frame, "q")
    assert nothing.series_count == 0 and nothing.labels.empty  # Prometheus returns no series at all


def test_cheap_windows_go_down_to_prometheus_unless_their_signal_is_fetched_anyway(tmp_path):
    (tmp_path / "pack.yaml").write_text(PACK + """\
  - {name: Lone, category: queue_buildup, signal: 'sum by (instance) (running)', stat: max, window: 5m, below: 2}
  - {name: Quantile, category: queue_buildup, signal: 'sum by (instance) (other)', stat: p99, window: 5m, above: 2}
""")
    ruleset = load_ruleset(tmp_path)
    planned = rule_queries(select_rules(ruleset), STEP, RULE_KINDS)
    assert planned["Lone"] == {"windowed": "(max_over_time((sum by (instance) (running))[5m:30s])) < 2.0"}
    assert planned["A"] == {"signal": "sum by (instance) (waiting)"}  # B needs the same signal: a window here is free
    assert planned["Quantile"] == {"signal": "sum by (instance) (other)"}  # quantiles sort every window: kept here
    assert rule_queries(select_rules(ruleset), STEP, RULE_KINDS, pushdown=False)["Lone"] == {"signal": "sum by (instance) (running)"}
