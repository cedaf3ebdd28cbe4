"""Regression rules on frames built directly: the U test against scipy, change points, baselines and guards."""
import re

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from rules_engine.evaluate import regression
from rules_engine.promql import regression as regression_semantics
from rules_engine.promql.histograms import le_regex
from rules_engine.evaluate.series import EvaluationError, RangeWindow
from rules_engine.source.frame import RangeFrame
from tests.frames import instance_frame
from rules_engine.spec import SpecError, load_ruleset
from rules_engine.spec.models import RulePack

STEP = pd.Timedelta("30s")
DAY = 2880
GRID = pd.date_range("2026-01-05", periods=2 * DAY, freq=STEP, tz="UTC")


def pack(**rule) -> RulePack:
    base = {"name": "ITL", "type": "regression", "category": "high_latency", "signal": "itl", "window": "1h",
            "baseline": {"offset": "1d"}, "ratio_above": 1.2}
    return RulePack.model_validate({"kind": "RulePack", "name": "p", "keep_labels": ["instance"],
                                    "rules": [{**base, **rule}]})


def frame(columns: dict[str, np.ndarray]) -> RangeFrame:
    return instance_frame(GRID, columns)


def run(rule_pack: RulePack, frames: dict[str, RangeFrame], start_row: int = DAY):
    return regression.evaluate(rule_pack.rules[0], rule_pack, frames, RangeWindow(GRID[start_row], GRID[-1], STEP))


def itl(rng, shift_row=None, factor=1.25, mean=0.03, sd=0.003):
    values = mean + rng.normal(0, sd, len(GRID))
    if shift_row is not None:
        values[shift_row:] *= factor
    return values


@pytest.mark.parametrize("case", ["continuous", "ties", "missing"])
def test_mann_whitney_matches_scipy(case):
    rng = np.random.default_rng(7)
    current, baseline = rng.normal(0.2, 1, (40, 30)), rng.normal(0, 1, (40, 50))
    if case == "ties":
        current, baseline = np.round(current), np.round(baseline)
    if case == "missing":
        current[rng.random(current.shape) < 0.15] = np.nan
        baseline[rng.random(baseline.shape) < 0.15] = np.nan
    u, p, n1, n2 = regression.mann_whitney(current.copy(), baseline.copy())
    for row in range(40):
        x, y = current[row][~np.isnan(current[row])], baseline[row][~np.isnan(baseline[row])]
        expected = scipy.stats.mannwhitneyu(x, y, method="asymptotic", use_continuity=True)
        assert u[row] == pytest.approx(expected.statistic) and p[row] == pytest.approx(expected.pvalue, rel=1e-9)
        assert (n1[row], n2[row]) == (len(x), len(y))


def test_change_point_finds_the_level_shift():
    rng = np.random.default_rng(8)
    samples = np.concatenate([rng.normal(1.0, 0.1, 70), rng.normal(1.3, 0.1, 50)])
    samples[[5, 90]] = np.nan
    assert abs(regression.change_point(samples) - 70) <= 2
    assert regression.change_point(np.array([1.0, np.nan, 2.0])) is None


def test_shift_detected_with_onset_and_unchanged_series_quiet():
    rng = np.random.default_rng(9)
    shift = DAY + 900
    findings = run(pack(), {"signal": frame({"steady-1": itl(rng), "deployed": itl(rng, shift), "steady-2": itl(rng)})})
    assert [f.labels["instance"] for f in findings] == ["deployed"]
    finding = findings[0]
    details = finding.details
    assert abs(pd.Timestamp(details["onset"]) - GRID[shift]) <= pd.Timedelta("5m")
    assert GRID[shift] < finding.start <= GRID[shift] + pd.Timedelta("1h")
    assert details["p_value"] < 0.01 and details["effect_size"] > 0.5
    assert details["relative_change"] == pytest.approx(0.25, abs=0.06)
    assert details["measure"] == "signal" and details["baseline"] == "offset 1d" and details["stat"] == "mean"
    assert finding.threshold == pytest.approx(details["baseline_value"] * 1.2)
    assert finding.end is None  # still regressed at the end of the range


def test_significance_is_required_besides_the_ratio():
    # Two samples per hour that happen to differ by 30%: the ratio alone would fire, the test says "not enough".
    rng = np.random.default_rng(10)
    sparse = itl(rng, DAY + 600, factor=1.3, sd=0.02)
    sparse[np.arange(len(GRID)) % 60 != 0] = np.nan
    with pytest.raises(EvaluationError, match="min_samples"):
        run(pack(min_samples=200), {"signal": frame({"a": sparse})})
    assert run(pack(min_samples=5), {"signal": frame({"a": sparse})}) == []


