"""The shipped TGI and SGLang packs on a simulated mixed fleet, backfilled into a real Prometheus.

Every incident kind each server can show is injected on its own instance; the backtest must report each one on
the right instance under the right category, and nothing anywhere else: quiet instances and quiet hours (diurnal
load, short spikes, random restarts and scrape gaps) stay quiet. The vLLM pack runs on the same Prometheus and
must not mistake TGI or SGLang series for its own, nor they for each other.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rules_engine.api import backtest
from rules_engine.simulate import FleetSpec, Incident
from rules_engine.source.prometheus import PrometheusSource
from rules_engine.spec import load_ruleset
from tests import processes
from tests.conftest import require_binary
from tests.test_compile_fidelity import firing_masks, widen

pytestmark = pytest.mark.integration

END = pd.Timestamp("2026-11-20T00:00:00Z")
HOURS = 12
STEP = "60s"
# How long after an incident ends its findings may last: window statistics, `for`, keep_firing_for, and an
# overloaded queue draining.
AFTERGLOW = pd.Timedelta("45m")
INCIDENTS = [
    Incident("queue_buildup", ("tgi-1:8000",), start="6h", duration=3600, magnitude=1.3),
    Incident("kv_pressure", ("tgi-2:8000",), start="8h", duration=2400),
    Incident("error_burst", ("tgi-4:8000",), start="3h", duration=1800),
    Incident("itl_regression", ("tgi-4:8000",), start="9h", magnitude=3.0),
    Incident("ttft_spike", ("tgi-5:8000",), start="5h", duration=1800, magnitude=8.0),
    Incident("kv_linear_climb", ("tgi-6:8000",), start="2h", duration=4 * 3600, magnitude=0.5, hold=1800),
    Incident("restart", ("tgi-0:8000",), start="7h", duration=120),
    Incident("queue_buildup", ("sglang-1:8000",), start="3h", duration=2700, magnitude=1.15),
    Incident("kv_pressure", ("sglang-2:8000",), start="5h", duration=2400),
    Incident("low_cache_hit", ("sglang-3:8000",), start="2h", duration=3 * 3600, magnitude=0.1),
    Incident("error_burst", ("sglang-4:8000",), start="4h", duration=1800),
    Incident("itl_regression", ("sglang-4:8000",), start="8h", magnitude=3.0),
    Incident("ttft_spike", ("sglang-5:8000",), start="9h", duration=1800, magnitude=8.0),
    Incident("kv_linear_climb", ("sglang-6:8000",), start="3h", duration=4 * 3600, magnitude=0.5, hold=1800),
    Incident("restart", ("sglang-0:8000",), start="7h", duration=120),
]
QUIET = {"tgi-0:8000", "tgi-3:8000", "sglang-0:8000", "vllm-0:8000"}


@pytest.fixture(scope="module")
def fleet():
    require_binary(processes.PROMTOOL)
    require_binary(processes.PROMETHEUS)
    spec = FleetSpec(start=(END - pd.Timedelta(hours=HOURS)).timestamp(), end=END.timestamp(), instances=1,
                     tgi_instances=7, sglang_instances=7, step=60, seed=5)
    with processes.simulated_prometheus(spec, INCIDENTS) as (prometheus, simulation):
        yield prometheus, simulation.truth


def run(prometheus, path):
    result = backtest(load_ruleset(path), PrometheusSource(prometheus.url), END - pd.Timedelta(hours=HOURS - 1), END,
                      STEP)
    assert not result.failed, [(o.rule, o.error) for o in result.failed]
    return result


@pytest.mark.parametrize("server", ["tgi", "sglang"])
def test_every_incident_is_found_and_quiet_periods_stay_quiet(fleet, server):
    prometheus, truth = fleet
    findings = run(prometheus, f"rules/{server}.yaml").findings
    incidents = [i for i in truth["incidents"] if i["server"] == server]

    for incident in (i for i in incidents if i["kind"] != "restart"):
        begin = pd.Timestamp(incident["start"])
        finish = pd.Timestamp(incident["end"]) if incident["end"] else END
        assert any(f.category == incident["category"] and f.labels.get("instance") == incident["instance"]
                   and f.start < finish + pd.Timedelta("20m") and (f.end is None or f.end > begin)
                   for f in findings), incident

    windows = {}
    for incident in incidents:
        end = pd.Timestamp(incident["end"]) if incident["end"] else END
        windows.setdefault(incident["instance"], []).append((pd.Timestamp(incident["start"]), end + AFTERGLOW))
    false_alarms = [f for f in findings if not any(f.start < stop and (f.end is None or f.end > begin)
                                                   for begin, stop in windows.get(f.labels["instance"], []))]
    assert not false_alarms, [(f.rule, f.labels, f.start, f.end) for f in false_alarms]
    assert {f.labels["instance"] for f in findings} <= {i["instance"] for i in incidents if i["kind"] != "restart"}
    assert not QUIET & {f.labels["instance"] for f in findings}
    if server == "tgi":  # TGI series have no model label: findings name the deployment by job
        assert all(set(f.labels) == {"instance", "job"} and f.labels["job"] == "tgi" for f in findings)


def test_packs_keep_to_their_own_servers(fleet):
    prometheus, _ = fleet
    for server in ("vllm", "tgi", "sglang"):
        result = run(prometheus, f"rules/{server}.yaml")
        assert all(f.labels["instance"].startswith(server + "-") for f in result.findings), server


def test_sglang_rank_duplicates_are_not_summed(fleet):
    """sglang-2 and sglang-5 serve the 70B model with two pipeline ranks: every scheduler gauge comes twice, and the
    pack's aggregation counts the queue once."""
    prometheus, _ = fleet
    at = (END - pd.Timedelta(hours=HOURS - 5, minutes=-30)).timestamp()  # sglang-2 during its kv_pressure
    ranks = prometheus.query('count by (instance) (sglang:num_queue_reqs{instance=~"sglang-[25]:8000"})', time=at)
    assert {r["metric"]["instance"]: float(r["value"][1]) for r in ranks} == {"sglang-2:8000": 2, "sglang-5:8000": 2}
    pack = load_ruleset("rules/sglang.yaml").packs[0]
    signal = next(r for r in pack.rules if r.name == "SGLangQueueBuildup").signal
    ours = prometheus.query(f'{signal}', time=at)
    naive = prometheus.query('sum by (instance) (sglang:num_queue_reqs{instance="sglang-2:8000"})', time=at)
    rank0 = prometheus.query('sglang:num_queue_reqs{instance="sglang-2:8000", pp_rank="0"}', time=at)
    value = {r["metric"]["instance"]: float(r["value"][1]) for r in ours}["sglang-2:8000"]
    assert value == float(rank0[0]["value"][1]) > 0
    assert float(naive[0]["value"][1]) == 2 * value


