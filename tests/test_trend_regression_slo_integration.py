"""Trend, regression and SLO evaluation on simulated vLLM history backfilled into a real Prometheus.

One simulated fleet (4 instances × 2 days at 30 s; day 1 is the clean baseline) with three incidents:
- a KV-cache linear climb to saturation on vllm-1: the shipped trend rule must warn before saturation and
  predict the crossing of its limit within 15% of the lead time;
- a 25% mean ITL regression from a deploy on vllm-2: the shipped regression rule must flag it with an onset near
  the deploy, and no other instance;
- an abort burst on vllm-3: SLO attainment and burn rates must equal those counted straight from the simulator's
  per-scrape increments (within 1%; they agree to float precision), and the burst must page; a TTFT latency
  SLO's attainment must equal the generator's own bucket counts, and a threshold between buckets is refused;
- the rolling fit must equal Prometheus' own predict_linear/deriv.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rules_engine.api import backtest as run_backtest
from rules_engine.evaluate.health import health_scores
from rules_engine.evaluate.slo import evaluate_slos
from rules_engine.simulate import FleetSpec, Incident, catalog, simulate
from rules_engine.simulate.fleet import histogram_counts
from rules_engine.simulate.timeparse import parse_time
from rules_engine.source.prometheus import PrometheusSource
from rules_engine.spec import load_ruleset
from rules_engine.spec.slo import SLO
from tests import processes
from tests.conftest import require_binary

pytestmark = pytest.mark.integration

END = 1_767_225_600  # 2026-01-01T00:00:00Z
START = END - 48 * 3600
STEP = pd.Timedelta("30s")
INCIDENTS = (
    Incident("itl_regression", ("vllm-2:8000",), start="36h", magnitude=1.25),
    Incident("kv_linear_climb", ("vllm-1:8000",), start="38h", duration=4 * 3600, magnitude=0.45),
    Incident("client_aborts", ("vllm-3:8000",), start="40h", duration=40 * 60, magnitude=0.3),
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    require_binary(processes.PROMTOOL)
    require_binary(processes.PROMETHEUS)
    tmp = tmp_path_factory.mktemp("fleet")
    simulation = simulate(tmp / "fleet.om", FleetSpec(start=START, end=END, instances=4, step=30, seed=5), INCIDENTS)
    processes.backfill(tmp / "fleet.om", tmp / "data")
    (tmp / "fleet.om").unlink()  # ~360 MB of text; the TSDB blocks are what the tests read
    with processes.running_prometheus(data_dir=tmp / "data") as prometheus:
        yield simulation, PrometheusSource(prometheus.url)


def incident(simulation, kind):
    return next(record for record in simulation.truth["incidents"] if record["kind"] == kind)


def at(seconds: float) -> pd.Timestamp:
    return pd.Timestamp(seconds, unit="s", tz="UTC")


@pytest.fixture(scope="module")
def backtest(fleet):
    simulation, source = fleet
    ruleset = load_ruleset(["rules/vllm-trends.yaml"])
    return run_backtest(ruleset, source, at(START + 26 * 3600), at(END), STEP,
                        rules=["VLLMKVCacheSaturationPredicted", "VLLMITLRegression"])


def test_linear_climb_warned_before_saturation_with_accurate_predicted_time(fleet, backtest):
    simulation, _ = fleet
    assert not backtest.failed
    climb = incident(simulation, "kv_linear_climb")
    trend = [f for f in backtest.findings if f.rule == "VLLMKVCacheSaturationPredicted"]
    assert [f.labels["instance"] for f in trend] == ["vllm-1:8000"]
    (finding,) = trend
    start, saturation = parse_time(climb["start"]), parse_time(climb["saturation_at"])
    # The rule's limit is 0.98: the linear climb from the magnitude to 1.0 reaches it here.
    true_crossing = at(start + (saturation - start) * (0.98 - climb["magnitude"]) / (1.0 - climb["magnitude"]))
    assert finding.start < true_crossing < at(saturation)
    lead = true_crossing - finding.start
    predicted = pd.Timestamp(finding.details["predicted_crossing"])
    assert abs(predicted - true_crossing) <= 0.15 * lead, (predicted, true_crossing, lead)
    assert finding.kind == "trend" and finding.category == "memory_pressure"


def test_itl_regression_flagged_with_onset_and_only_on_the_deployed_instance(fleet, backtest):
    simulation, _ = fleet
    deploy = at(parse_time(incident(simulation, "itl_regression")["start"]))
    regressions = [f for f in backtest.findings if f.rule == "VLLMITLRegression"]
    assert [f.labels["instance"] for f in regressions] == ["vllm-2:8000"]
    (finding,) = regressions
    assert deploy < finding.start <= deploy + pd.Timedelta("90m")
    assert abs(pd.Timestamp(finding.details["onset"]) - deploy) <= pd.Timedelta("10m")
    assert finding.details["measure"] == "mean" and finding.details["p_value"] < 0.001
    assert 0.15 < finding.details["relative_change"] < 0.35 and finding.details["effect_size"] > 0.5


def test_rolling_fit_agrees_with_predict_linear_and_deriv(fleet):
    _, source = fleet
    from rules_engine.evaluate.trend import rolling_fit

    signal = "max by (instance) (vllm:kv_cache_usage_perc)"
    start, end = at(START + 37 * 3600), at(START + 41 * 3600)
    fetched = source.query_range(signal, start - pd.Timedelta("30m"), end, STEP)
    fit = rolling_fit(fetched.values.to_numpy(), 61)  # [30m:30s] holds 61 evaluations, both ends included
    ours = pd.DataFrame(fit["fitted"] + fit["slope"] / 30.0 * 3600, index=fetched.values.index)
    slope = pd.DataFrame(fit["slope"] / 30.0, index=fetched.values.index)
    for query, mine in ((f"predict_linear(({signal})[30m:30s], 3600)", ours), (f"deriv(({signal})[30m:30s])", slope)):
        theirs = source.query_range(query, start, end, STEP)
        order = [int(np.flatnonzero(fetched.labels["instance"] == name)[0]) for name in theirs.labels["instance"]]
        expected = theirs.values.to_numpy()
        got = mine.loc[theirs.values.index].to_numpy()[:, order]
        both = ~np.isnan(expected)
        assert both.sum() > 0.9 * expected.size
        np.testing.assert_allclose(got[both], expected[both], rtol=1e-6, atol=1e-9)


AVAILABILITY = SLO.model_validate({
    "kind": "SLO", "name": "availability", "objective": 99.5, "group_by": ["instance"],
    "sli": {"ratio": {"errors": 'vllm:request_success_total{finished_reason="abort"}',
                      # as the shipped SLO: reasons summed within an instance, where resets happen together
                      "total": "sum by (instance, model_name) (vllm:request_success_total)"}}})


def seen(series, increments: np.ndarray, low: float, high: float) -> float:
    """The sum of per-step increments that became visible in (low, high]: each step's increments show at the next
    successful scrape, which is when Prometheus sees them."""
    steps = np.arange(len(series.times))
    next_present = np.minimum.accumulate(np.where(series.present, steps, len(steps))[::-1])[::-1]
    seen_at = np.append(series.times, np.inf)[next_present]
    return float(increments[(seen_at > low) & (seen_at <= high)].sum())


def counted(series, low: float, high: float) -> tuple[float, float]:
    """(aborted, finished) requests in (low, high] from the simulator's increments."""
    finished = sum(series.increments[k] for k in ("success_stop", "success_length", "success_abort", "success_error"))
    return seen(series, series.increments["success_abort"], low, high), seen(series, finished, low, high)


