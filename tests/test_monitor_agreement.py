"""Live and backtest agree: the monitor's rounds over a recorded history report the episodes one backtest of the
same range reports -- same rule, series, severity, start and end step -- per rule kind (threshold, trend,
regression, timeslice SLO).

A simulated vLLM fleet (4 instances, 6 h at 30 s) is backfilled into a real Prometheus. The rounds advance a
simulated clock one interval at a time over the last 3 h, each on the monitor's cache source (so the tail-only
fetching is checked too), against one `rules_engine.api.backtest` of [first round, last round].
"""
from __future__ import annotations

import textwrap

import pandas as pd
import pytest

from rules_engine import api
from rules_engine.kinds import RULE_KINDS
from rules_engine.monitor.cache import CachingSource
from rules_engine.monitor.rounds import Monitor, monitored
from rules_engine.simulate import FleetSpec, Incident, simulate
from rules_engine.source.prometheus import PrometheusSource
from rules_engine.spec import load_ruleset
from tests import processes
from tests.conftest import require_binary

pytestmark = pytest.mark.integration

END = 1_767_225_600  # 2026-01-01T00:00:00Z
START = END - 6 * 3600
INTERVAL = pd.Timedelta("1m")
FIRST_ROUND = pd.Timestamp(END - 3 * 3600, unit="s", tz="UTC")
LAST_ROUND = pd.Timestamp(END, unit="s", tz="UTC")
INCIDENTS = (
    Incident("kv_linear_climb", ("vllm-1:8000",), start="3h", duration=2 * 3600, magnitude=0.5),
    Incident("itl_regression", ("vllm-2:8000",), start="4h", magnitude=1.6),
    Incident("ttft_spike", ("vllm-3:8000",), start="4h30m", duration=1200, magnitude=8.0),
)
RULES = textwrap.dedent("""\
    kind: RulePack
    name: agree
    server: vllm
    selector: '{model_name!=""}'
    keep_labels: [instance, model_name]
    defaults: {for: 2m, keep_firing_for: 1m}
    rules:
      - name: KVHigh
        category: memory_pressure
        signal: max by (instance, model_name) (vllm:kv_cache_usage_perc or vllm:gpu_cache_usage_perc)
        stat: mean
        window: 5m
        above: 0.8
        severity: {by: value, high: 0.9, critical: 0.95}
      - name: KVSaturationPredicted
        type: trend
        category: memory_pressure
        signal: max by (instance, model_name) (vllm:kv_cache_usage_perc or vllm:gpu_cache_usage_perc)
        window: 20m
        horizon: 30m
        above: 0.98
        min_samples: 20
        min_r2: 0.6
        severity: {by: lead_time, critical: 0.25, high: 0.5}
      - name: ITLRegression
        type: regression
        category: high_latency
        histogram: {metric: "vllm:inter_token_latency_seconds", measure: mean, by: [instance, model_name]}
        window: 20m
        baseline: {offset: 1h}
        ratio_above: 1.2
        alpha: 0.001
        min_samples: 20
        every: 2m
        for: 4m
    ---
    kind: SLO
    name: TTFTSlices
    server: vllm
    objective: 99
    period: 7d
    selector: '{model_name!=""}'
    group_by: [instance]
    sli:
      timeslices:
        signal: histogram_quantile(0.99, sum by (le, instance) (rate(vllm:time_to_first_token_seconds_bucket[2m])))
        op: "<="
        target: 2.5
""")


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    require_binary(processes.PROMTOOL)
    require_binary(processes.PROMETHEUS)
    tmp = tmp_path_factory.mktemp("agree")
    simulate(tmp / "fleet.om", FleetSpec(start=START, end=END, instances=4, step=30, seed=11), INCIDENTS)
    processes.backfill(tmp / "fleet.om", tmp / "data")
    (tmp / "rules.yaml").write_text(RULES)
    with processes.running_prometheus(data_dir=tmp / "data") as prometheus:
        yield load_ruleset([str(tmp / "rules.yaml")]), prometheus.url


def episodes_of(findings) -> set[tuple]:
    return {(f.rule, f.kind, tuple(sorted(f.labels.items())), f.severity, f.start, f.end) for f in findings}


@pytest.fixture(scope="module")
def compared(history):
    ruleset, url = history
    names = monitored(ruleset, RULE_KINDS, everything=True)
    with PrometheusSource(url) as source:
        backtest = api.backtest(ruleset, source, FIRST_ROUND, LAST_ROUND, INTERVAL, rules=names)
        assert not backtest.failed and not [r for r in backtest.slos if r.error]
        cache = CachingSource(source)
        live = Monitor(ruleset, cache, names, INTERVAL, RULE_KINDS)
        seen: dict[tuple, object] = {}
        now = FIRST_ROUND
        while now <= LAST_ROUND:
            result = live.round(now)
            assert not result.failed, result.failed
            for episode in result.episodes:
                seen[(episode.rule, tuple(sorted(episode.labels.items())), episode.start,
                      episode.finding.details.get("alert"))] = episode
            now += INTERVAL
        rounds = int((LAST_ROUND - FIRST_ROUND) / INTERVAL) + 1
    live_episodes = {(e.rule, e.kind, tuple(sorted(e.labels.items())), e.severity, e.start, e.end)
                     for e in seen.values()}
    return backtest, live_episodes, cache, rounds


@pytest.mark.parametrize("kind", ["threshold", "trend", "regression", "slo"])
def test_rounds_report_the_backtests_episodes(compared, kind):
    backtest, live, _, _ = compared
    expected = {e for e in episodes_of(backtest.findings) if e[1] == kind}
    assert expected, f"the history must make the {kind} rule fire"
    assert {e for e in live if e[1] == kind} == expected


def test_rounds_fetch_only_the_tail(compared):
    _, _, cache, rounds = compared
    # Without the cache every round would fetch at least its whole lookback (and the SLO its 7d period) again.
    per_round = cache.fetched_points / rounds
    assert per_round < 400, per_round