def test_slos_evaluate_on_the_servers_real_buckets(fleet):
    """The latency SLO thresholds are real bucket boundaries of the simulated servers (the evaluator refuses any
    other), and every SLO computes an attainment."""
    prometheus, _ = fleet
    for server in ("tgi", "sglang"):
        result = run(prometheus, f"rules/slo/{server}.yaml")
        assert result.slos and not [(s.slo, s.error) for s in result.slos if s.error]
        assert all(s.total > 0 and 0 < s.attainment <= 1 for s in result.slos), server


@pytest.mark.parametrize("server", ["tgi", "sglang"])
def test_compiled_alerts_in_prometheus_find_what_the_engine_finds(fleet, server):
    """`--engine promql` range-queries the generated alert expressions: the live path in Prometheus must fire
    where the backtest does, for TGI's odd boundaries and SGLang's rank aggregation alike. Threshold rules fire on
    the same intervals; level-shift and trend rules, whose engine adds a significance test (Mann-Whitney U, R²)
    PromQL cannot run, fire only inside (within a step) where their compiled alert does."""
    prometheus, _ = fleet
    ruleset = load_ruleset(f"rules/{server}.yaml")
    filtered = {rule.name for _, rule in ruleset.rules()
                if rule.type == "regression" or (rule.type == "trend" and rule.min_r2 > 0)}
    results = {}
    for engine in ("pandas", "promql"):
        result = backtest(ruleset, PrometheusSource(prometheus.url), END - pd.Timedelta(hours=HOURS - 1), END, STEP,
                          engine=engine)
        assert not result.failed, [(o.rule, o.error) for o in result.failed]
        results[engine] = result
    found = {engine: {(f.rule, f.labels["instance"], f.start, f.end) for f in result.findings
                      if f.rule not in filtered} for engine, result in results.items()}
    assert found["pandas"] and found["pandas"] == found["promql"]

    grid = pd.date_range(END - pd.Timedelta(hours=HOURS + 1), END, freq=STEP, tz="UTC")
    engine_masks = {key: mask for key, mask in firing_masks(results["pandas"].findings, grid, END).items()
                    if key[0] in filtered}
    compiled_masks = firing_masks(results["promql"].findings, grid, END)
    assert engine_masks, "no level-shift or trend finding to compare"
    for key, mask in engine_masks.items():
        assert not (mask & ~widen(compiled_masks.get(key, np.zeros(len(grid), dtype=bool)))).any(), key
