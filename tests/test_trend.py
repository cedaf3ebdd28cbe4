"""Trend rules on frames built directly: the rolling fit, predicted crossings, slope bounds and the fit guards."""
import numpy as np
import pandas as pd
import pytest

from rules_engine.evaluate import trend
from rules_engine.evaluate.series import RangeWindow
from rules_engine.source.frame import RangeFrame
from tests.frames import instance_frame
from rules_engine.spec import SpecError, load_ruleset
from rules_engine.spec.models import RulePack

STEP = pd.Timedelta("30s")
GRID = pd.date_range("2026-01-01", periods=1440, freq=STEP, tz="UTC")  # 12 hours


def pack(**rule) -> RulePack:
    base = {"name": "KV", "type": "trend", "category": "memory_pressure", "signal": "max by (instance) (kv)",
            "window": "1h"}
    return RulePack.model_validate({"kind": "RulePack", "name": "p", "keep_labels": ["instance"],
                                    "rules": [{**base, **rule}]})


def frame(columns: dict[str, np.ndarray]) -> RangeFrame:
    return instance_frame(GRID, columns)


def run(rule_pack: RulePack, frames: dict[str, RangeFrame], start_row: int = 0):
    return trend.evaluate(rule_pack.rules[0], rule_pack, frames, RangeWindow(GRID[start_row], GRID[-1], STEP))


def climb(rng, start_row=400, saturate_row=1000, low=0.45, noise=0.004):
    """Flat at `low`, then a linear climb reaching 1.0 at `saturate_row`, then saturated."""
    rows = np.arange(len(GRID))
    level = np.where(rows < start_row, low, low + (1 - low) * (rows - start_row) / (saturate_row - start_row))
    return np.minimum(level + rng.normal(0, noise, len(GRID)), 1.0)


def test_rolling_fit_matches_least_squares_per_window_with_gaps():
    rng = np.random.default_rng(3)
    values = rng.normal(0, 1, (300, 3)) + np.arange(300)[:, None] * [0.01, -0.02, 0.0]
    values[rng.random(values.shape) < 0.1] = np.nan
    fit = trend.rolling_fit(values, 40)
    for row in (39, 120, 299):
        for column in range(3):
            window = values[row - 39:row + 1, column]
            x = np.arange(row - 39, row + 1)[~np.isnan(window)]
            y = window[~np.isnan(window)]
            slope, intercept = np.polyfit(x, y, 1)
            assert fit["n"][row, column] == len(y)
            assert fit["slope"][row, column] == pytest.approx(slope, rel=1e-7, abs=1e-10)
            assert fit["fitted"][row, column] == pytest.approx(intercept + slope * row, rel=1e-7)
            assert fit["r2"][row, column] == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, rel=1e-6, abs=1e-9)


def test_rolling_fit_keeps_its_precision_over_30_days_of_large_values():
    rng = np.random.default_rng(6)
    rows = 30 * 2880
    values = 5000 + rng.normal(0, 50, (rows, 1)) + np.arange(rows)[:, None] * 0.005  # tokens/s, slowly rising
    fit = trend.rolling_fit(values, 121)
    x = np.arange(rows - 121, rows)
    slope, intercept = np.polyfit(x, values[-121:, 0], 1)
    assert fit["slope"][-1, 0] == pytest.approx(slope, rel=1e-6)
    assert fit["fitted"][-1, 0] == pytest.approx(intercept + slope * (rows - 1), rel=1e-9)


def test_climb_warned_before_saturation_with_predicted_time_close_to_true():
    rng = np.random.default_rng(1)
    rule_pack = pack(above=0.98, horizon="2h", min_r2=0.6)
    findings = run(rule_pack, {"signal": frame({"steady": np.full(len(GRID), 0.6) + rng.normal(0, 0.004, len(GRID)),
                                                "climbing": climb(rng)})})
    assert [f.labels["instance"] for f in findings] == ["climbing"]
    finding = findings[0]
    true_crossing = GRID[400] + (GRID[1000] - GRID[400]) * (0.98 - 0.45) / 0.55
    assert finding.start < true_crossing
    lead = true_crossing - finding.start
    predicted = pd.Timestamp(finding.details["predicted_crossing"])
    assert abs(predicted - true_crossing) <= 0.15 * lead
    assert finding.kind == "trend" and finding.threshold == 0.98 and finding.details["r2"] >= 0.6
    assert finding.details["window"] == "1h"


