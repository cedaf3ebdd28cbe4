"""Threshold rules on frames built directly: window + condition + guard + for + severity, end to end in memory."""
import numpy as np
import pandas as pd

from rules_engine.evaluate import threshold
from rules_engine.promql import threshold as threshold_semantics
from rules_engine.evaluate.series import RangeWindow
from rules_engine.source.frame import RangeFrame
from tests.frames import instance_frame
from rules_engine.spec.models import RulePack

STEP = pd.Timedelta("1m")
GRID = pd.date_range("2026-01-01", periods=120, freq=STEP, tz="UTC")


def pack(**rule) -> RulePack:
    base = {"name": "R", "category": "queue_buildup", "signal": "sum by (instance) (waiting)"}
    return RulePack.model_validate({"kind": "RulePack", "name": "p", "selector": '{job="vllm"}', "keep_labels": ["instance"],
                                    "rules": [{**base, **rule}]})


def frame(query: str, columns: dict[str, np.ndarray]) -> RangeFrame:
    return instance_frame(GRID, columns, query)


def run(rule_pack: RulePack, frames: dict[str, RangeFrame]):
    rule = rule_pack.rules[0]
    return threshold.evaluate(rule, rule_pack, frames, RangeWindow(GRID[0], GRID[-1], STEP))


def test_plain_threshold_pushes_the_comparison_down():
    rule_pack = pack(above=5, guard="sum by (instance) (rate(req[5m])) > 1")
    queries = threshold_semantics.queries(rule_pack.rules[0], rule_pack)
    assert queries == {"signal": '(sum by (instance)(waiting{job="vllm"})) > 5.0 and on (instance) '
                                 '(sum by (instance)(rate(req{job="vllm"}[5m])) > 1)'}
    windowed = pack(above=5, stat="p95", window="10m")
    assert threshold_semantics.queries(windowed.rules[0], windowed) == {"signal": 'sum by (instance)(waiting{job="vllm"})'}


def test_for_window_and_severity():
    calm = np.ones(120)
    busy = np.ones(120)
    busy[30:60] = 12.0  # 2.4x the threshold: critical
    rule_pack = pack(above=5, stat="max", window="5m", **{"for": "10m"})
    findings = run(rule_pack, {"signal": frame("q", {"a": calm, "b": busy})})
    assert len(findings) == 1
    (finding,) = findings
    assert finding.labels == {"instance": "b"} and finding.severity == "critical" and finding.value == 12.0
    assert finding.start == GRID[40]  # active from row 30, firing 10 steps later
    assert finding.end == GRID[65]  # max over 5m stays above until row 64 inclusive
    assert finding.details["window"] == "5m"  # spelled as in the rule, not "0 days 00:05:00"


def test_guard_matches_on_kept_labels():
    busy = np.full(120, 9.0)
    guard = np.where(np.arange(120) < 50, 1.0, np.nan)  # guard holds for the first 50 minutes only
    rule_pack = pack(above=5, stat="last", window="1m", guard="g")
    findings = run(rule_pack, {"signal": frame("q", {"a": busy, "b": busy}), "guard": frame("g", {"b": guard})})
    assert [(f.labels["instance"], f.start, f.end) for f in findings] == [("b", GRID[0], GRID[50])]


def test_below_rule_reports_the_trough_and_value_ladder():
    hit_rate = np.full(120, 0.5)
    hit_rate[10:40] = 0.05
    rule_pack = pack(below=0.2, severity={"by": "value", "medium": 0.15, "high": 0.1, "critical": 0.01})
    (finding,) = run(rule_pack, {"signal": frame("q", {"a": hit_rate})})
    assert finding.value == 0.05 and finding.severity == "high" and finding.details["direction"] == "below"


def test_ratio_ladder_levels():
    rule_pack = pack(above=10)
    rule = rule_pack.rules[0]
    assert threshold.severity_of(rule, np.array([10.5, 12.0, 15.0, 25.0])) == ["low", "medium", "high", "critical"]


def test_episode_resolved_during_warmup_is_not_reported():
    values = np.ones(120)
    values[0:5] = 50.0
    rule_pack = pack(above=5)
    rule = rule_pack.rules[0]
    findings = threshold.evaluate(rule, rule_pack, {"signal": frame("q", {"a": values})}, RangeWindow(GRID[10], GRID[-1], STEP))
    assert findings == []


def test_below_ratio_ladder_is_threshold_over_trough():
    # below 0.2: a trough of 0.1 is twice as far past it (0.2 / 0.1 = 2.0, critical); 0.16 is 1.25 (medium).
    rule = pack(below=0.2).rules[0]
    assert threshold.severity_of(rule, np.array([0.19, 0.16, 0.13, 0.1])) == ["low", "medium", "high", "critical"]


def test_a_value_equal_to_the_threshold_does_not_fire():
    at_limit = np.full(120, 5.0)  # exactly the bound, never past it
    assert run(pack(above=5), {"signal": frame("q", {"a": at_limit})}) == []
    assert run(pack(below=5), {"signal": frame("q", {"a": at_limit})}) == []
    just_past = at_limit.copy()
    just_past[60] = 5.001
    (finding,) = run(pack(above=5), {"signal": frame("q", {"a": just_past})})
    assert (finding.start, finding.end) == (GRID[60], GRID[61])


def test_an_alert_kept_firing_into_the_range_is_reported_from_the_warmup():
    # Active for 10 minutes, ending 8 minutes before the range start: with `for: 5m` it fired before the start, and
    # `keep_firing_for: 10m` keeps it firing 2 minutes into the range, as Prometheus would at those evaluations.
    rule_pack = pack(above=5, **{"for": "5m", "keep_firing_for": "10m"})
    rule = rule_pack.rules[0]
    range_start = GRID[60]
    warmup = threshold_semantics.warmup(rule)
    assert warmup == pd.Timedelta("15m")
    values = np.ones(120)
    values[42:52] = 9.0  # rows 42..51 active; the condition first fails at row 52, 8 steps before the start
    fetched = GRID >= range_start - warmup
    findings = threshold.evaluate(rule, rule_pack, {"signal": instance_frame(GRID[fetched], {"a": values[fetched]}, "q")},
                                  RangeWindow(range_start, GRID[-1], STEP))
    # Firing through row 61; it started before the range (the warm-up sees it ignite, not its whole run-up).
    (finding,) = findings
    assert finding.start < range_start and finding.end == GRID[62]