def test_slo_attainment_and_burn_rates_equal_independent_counts(fleet):
    simulation, source = fleet
    burst = incident(simulation, "client_aborts")
    end = at(parse_time(burst["start"]) + 1800)  # half an hour into the burst
    results = evaluate_slos([AVAILABILITY], source, end - pd.Timedelta("6h"), end, STEP)
    by_instance = {r.labels["instance"]: r for r in results}
    assert set(by_instance) == {s.instance.name for s in simulation.series}
    windows = {"5m": 300, "30m": 1800, "1h": 3600, "2h": 7200, "6h": 21600, "1d": 86400}
    for series in simulation.series:
        result = by_instance[series.instance.name]
        first_scrape = series.times[series.present][0]
        aborted, finished = counted(series, first_scrape, end.timestamp())
        assert result.attainment == pytest.approx(1 - aborted / finished, rel=0.01)
        assert result.total == pytest.approx(finished, rel=0.01)
        for window, seconds in windows.items():
            aborted, finished = counted(series, end.timestamp() - seconds, end.timestamp())
            assert result.burn_rates[window] == pytest.approx(aborted / finished / 0.005, rel=0.01), window
    paged = [f for f in by_instance["vllm-3:8000"].findings if f.details["alert"] == "page"]
    assert paged and paged[0].severity == "critical" and paged[0].start >= at(parse_time(burst["start"]))
    assert not any(f.details["alert"] == "page" for name, r in by_instance.items() if name != "vllm-3:8000"
                   for f in r.findings)


def test_latency_threshold_must_be_a_bucket_boundary(fleet):
    _, source = fleet
    def latency(threshold):
        slo = SLO.model_validate({"kind": "SLO", "name": "ttft", "objective": 99, "group_by": ["instance"],
                                  "sli": {"latency": {"histogram": "vllm:time_to_first_token_seconds",
                                                      "threshold": threshold}}})
        return evaluate_slos([slo], source, at(END - 6 * 3600), at(END), STEP)

    (refused,) = latency(0.3)
    assert "latency threshold 0.3 is not a bucket boundary of vllm:time_to_first_token_seconds" in refused.error
    assert "le=0.001, 0.005" in refused.error and "0.25, 0.5" in refused.error
    accepted = {r.labels["instance"]: r for r in latency(2.5)}
    simulation, _ = fleet
    bounds = catalog.HISTOGRAM_BUCKETS[catalog.TTFT]
    for series in simulation.series:
        # Per-step bucket increments straight from the generator's counts and its own restart flags.
        buckets, count, _ = histogram_counts(series.histograms[catalog.TTFT], bounds, series.restart)
        under = buckets[:, bounds.index(2.5)]
        increments = [np.where(series.restart, c, np.diff(c, prepend=0)) for c in (under, count)]
        first_scrape = series.times[series.present][0]
        good, total = (seen(series, inc, first_scrape, END) for inc in increments)
        result = accepted[series.instance.name]
        assert result.error is None and result.total == pytest.approx(total, rel=0.01)
        assert result.attainment == pytest.approx(good / total, rel=0.01)


def test_health_score_over_the_backtest(fleet, backtest):
    simulation, _ = fleet
    names = [s.instance.name for s in simulation.series]
    health = health_scores(backtest.findings, backtest.checks(), instances=names)
    scores = {name: h.score for name, h in health.instances.items()}
    assert scores["vllm-0:8000"] == 100 and scores["vllm-3:8000"] == 100
    assert scores["vllm-1:8000"] < 100 and scores["vllm-2:8000"] < 100
    assert health.categories["memory_pressure"] < 100 and health.categories["high_latency"] < 100
