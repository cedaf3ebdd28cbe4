"""The shipped vLLM packs, SLOs and playbook verify steps on every vLLM generation (reference §9), in one fleet.

One instance per generation, backfilled into a real Prometheus. The same incidents hit every instance, so each
generation must be caught by the same rules; where a generation exposes both the old and the new name of a family
(0.9.2-0.11), the queries must count it once; every verify step must see data on every generation (a verify that
sees nothing would fail a canary and roll back a good change).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rules_engine.api import backtest
from rules_engine.playbooks.templates import render_promql
from rules_engine.simulate import FleetSpec, Incident
from rules_engine.simulate.catalog import GENERATIONS
from rules_engine.source.client import PrometheusClient
from rules_engine.source.prometheus import PrometheusSource
from rules_engine.spec import load_ruleset
from tests import processes
from tests.conftest import require_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
END = pd.Timestamp("2026-11-20T00:00:00Z")
HOURS = 4.5
INSTANCES = [f"vllm-{i}:8000" for i in range(len(GENERATIONS))]
KV_AT, SHIFT_AT = pd.Timedelta("2h10m"), pd.Timedelta("3h")
INCIDENTS = [
    Incident("kv_pressure", tuple(INSTANCES), start="2h10m", duration=900, magnitude=0.97),
    Incident("low_cache_hit", tuple(INSTANCES), start="3h", magnitude=0.2, duration=5400),
    Incident("itl_regression", tuple(INSTANCES), start="3h", magnitude=1.5),
]
# What each incident must raise, on every generation, and how soon.
EXPECTED = {"VLLMKVCacheExhausted": KV_AT, "VLLMPrefixCacheHitRateCollapse": SHIFT_AT, "VLLMITLShift": SHIFT_AT}
CLEAN = END - pd.Timedelta(hours=HOURS) + pd.Timedelta("1h50m")  # before every incident


@pytest.fixture(scope="module")
def fleet():
    require_binary(processes.PROMTOOL)
    require_binary(processes.PROMETHEUS)
    start = END - pd.Timedelta(hours=HOURS)
    spec = FleetSpec(start=start.timestamp(), end=END.timestamp(), instances=len(GENERATIONS), seed=3,
                     generations=tuple(GENERATIONS), restarts_per_day=0.0)
    with processes.simulated_prometheus(spec, INCIDENTS) as (prometheus, simulation):
        assert [i["generation"] for i in simulation.truth["instances"]] == list(GENERATIONS)
        yield prometheus, start


def instant(prometheus, expr: str, at: pd.Timestamp) -> dict[str, float]:
    with PrometheusClient(prometheus.url) as client:
        return {labels.get("instance", ""): value for labels, value in client.instant_query(expr, at.timestamp())}


def test_each_generation_is_caught_by_the_same_rules(fleet):
    prometheus, start = fleet
    ruleset = load_ruleset([ROOT / "rules" / "vllm.yaml", ROOT / "rules" / "vllm-trends.yaml",
                            ROOT / "rules" / "playbooks"])
    result = backtest(ruleset, PrometheusSource(prometheus.url), start + pd.Timedelta("30m"), END, "30s",
                      rules=list(EXPECTED))
    assert not result.failed, [(o.rule, o.error) for o in result.failed]
    for rule, onset in EXPECTED.items():
        for instance, generation in zip(INSTANCES, GENERATIONS):
            starts = [f.start for f in result.findings if f.rule == rule and f.instance == instance]
            assert starts, f"{rule} silent on {instance} ({generation})"
            delay = min(starts) - (start + onset)
            assert pd.Timedelta(0) <= delay <= pd.Timedelta("8m"), (rule, generation, delay)


def test_renamed_families_are_counted_once(fleet):
    prometheus, _ = fleet
    # Tokens after the first of each request are the ITL observations: twice that on 0.10.2-0.11 would mean
    # both names were summed.
    itl = instant(prometheus, "sum by (instance) (rate(vllm:inter_token_latency_seconds_count[10m]) "
                              "or rate(vllm:time_per_output_token_seconds_count[10m]))", CLEAN)
    tokens = instant(prometheus, "sum by (instance) (rate(vllm:generation_tokens_total[10m])) "
                                 "- sum by (instance) (rate(vllm:request_success_total[10m]))", CLEAN)
    hit_rate = instant(prometheus, """
        (sum by (instance) (rate(vllm:prefix_cache_hits_total[10m])) / sum by (instance) (rate(vllm:prefix_cache_queries_total[10m])))
        or (sum by (instance) (rate(vllm:gpu_prefix_cache_hits_total[10m]))
            / sum by (instance) (rate(vllm:gpu_prefix_cache_queries_total[10m])))""", CLEAN)
    kv = instant(prometheus, "count by (instance) (vllm:kv_cache_usage_perc or vllm:gpu_cache_usage_perc)", CLEAN)
    for instance, generation in zip(INSTANCES, GENERATIONS):
        assert itl[instance] == pytest.approx(tokens[instance], rel=0.05), generation
        assert 0.2 < hit_rate[instance] < 0.6, generation  # the models' prefix reuse (0.30-0.45), in blocks or tokens
        assert kv[instance] == 1, generation


def test_every_verify_step_sees_data_on_every_generation(fleet):
    prometheus, _ = fleet
    ruleset = load_ruleset(ROOT / "rules")
    steps = [(playbook.name, step) for playbook in ruleset.playbooks if playbook.server_kind == "vllm"
             for step in playbook.steps if step.type == "verify"]
    assert len(steps) >= 5
    with PrometheusClient(prometheus.url) as client:
        labels_of = {labels["instance"]: labels for labels, _ in
                     client.instant_query("max by (instance, model_name) (vllm:num_requests_running)",
                                          CLEAN.timestamp())}
    assert set(labels_of) == set(INSTANCES)
    for instance, generation in zip(INSTANCES, GENERATIONS):
        for playbook, step in steps:
            query = render_promql(step.query, {"labels": labels_of[instance]}, f"{playbook}.{step.name}")
            assert instant(prometheus, query, CLEAN), f"{playbook}/{step.name}: no data on {generation}"


def test_slos_judge_every_generation(fleet):
    prometheus, start = fleet
    ruleset = load_ruleset([ROOT / "rules" / "slo" / "vllm.yaml"])
    result = backtest(ruleset, PrometheusSource(prometheus.url), start + pd.Timedelta("1h"), END, "1m",
                      rules=["vllm_itl_under_200ms", "vllm_availability"])
    assert all(s.error is None for s in result.slos), [(s.slo, s.error) for s in result.slos]
    itl = {s.labels["model_name"]: s for s in result.slos if s.slo == "vllm_itl_under_200ms"}
    assert len(itl) == 3 and all(s.total > 0 for s in itl.values())
    # Errors are finished_reason="error" only (0.13+): the fleet's base error share, far below the aborts' 1%.
    availability = [s for s in result.slos if s.slo == "vllm_availability"]
    assert availability and all(1 - s.attainment < 0.003 for s in availability)