def test_drop_against_the_preceding_window():
    rng = np.random.default_rng(11)
    hit_rate = 0.7 + rng.normal(0, 0.02, len(GRID))
    hit_rate[DAY + 600:] -= 0.3  # 0.7 -> 0.4: -43%
    rule_pack = pack(name="HitRate", category="cache_inefficiency", ratio_above=None, ratio_below=0.8,
                     baseline={"preceding": True})
    (finding,) = run(rule_pack, {"signal": frame({"a": hit_rate})})
    assert finding.details["baseline"] == "preceding 1h" and finding.details["relative_change"] < -0.2
    # Once both windows hold the new level there is nothing left to compare: the episode ends.
    assert finding.end is not None and finding.end <= GRID[DAY + 600] + pd.Timedelta("2h") + pd.Timedelta("5m")
    assert finding.value == pytest.approx(0.4, abs=0.02)


def test_explicit_deploy_time_baseline():
    rng = np.random.default_rng(12)
    deploy = GRID[DAY + 200]
    values = itl(rng, DAY + 200, factor=1.4)
    rule_pack = pack(baseline={"at": deploy.isoformat(), "window": "2h"})
    (finding,) = run(rule_pack, {"signal": frame({"a": values})})
    assert finding.details["baseline"] == f"at {deploy.isoformat()}"
    assert finding.details["samples"] == {"current": 120, "baseline": 240}
    assert finding.start >= deploy + pd.Timedelta("1h")  # the current window lies wholly after the deploy
    assert abs(pd.Timestamp(finding.details["onset"]) - deploy) <= pd.Timedelta("2m")
    assert regression_semantics.earliest_sample(rule_pack.rules[0]) == deploy - pd.Timedelta("2h")
    assert regression_semantics.earliest_sample(pack().rules[0]) is None
    too_early = pack(baseline={"at": GRID[100].isoformat(), "window": "2h"})
    with pytest.raises(EvaluationError, match="start the backtest at or before"):
        run(too_early, {"signal": frame({"a": values})})


def test_quantile_statistic_and_guard():
    rng = np.random.default_rng(13)
    values = itl(rng, DAY + 900, factor=1.5)
    guard = frame({"b": np.ones(len(GRID))})  # the guard holds for another instance only
    assert run(pack(stat="p95", guard="g"), {"signal": frame({"a": values}), "guard": guard}) == []
    (finding,) = run(pack(stat="p95"), {"signal": frame({"a": values})})
    assert finding.details["stat"] == "p95"


def test_histogram_signals_say_what_they_measure():
    def query(**histogram):
        rule_pack = pack(signal=None, histogram={"metric": "vllm:inter_token_latency_seconds", **histogram})
        rule = rule_pack.rules[0]
        return regression_semantics.queries(rule, rule_pack)["signal"], rule.measure

    assert query() == ("sum by (instance) (rate(vllm:inter_token_latency_seconds_sum[5m])) / sum by (instance) "
                       "(rate(vllm:inter_token_latency_seconds_count[5m]))", "mean")
    share, measure = query(measure="share_above", le=0.025)
    assert 'le=~"0[.]0250*"' in share and share.startswith("1 - ") and measure == "share_above:0.025"
    quantile, measure = query(measure="quantile", q=0.95, by=["instance", "model_name"])
    assert quantile.startswith("histogram_quantile(0.95, sum by (le, instance, model_name)") and measure == "quantile:0.95"


@pytest.mark.parametrize("boundary,matches,rejects", [
    (0.025, ["0.025", "0.0250"], ["0.25", "0.0255"]),
    (1.0, ["1", "1.0", "1.00"], ["10", "1.5", "0.1"]),
    (2560, ["2560", "2560.0"], ["256"]),
])
def test_le_regex_matches_every_spelling_of_the_boundary(boundary, matches, rejects):
    pattern = re.compile(le_regex(boundary))
    assert all(pattern.fullmatch(text) for text in matches)
    assert not any(pattern.fullmatch(text) for text in rejects)


