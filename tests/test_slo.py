"""SLOs on frames built directly: the window catalog, counter increases, attainment, burn rates and burn alerts."""
import json

import numpy as np
import pandas as pd
import pytest

from rules_engine.evaluate import slo as slo_eval
from rules_engine.promql.burn_windows import DEFAULT_WINDOWS, load_windows, slo_catalog
from rules_engine.promql.slo import slo_queries
from rules_engine.evaluate.series import RangeWindow
from rules_engine.source.frame import RangeFrame
from rules_engine.spec import SpecError, load_ruleset, parse_duration
from rules_engine.spec.models import format_duration
from rules_engine.spec.slo import SLO

STEP = pd.Timedelta("1m")
DAYS = 33
GRID = pd.date_range("2026-01-01", periods=DAYS * 1440, freq=STEP, tz="UTC")
ROWS = len(GRID)
WINDOW = RangeWindow(GRID[-2 * 1440], GRID[-1], STEP)  # the last two days are the backtest range


def make_slo(**fields) -> SLO:
    base = {"kind": "SLO", "name": "availability", "objective": 99.5, "group_by": ["instance"],
            "sli": {"ratio": {"errors": "err_total", "total": "req_total"}}}
    return SLO.model_validate({**base, **fields})


def counters(increments: np.ndarray, restart_rows=()) -> np.ndarray:
    values = np.cumsum(increments, axis=0)
    for row in restart_rows:  # a process restart: the counter starts over from this row's increment
        values[row:] -= values[row - 1]
    return values


def frame(values: np.ndarray, instances: list[str], extra: dict | None = None) -> RangeFrame:
    labels = pd.DataFrame({"instance": instances, **(extra or {})})
    return RangeFrame("q", pd.DataFrame(values, index=GRID), labels)


def traffic(rng, rate_per_minute=600.0, error_share=0.001, columns=2):
    requests = rng.poisson(rate_per_minute, (ROWS, columns)).astype(float)
    errors = rng.binomial(requests.astype(np.int64), error_share).astype(float)
    return requests, errors


def independent(requests: np.ndarray, errors: np.ndarray, column: int, minutes: int, end_row: int = ROWS - 1):
    """Error ratio over the `minutes` ending at end_row, straight from the generated per-minute counts."""
    chosen = slice(end_row - minutes + 1, end_row + 1)
    return errors[chosen, column].sum() / requests[chosen, column].sum()


def test_catalog_factors_follow_the_period():
    catalog = load_windows()
    assert [(p.alert, p.speed, format(p.long), format(p.short)) for p in catalog.pairs] == [
        ("page", "quick", "0 days 01:00:00", "0 days 00:05:00"), ("page", "slow", "0 days 06:00:00", "0 days 00:30:00"),
        ("ticket", "quick", "1 days 00:00:00", "0 days 02:00:00"), ("ticket", "slow", "3 days 00:00:00", "0 days 06:00:00")]
    assert [p.factor(pd.Timedelta(days=30)) for p in catalog.pairs] == pytest.approx([14.4, 6, 3, 1])
    assert [format(w) for w in catalog.burn_windows][0] == "0 days 00:05:00" and len(catalog.burn_windows) == 7


@pytest.mark.parametrize("period, factors", [("7d", [13.44, 3.5, 1.4, 1.003]), ("28d", [13.44, 5.6, 2.8, 1.027]),
                                             ("30d", [14.4, 6, 3, 1])])
def test_each_shipped_period_has_a_catalog_whose_every_alert_means_exhausting_the_budget(period, factors):
    catalog = slo_catalog(make_slo(period=period))
    assert catalog.period == parse_duration(period)
    assert [p.factor(catalog.period) for p in catalog.pairs] == pytest.approx(factors, abs=1e-3)
    assert min(p.factor(catalog.period) for p in catalog.pairs) >= 1