def test_flat_and_noisy_series_are_not_extrapolated():
    rng = np.random.default_rng(2)
    flat = np.full(len(GRID), 0.97)  # within reach of the limit, but no trend at all
    noisy = 0.9 + rng.normal(0, 0.05, len(GRID))  # wild swings: a least-squares line means nothing
    rule_pack = pack(above=0.98, horizon="30m")
    assert run(rule_pack, {"signal": frame({"flat": flat, "noisy": noisy})}) == []
    # Without the fit-quality guard the noise alone produces predicted crossings.
    assert run(pack(above=0.98, horizon="30m", min_r2=0.0), {"signal": frame({"noisy": noisy})})


def test_minimum_samples_guard_needs_a_full_enough_window():
    rng = np.random.default_rng(4)
    values = climb(rng, noise=0.0)
    sparse = values.copy()
    sparse[np.arange(len(GRID)) % 10 != 0] = np.nan  # one sample in ten: 12 points per hour
    assert run(pack(above=0.98, horizon="2h", min_samples=30), {"signal": frame({"a": sparse})}) == []
    assert run(pack(above=0.98, horizon="2h", min_samples=10), {"signal": frame({"a": sparse})})


def test_below_crossing_and_lead_time_severity():
    rows = np.arange(len(GRID))
    falling = 500.0 - rows * 0.5  # tokens/s falling 1 per minute, crosses 100 at row 800
    rule_pack = pack(below=100, horizon="1h", severity={"by": "lead_time", "critical": 0.25, "high": 0.5})
    (finding,) = run(rule_pack, {"signal": frame({"a": falling})})
    # An hour ahead predict_linear reaches exactly 100 (not below); one step later it is below.
    assert finding.start == GRID[800 - 120 + 1]
    assert pd.Timestamp(finding.details["predicted_crossing"]) == GRID[800]
    assert finding.severity == "critical"  # it kept firing until the crossing itself
    assert finding.value == pytest.approx(falling.min() - 0.5 * 120)


def test_slope_bound_per_minute_with_ratio_severity():
    rows = np.arange(len(GRID))
    queue = np.where(rows < 600, 2.0, 2.0 + (rows - 600) * 2.5)  # +5 requests per minute from row 600
    rule_pack = pack(name="QueueGrowing", category="queue_buildup", window="15m", slope_above=1, per="1m",
                     severity={"by": "ratio", "medium": 2, "high": 4, "critical": 8}, **{"for": "5m"})
    (finding,) = run(rule_pack, {"signal": frame({"a": queue})})
    assert finding.value == pytest.approx(5.0) and finding.severity == "high"
    assert GRID[600] < finding.start <= GRID[600 + 30 + 10]


def test_guard_limits_judgement_to_matching_series():
    rng = np.random.default_rng(5)
    rule_pack = pack(above=0.98, horizon="2h", guard="max by (instance) (kv) > 0.5")
    guard = frame({"other": np.ones(len(GRID))})
    assert run(rule_pack, {"signal": frame({"a": climb(rng)}), "guard": guard}) == []


def test_spec_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("""\
kind: RulePack
name: p
rules:
  - name: NoHorizon
    type: trend
    category: memory_pressure
    signal: kv
    window: 1h
    above: 0.98
  - name: TwoLimits
    type: trend
    category: memory_pressure
    signal: kv
    window: 1h
    above: 0.9
    slope_above: 1
  - name: LadderOnCrossing
    type: trend
    category: memory_pressure
    signal: kv
    window: 1h
    horizon: 30m
    above: 0.9
    severity: {by: ratio}
""")
    with pytest.raises(SpecError) as error:
        load_ruleset(path)
    text = str(error.value)
    assert f"{path}:4: rules[0]: a predicted crossing (`above`/`below`) needs `horizon`" in text
    assert f"{path}:10: rules[1]: give exactly one of" in text
    assert f"{path}:17: rules[2]: a predicted crossing grades severity by lead time" in text


def test_shipped_trend_rules_load():
    ruleset = load_ruleset(["rules/vllm-trends.yaml"])
    kinds = {rule.type for _, rule in ruleset.rules()}
    assert kinds == {"trend", "regression"}


def test_the_fit_uses_window_over_step_plus_one_samples():
    """[1h:30s] holds 121 samples (both ends): the fit of each evaluation uses exactly those."""
    rows = np.arange(len(GRID))
    curve = 0.5 + 1e-6 * (rows - 300.0) ** 2  # a parabola: the slope depends on which samples are fitted
    rule_pack = pack(slope_above=0, per="1m", min_r2=0.0)
    findings = run(rule_pack, {"signal": frame({"a": curve})}, start_row=700)
    assert findings
    finding = findings[0]
    assert finding.details["fit_samples"] == 121
    fire_row = GRID.get_loc(finding.start)
    slope_per_step = np.polyfit(rows[fire_row - 120:fire_row + 1], curve[fire_row - 120:fire_row + 1], 1)[0]
    assert finding.details["slope_per_second"] == pytest.approx(slope_per_step / 30, rel=1e-9)