def test_range_shorter_than_the_baseline_reach_finds_nothing():
    rng = np.random.default_rng(14)
    short = RangeFrame("q", frame({"a": itl(rng)}).values.iloc[:500], pd.DataFrame({"instance": ["a"]}))
    rule_pack = pack()
    assert regression.evaluate(rule_pack.rules[0], rule_pack, {"signal": short},
                               RangeWindow(GRID[100], GRID[499], STEP)) == []
    tiny = RangeFrame("q", short.values.iloc[:50], short.labels)
    assert regression.evaluate(rule_pack.rules[0], rule_pack, {"signal": tiny},
                               RangeWindow(GRID[10], GRID[49], STEP)) == []


def test_warmup_covers_baseline_reach():
    assert regression_semantics.warmup(pack().rules[0]) == pd.Timedelta(days=1) + pd.Timedelta("1h") + pd.Timedelta("5m")
    assert regression_semantics.warmup(pack(baseline={"preceding": True}).rules[0]) == pd.Timedelta("2h") + pd.Timedelta("5m")


def test_spec_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("""\
kind: RulePack
name: p
rules:
  - name: TwoBaselines
    type: regression
    category: high_latency
    signal: itl
    window: 1h
    ratio_above: 2
    baseline:
      offset: 1d
      preceding: true
  - name: NoRatio
    type: regression
    category: high_latency
    signal: itl
    window: 1h
    baseline: {offset: 7d}
  - name: ShareWithoutLe
    type: regression
    category: high_latency
    histogram: {metric: vllm:inter_token_latency_seconds, measure: share_above}
    window: 1h
    baseline: {offset: 7d}
    ratio_above: 2
""")
    with pytest.raises(SpecError) as error:
        load_ruleset(path)
    text = str(error.value)
    assert f"{path}:10: rules[0].baseline: give exactly one of `offset: 1d`, `preceding: true`" in text
    assert f"{path}:13: rules[1]: give exactly one of `ratio_above`" in text
    assert f"{path}:22: rules[2].histogram: `measure: share_above` needs `le`" in text


def overlapping_shift(rng):
    """ITL with noise as large as its 25% shift: the two windows' samples interleave, so moving either window by a
    single sample changes the U statistic (and the p-value) of the comparison."""
    return itl(rng, DAY + 900, factor=1.25, sd=0.0075)


def expected_comparison(values, fire_row, k, baseline_last, kb, stat):
    """Window statistics and the U test's p-value from the raw samples, without the code under test."""
    current = values[fire_row - k + 1:fire_row + 1]
    baseline = values[baseline_last - kb + 1:baseline_last + 1]
    reduce = np.mean if stat == "mean" else (lambda x: np.quantile(x, {"p50": 0.5, "p95": 0.95, "p99": 0.99}[stat]))
    p_value = scipy.stats.mannwhitneyu(current, baseline, method="asymptotic", use_continuity=True).pvalue
    return reduce(current), reduce(baseline), p_value


@pytest.mark.parametrize("stat", ["mean", "p95"])
def test_offset_baseline_compares_the_window_one_offset_earlier(stat):
    values = overlapping_shift(np.random.default_rng(21))
    (finding, *_) = run(pack(stat=stat), {"signal": frame({"a": values})})
    fire_row = GRID.get_loc(finding.start)
    current, baseline, p_value = expected_comparison(values, fire_row, 120, fire_row - DAY, 120, stat)
    details = finding.details
    assert details["current_value"] == pytest.approx(current, rel=1e-9)
    assert details["baseline_value"] == pytest.approx(baseline, rel=1e-9)
    assert details["p_value"] == pytest.approx(p_value, rel=1e-9)
    assert details["samples"] == {"current": 120, "baseline": 120}


@pytest.mark.parametrize("stat", ["mean", "p95"])
def test_preceding_baseline_is_the_baseline_window_just_before_the_current_one(stat):
    values = overlapping_shift(np.random.default_rng(22))
    rule_pack = pack(stat=stat, baseline={"preceding": True, "window": "2h"})
    (finding, *_) = run(rule_pack, {"signal": frame({"a": values})})
    fire_row = GRID.get_loc(finding.start)
    current, baseline, p_value = expected_comparison(values, fire_row, 120, fire_row - 120, 240, stat)
    details = finding.details
    assert details["current_value"] == pytest.approx(current, rel=1e-9)
    assert details["baseline_value"] == pytest.approx(baseline, rel=1e-9)
    assert details["p_value"] == pytest.approx(p_value, rel=1e-9)
    assert details["samples"] == {"current": 120, "baseline": 240}