def test_a_week_slo_within_budget_raises_no_ticket():
    """4% of the week's slices bad, spread evenly: a burn of 0.8, within the 5% budget and not on track to spend
    it. The 30d shares rescaled to 7d (tickets at 0.7 and 0.233) fired both tickets on it."""
    throughput = np.full((ROWS, 1), 120.0)
    throughput[::25] = 20.0
    slo = make_slo(objective=95, period="7d", group_by=[], sli={"timeslices": {"signal": "tps", "op": ">=", "target": 50}})
    (result,) = slo_eval.evaluate_slo(slo, {"signal": frame(throughput, ["a"])}, WINDOW)
    assert result.compliant and result.budget_remaining > 0
    assert [f.details["alert"] for f in result.findings] == []


def test_a_period_without_a_catalog_is_refused_at_its_line(tmp_path):
    (tmp_path / "slo.yaml").write_text("kind: SLO\nname: fortnight\nobjective: 99\nperiod: 14d\n"
                                       "sli: {ratio: {errors: err_total, total: req_total}}\n")
    with pytest.raises(SpecError) as refused:
        load_ruleset(tmp_path)
    [problem] = refused.value.problems
    assert str(problem).startswith(f"{tmp_path / 'slo.yaml'}:4: period: no shipped burn-window catalog for a 2w period")
    assert "shipped: 7d, 28d, 30d" in str(problem) and "alerting.windows" in str(problem)


def test_a_catalog_for_another_period_is_refused_not_rescaled(tmp_path):
    (tmp_path / "30d.yaml").write_text(DEFAULT_WINDOWS.read_text())
    slo = make_slo(period="14d", alerting={"windows": str(tmp_path / "30d.yaml")})
    with pytest.raises(ValueError, match="the catalog is for sloPeriod 30d, the SLO's period is 2w"):
        slo_catalog(slo)
    (tmp_path / "14d.yaml").write_text(DEFAULT_WINDOWS.read_text().replace("sloPeriod: 30d", "sloPeriod: 14d"))
    assert slo_catalog(make_slo(period="14d", alerting={"windows": str(tmp_path / "14d.yaml")})).period == parse_duration("14d")


def test_bad_catalog_names_file_and_field(tmp_path):
    path = tmp_path / "windows.yaml"
    path.write_text("kind: AlertWindows\nspec:\n  sloPeriod: 30d\n  burnWindows: [5m]\n  page:\n"
                    "    quick: {errorBudgetPercent: 2, shortWindow: 5m, longWindow: 1h, severity: critical}\n"
                    "    slow: {errorBudgetPercent: 5, shortWindow: 30m, longWindow: soon, severity: high}\n"
                    "  ticket:\n"
                    "    quick: {errorBudgetPercent: 10, shortWindow: 2h, longWindow: 1d, severity: medium}\n"
                    "    slow: {errorBudgetPercent: 10, shortWindow: 6h, longWindow: 3d, severity: low}\n")
    with pytest.raises(ValueError, match=rf"{path}: invalid alert window catalog: spec.page.slow.longWindow"):
        load_windows(path)


def test_counter_increases_handle_resets_and_gaps():
    values = np.array([[10.0], [12.0], [np.nan], [np.nan], [15.0], [3.0], [4.0]])
    assert slo_eval.counter_increases(values)[:, 0].tolist() == [0.0, 2.0, 0.0, 0.0, 3.0, 3.0, 1.0]


