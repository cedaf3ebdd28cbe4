"""Unit tests of the compile stage's pure logic: names, severity levels, template rendering, SLO factors."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from rules_engine.compile import slo as slo_compile
from rules_engine.kinds import RULE_KINDS
from rules_engine.promql.burn_windows import load_windows
from rules_engine.compile.naming import output_labels, recording_name, unique_names
from rules_engine.compile.prometheus import compile_pack
from rules_engine.compile.promtool_tests import window_value
from rules_engine.promql.levels import ladder_levels, number
from rules_engine.spec.models import RulePack, SeverityLadder
from rules_engine.spec.slo import SLO


@pytest.mark.parametrize("expr, name", [
    ("sum by (instance) (rate(x_sum[5m])) / sum by (instance) (rate(x_count[5m]))", "instance:x:mean5m"),
    ("histogram_quantile(0.95, sum by (le, instance) (rate(vllm:ttft_seconds_bucket[5m])))", "instance:vllm_ttft_seconds:p95_rate5m"),
    ("histogram_quantile(0.999, sum by (le) (rate(h_bucket[1m])))", "all:h:p99_9_rate1m"),
    ("max by (instance, model_name) (vllm:gpu_cache_usage_perc)", "instance_model_name:vllm_gpu_cache_usage_perc:max"),
    ("sum by (instance) (rate(req_total{code=\"5xx\"}[5m])) / sum by (instance) (rate(req_total[5m]))", "instance:req:ratio_rate5m"),
    ("sum by (instance) (rate(q_total[5m])) > 0.05", "instance:q:gt0_05_rate5m"),
    ("up", "job_instance:up:value"),
])
def test_recording_names_follow_level_metric_operations(expr, name):
    assert recording_name(expr, ["job", "instance"]) == name


def test_colliding_names_get_a_hash_of_their_own_expression():
    a = "sum by (instance) (rate(x_total{code=\"1\"}[5m]))"
    b = "sum by (instance) (rate(x_total{code=\"2\"}[5m]))"
    names = unique_names([a, b], ["instance"])
    assert names[a] != names[b]
    assert names[a].startswith("instance:x:rate5m_") and names == unique_names([b, a], ["instance"])
    assert unique_names([a], ["instance"]) == {a: "instance:x:rate5m"}


def test_output_labels_follow_aggregations():
    assert output_labels("sum by (instance, model_name) (x)") == ["instance", "model_name"]
    assert output_labels("sum(x)") == []
    assert output_labels("x") is None
    assert output_labels("histogram_quantile(0.9, sum by (le, pod) (rate(h_bucket[5m])))") == ["pod"]
    assert output_labels("sum without (pod) (x)") is None


def test_ratio_ladder_levels_mirror_the_engine():
    ladder = SeverityLadder(by="ratio", medium=1.2, high=1.5, critical=2.0)
    assert ladder_levels("above", 5, ladder) == [("low", 5, ">"), ("medium", 6.0, ">="), ("high", 7.5, ">="), ("critical", 10.0, ">=")]
    # below: the engine compares threshold / value with the level, i.e. value <= threshold / level
    assert ladder_levels("below", 0.2, ladder) == [("low", 0.2, "<"), ("medium", pytest.approx(0.1666666667), "<="),
                                                   ("high", pytest.approx(0.1333333333), "<="), ("critical", 0.1, "<=")]
    assert ladder_levels("above", 3, "high") == [("high", 3, ">")]


def test_a_level_looser_than_the_threshold_is_clamped_to_it():
    ladder = SeverityLadder(by="value", medium=0.5, high=0.95, critical=None)
    assert ladder_levels("above", 0.9, ladder) == [("low", 0.9, ">"), ("medium", 0.9, ">"), ("high", 0.95, ">=")]


def test_numbers_have_no_float_noise():
    assert number(1.5 * 0.7) == "1.05"
    assert number(5.0) == "5"
    assert number(0.05) == "0.05"


def test_compiled_alert_reads_the_recorded_signal_and_expands_to_the_engine_query():
    pack = RulePack.model_validate({"kind": "RulePack", "name": "p", "selector": '{job="v"}', "rules": [{
        "name": "R", "category": "queue_buildup", "signal": "sum by (instance) (q)", "stat": "p95", "window": "10m",
        "above": 3, "severity": "high", "for": "5m", "keep_firing_for": "1m"}]})
    compiled = compile_pack(pack, RULE_KINDS, pd.Timedelta("15s"))
    [recording] = compiled.recordings
    assert recording.record == "instance:q:value" and recording.expr == 'sum by (instance)(q{job="v"})'
    [alert] = compiled.alerts
    assert alert.expr == 'quantile_over_time(0.95, (instance:q:value{rule_pack="p"})[10m:15s]) > 3'
    assert alert.expanded_expr == 'quantile_over_time(0.95, ((sum by (instance)(q{job="v"})))[10m:15s]) > 3'
    rule = alert.as_dict()
    assert (rule["for"], rule["keep_firing_for"]) == ("5m", "1m")
    assert rule["labels"] == {"severity": "high", "category": "queue_buildup", "rule_pack": "p"}


def test_quantile_of_a_constant_window_is_replayed_with_prometheus_arithmetic():
    value = window_value(0.97, "p99", pd.Timedelta("10m"), pd.Timedelta("30s"))
    rank = 0.99 * 20
    weight = rank - math.floor(rank)
    assert value == 0.97 * (1 - weight) + 0.97 * weight
    assert window_value(0.97, "mean", pd.Timedelta("10m"), pd.Timedelta("30s")) == 0.97


def _slo(**overrides) -> SLO:
    document = {"kind": "SLO", "name": "avail", "server": "vllm", "objective": 99.9,
                "sli": {"ratio": {"errors": 'req_total{code="5xx"}', "total": "req_total"}}}
    document.update(overrides)
    return SLO.model_validate(document)


def test_burn_factors_follow_sloth_formula_for_the_period():
    catalog = load_windows()
    factors = [slo_compile.burn_factor(pair, pd.Timedelta(days=30)) for pair in catalog.pairs]
    assert factors == [14.4, 6, 3, 1]
    assert [slo_compile.burn_factor(pair, pd.Timedelta(days=28)) for pair in catalog.pairs] == [
        13.44, 5.6, 2.8, pytest.approx(0.9333333333)]


def test_sloth_series_and_labels():
    document, notes = slo_compile.compile_slo(_slo(), load_windows(), pd.Timedelta("30s"))
    assert not notes
    sli, meta, alerts = document["groups"]
    assert sli["name"] == "sloth-slo-sli-recordings-vllm-avail"
    assert [r["record"] for r in sli["rules"]][:2] == ["slo:sli_error:ratio_rate5m", "slo:sli_error:ratio_rate30m"]
    assert sli["rules"][-1]["record"] == "slo:sli_error:ratio_rate30d"
    assert sli["rules"][0]["labels"] == {"sloth_id": "vllm-avail", "sloth_service": "vllm", "sloth_slo": "avail", "sloth_window": "5m"}
    assert {r["record"] for r in meta["rules"]} >= {"slo:objective:ratio", "slo:error_budget:ratio", "slo:time_period:days",
                                                   "slo:current_burn_rate:ratio", "slo:period_burn_rate:ratio",
                                                   "slo:period_error_budget_remaining:ratio", "sloth_slo_info"}
    assert [(a["labels"]["sloth_severity"], a["labels"]["severity"]) for a in alerts["rules"]] == [
        ("page", "critical"), ("page", "high"), ("ticket", "medium"), ("ticket", "low")]
    assert "(14.4 * 0.001)" in alerts["rules"][0]["expr"]


def test_low_objective_pairs_that_could_never_fire_are_refused():
    document, notes = slo_compile.compile_slo(_slo(objective=90), load_windows(), pd.Timedelta("30s"))
    alerts = document["groups"][2]["rules"]
    assert [a["annotations"]["burn_windows"] for a in alerts] == ["6h/30m", "1d/2h", "3d/6h"]
    assert len(notes) == 1 and "14.4" in notes[0] and "> 1" in notes[0]


def test_counter_expressions_become_rates_before_aggregation():
    assert slo_compile._rate("sum by (instance) (req_total{code=\"5xx\"})", "1h", "total") == \
        'sum by (instance)(rate(req_total{code="5xx"}[1h]))'
    assert slo_compile._rate("a_total or b_total", "5m", "total") == "rate(a_total[5m]) or  rate(b_total[5m])"


def test_event_queries_rate_cannot_take_are_refused_with_the_field():
    bad = _slo(sli={"ratio": {"errors": 'req_total{code="5xx"}', "total": "sum(rate(req_total[5m]))"}})
    with pytest.raises(slo_compile.SLOCompileError, match="sli.ratio.total must be counters"):
        slo_compile.compile_slo(bad, load_windows(), pd.Timedelta("30s"))