def test_attainment_and_burn_rates_equal_independent_counts():
    rng = np.random.default_rng(1)
    requests, errors = traffic(rng)
    errors[-400:-100, 0] += rng.binomial(requests[-400:-100, 0].astype(np.int64), 0.05)  # an incident on "a"
    good = requests - errors
    frames = {"errors": frame(counters(errors, restart_rows=[ROWS // 2]), ["a", "b"]),
              "total": frame(counters(requests, restart_rows=[ROWS // 2]), ["a", "b"])}
    results = slo_eval.evaluate_slo(make_slo(), frames, WINDOW)
    assert [r.labels for r in results] == [{"instance": "a"}, {"instance": "b"}]
    for column, result in enumerate(results):
        period_minutes = 30 * 1440
        expected = 1 - independent(requests, errors, column, period_minutes)
        assert result.attainment == pytest.approx(expected, rel=1e-12)
        assert result.good == pytest.approx(good[-period_minutes:, column].sum())
        assert result.budget_remaining == pytest.approx(1 - (1 - expected) / 0.005)
        assert result.budget_remaining_time == pd.Timedelta(seconds=result.budget_remaining * 0.005 * 30 * 86400)
        for window, minutes in (("5m", 5), ("1h", 60), ("6h", 360), ("1d", 1440), ("3d", 4320)):
            assert result.burn_rates[window] == pytest.approx(independent(requests, errors, column, minutes) / 0.005)
        assert result.coverage == 1.0 and result.compliant is True and result.warnings == []
    incident = results[0].findings
    assert {(f.details["alert"], f.details["speed"]) for f in incident} == {("page", "slow")}
    (page,) = incident
    assert page.kind == "slo" and page.category == "slo_burn" and page.severity == "high" and page.threshold == 6.0
    assert GRID[-400] < page.start < GRID[-100] and page.labels == {"instance": "a"}
    assert results[1].findings == []
    assert results[0].worst_burn["window"] == "1h" and results[0].worst_burn["value"] > 6


def test_fast_burn_pages_but_low_traffic_does_not():
    rng = np.random.default_rng(2)
    requests, errors = traffic(rng, columns=1)
    quiet, quiet_errors = traffic(rng, rate_per_minute=1.0, columns=1)  # 1 request a minute: below 0.05/s
    burst = slice(ROWS - 200, ROWS - 120)
    errors[burst] = requests[burst] * 0.2  # 40x the budget
    quiet_errors[burst] = quiet[burst]  # every request fails
    frames = {"errors": frame(counters(np.hstack([errors, quiet_errors])), ["busy", "quiet"]),
              "total": frame(counters(np.hstack([requests, quiet])), ["busy", "quiet"])}
    busy, quiet_result = slo_eval.evaluate_slo(make_slo(), frames, WINDOW)
    assert {(f.details["alert"], f.details["speed"]) for f in busy.findings} >= {("page", "quick"), ("page", "slow")}
    page = next(f for f in busy.findings if f.details["speed"] == "quick" and f.details["alert"] == "page")
    assert page.severity == "critical" and page.value == pytest.approx(40, rel=0.05)
    assert quiet_result.findings == [] and quiet_result.burn_rates["1h"] is not None
    unguarded = make_slo(alerting={"min_event_rate": 0})
    assert slo_eval.evaluate_slo(unguarded, frames, WINDOW)[1].findings


def test_good_events_and_grouping_sum_series():
    rng = np.random.default_rng(3)
    requests, errors = traffic(rng, columns=3)
    slo = make_slo(group_by=["model_name"], sli={"ratio": {"good": "good_total", "total": "req_total"}})
    models = {"model_name": ["m1", "m1", "m2"]}
    frames = {"good": frame(counters(requests - errors), ["a", "b", "c"], models),
              "total": frame(counters(requests), ["a", "b", "c"], models)}
    m1, m2 = slo_eval.evaluate_slo(slo, frames, WINDOW)
    assert m1.labels == {"model_name": "m1"}
    minutes = 30 * 1440
    expected = errors[-minutes:, :2].sum() / requests[-minutes:, :2].sum()
    assert m1.attainment == pytest.approx(1 - expected)


def test_timeslices_count_slices_and_report_deviation():
    rng = np.random.default_rng(4)
    p99 = rng.uniform(0.2, 0.4, (ROWS, 1))
    bad_slices = rng.choice(ROWS // 5, 150, replace=False)
    for index in bad_slices:  # whole 5-minute slices over the target
        p99[index * 5:(index + 1) * 5] = 0.9
    slo = make_slo(objective=99.5, group_by=[], sli={"timeslices": {"signal": "p99", "op": "<=", "target": 0.5,
                                                                    "slice": "5m"}})
    (result,) = slo_eval.evaluate_slo(slo, {"signal": frame(p99, ["a"])}, WINDOW)
    slices_in_period = 30 * 1440 // 5
    # Slices end on multiples of 5 minutes; the grid starts at midnight so slice k covers rows 5k-4 .. 5k.
    slice_values = pd.Series(p99[:, 0], index=GRID).groupby(GRID.ceil("5min")).last()
    in_period = slice_values[slice_values.index > GRID[-1] - pd.Timedelta(days=30)]
    in_period = in_period[in_period.index <= GRID[-1]]
    assert result.total == len(in_period) == slices_in_period
    assert result.attainment == pytest.approx((in_period <= 0.5).mean())
    assert result.op == "<=" and result.target == 0.5
    ordered = np.sort(in_period.to_numpy())
    assert result.value_at_objective == ordered[int(np.ceil(len(ordered) * 0.995)) - 1]
    assert (result.value_at_objective <= 0.5) == result.compliant
    assert result.deviation_percent == pytest.approx((result.value_at_objective - 0.5) / 0.5 * 100)
    assert result.compliant == bool((in_period <= 0.5).mean() >= 0.995)


def test_throughput_target_with_greater_or_equal():
    throughput = np.full((ROWS, 1), 120.0)
    throughput[-400:] = 20.0  # the last 400 minutes far under target: 4% of the week, within the 5% budget
    slo = make_slo(objective=95, period="7d", group_by=[],
                   sli={"timeslices": {"signal": "tps", "op": ">=", "target": 50}})
    (result,) = slo_eval.evaluate_slo(slo, {"signal": frame(throughput, ["a"])}, WINDOW)
    assert result.attainment == pytest.approx(1 - 400 / (7 * 1440)) and result.compliant
    assert result.current_value == 20.0
    assert result.value_at_objective == 120.0 and result.deviation_percent == pytest.approx(140.0)  # 95% still met
    many_bad = throughput.copy()
    many_bad[-1000:] = 20.0  # 1000 of 10080 minutes: 9.9% bad, over the 5% budget
    (failing,) = slo_eval.evaluate_slo(slo, {"signal": frame(many_bad, ["a"])}, WINDOW)
    assert failing.compliant is False and failing.value_at_objective == 20.0 and failing.deviation_percent == -60.0
    assert any(f.details["alert"] == "page" for f in result.findings)


def test_short_history_is_said_and_low_objective_warned(tmp_path):
    rng = np.random.default_rng(5)
    requests, errors = traffic(rng, columns=1)
    frames = {"errors": frame(counters(errors), ["a"]), "total": frame(counters(requests), ["a"])}
    (tmp_path / "60d.yaml").write_text(DEFAULT_WINDOWS.read_text().replace("sloPeriod: 30d", "sloPeriod: 60d"))
    slo = make_slo(period="60d", objective=90, alerting={"windows": str(tmp_path / "60d.yaml")})
    (result,) = slo_eval.evaluate_slo(slo, frames, WINDOW)
    assert result.coverage == pytest.approx((ROWS - 1) / (60 * 1440))
    assert any("attainment covers 55%" in w for w in result.warnings)
    assert any("page quick alert can never fire" in w for w in result.warnings)


def test_to_dict_is_plain_json():
    rng = np.random.default_rng(6)
    requests, errors = traffic(rng, columns=1)
    frames = {"errors": frame(counters(errors), ["a"]), "total": frame(counters(requests), ["a"])}
    (result,) = slo_eval.evaluate_slo(make_slo(), frames, WINDOW)
    exported = json.loads(json.dumps(result.to_dict()))
    assert exported["slo"] == "availability" and exported["period"] == "30d" and exported["labels"] == {"instance": "a"}
    assert set(exported["burn_rates"]) == {"5m", "30m", "1h", "2h", "6h", "1d", "3d"}
    assert exported["budget_remaining_seconds"] == pytest.approx(result.budget_remaining_time.total_seconds())


def test_latency_queries_match_the_bucket_however_spelled():
    slo = make_slo(selector='{job="vllm"}', sli={"latency": {"histogram": "vllm:time_to_first_token_seconds",
                                                             "threshold": 1}})
    assert slo_queries(slo) == {
        "good": 'vllm:time_to_first_token_seconds_bucket{job="vllm", le=~"1([.]0+)?"}',
        "total": 'vllm:time_to_first_token_seconds_count{job="vllm"}'}


def test_latency_threshold_without_bucket_series_is_refused():
    rng = np.random.default_rng(7)
    requests, _ = traffic(rng, columns=1)
    slo = make_slo(sli={"latency": {"histogram": "vllm:time_to_first_token_seconds", "threshold": 0.3}})
    empty = RangeFrame("good", pd.DataFrame(index=GRID, columns=pd.RangeIndex(0), dtype=float), pd.DataFrame())
    (result,) = slo_eval.evaluate_slo(slo, {"good": empty, "total": frame(counters(requests), ["a"])}, WINDOW)
    assert result.error == ("latency threshold 0.3 is not a bucket boundary of vllm:time_to_first_token_seconds: "
                            "no vllm:time_to_first_token_seconds_bucket series has that `le`")


def test_no_series_is_an_error_not_a_perfect_score():
    empty = RangeFrame("q", pd.DataFrame(index=GRID, columns=pd.RangeIndex(0), dtype=float), pd.DataFrame())
    (result,) = slo_eval.evaluate_slo(make_slo(group_by=[]), {"errors": empty, "total": empty}, WINDOW)
    assert result.error == "no series: the SLI's queries returned nothing over the range"


def test_spec_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "slo.yaml"
    path.write_text("""\
kind: SLO
name: two_slis
objective: 99.9
sli:
  ratio: {errors: err_total, total: req_total}
  latency: {histogram: ttft, threshold: 1}
---
kind: SLO
name: bad_objective
objective: 100
sli:
  latency: {histogram: vllm:time_to_first_token_seconds_bucket, threshold: 1}
""")
    with pytest.raises(SpecError) as error:
        load_ruleset(path)
    text = str(error.value)
    assert f"{path}:4: sli: an SLI is exactly one of `ratio`, `latency` or `timeslices`" in text
    assert f"{path}:10: objective: Input should be less than 100" in text
    assert f"{path}:12: sli.latency.histogram: give the histogram's base name without '_bucket'" in text


def test_shipped_slos_load():
    ruleset = load_ruleset(["rules/slo"])
    assert {s.sli.type for s in ruleset.slos} == {"ratio", "latency", "timeslices"}


def test_every_catalog_window_reports_a_burn_rate_equal_to_independent_counts():
    rng = np.random.default_rng(31)
    requests, errors = traffic(rng, columns=1)
    errors[-500:-200, 0] += rng.binomial(requests[-500:-200, 0].astype(np.int64), 0.02)
    frames = {"errors": frame(counters(errors), ["a"]), "total": frame(counters(requests), ["a"])}
    (result,) = slo_eval.evaluate_slo(make_slo(), frames, WINDOW)
    minutes = {"5m": 5, "30m": 30, "1h": 60, "2h": 120, "6h": 360, "1d": 1440, "3d": 4320}
    assert set(result.burn_rates) == set(minutes)
    for window, length in minutes.items():
        assert result.burn_rates[window] == pytest.approx(independent(requests, errors, 0, length) / 0.005, rel=1e-9)


def test_alert_windows_are_computed_even_when_not_reported(tmp_path):
    """A catalog reporting only 1d still judges every pair on its own short and long windows."""
    path = tmp_path / "30d.yaml"
    path.write_text(DEFAULT_WINDOWS.read_text().replace("burnWindows: [5m, 30m, 1h, 2h, 6h, 1d, 3d]",
                                                        "burnWindows: [1d]"))
    catalog = load_windows(path)
    assert [format_duration(w) for w in catalog.windows] == ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
    rng = np.random.default_rng(32)
    requests, errors = traffic(rng, columns=1)
    burst = slice(ROWS - 200, ROWS - 120)
    errors[burst] = requests[burst] * 0.2  # 40x the budget for 80 minutes: both pages
    frames = {"errors": frame(counters(errors), ["a"]), "total": frame(counters(requests), ["a"])}
    (result,) = slo_eval.evaluate_slo(make_slo(alerting={"windows": str(path)}), frames, WINDOW)
    assert list(result.burn_rates) == ["1d"]
    assert {(f.details["alert"], f.details["speed"]) for f in result.findings} >= {("page", "quick"), ("page", "slow")}
    assert result.warnings == []
