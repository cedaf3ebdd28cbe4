"""Regression and SLO evaluation over 30 days × 50 series at a 30 s step (86,400 points per series), in memory.

    python bench/bench_regression_slo.py [--days 30] [--series 50] [--repeat 3] [--skip-peers]

Frames are generated (the fetch is PrometheusSource's business, measured by bench_decode.py), then each
evaluation runs `--repeat` times; the best wall time and the peak memory the evaluation allocated
(tracemalloc: numpy and pandas buffers included) are printed, with the ratio to a peer run in the same process:
- regression: rules_engine.evaluate.regression.evaluate (rolling statistics over the whole frame, then the
  vectorized U test only where the ratio moved) against a per-evaluation loop that slices both windows and calls
  scipy.stats.mannwhitneyu where the ratio moved (the same pruning, so the peer is not a straw man);
- SLO: rules_engine.evaluate.slo.evaluate_slo (counter increases, cumulative sums, all burn windows, the four
  alert pairs) against idiomatic pandas (diff/where for resets, then time-based rolling sums per window).
5 of the series carry a 25% regression from day 20 on, and one instance an error burst, so both paths do real work;
a fleet-wide variant (all series regressed, baseline a week back) times the U test's worst case.
"""
from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

import numpy as np
import pandas as pd
import scipy.stats

from rules_engine.evaluate import regression
from rules_engine.evaluate import slo as slo_eval
from rules_engine.evaluate.series import RangeWindow
from rules_engine.promql.burn_windows import load_windows
from rules_engine.source.frame import RangeFrame
from rules_engine.spec.models import RulePack
from rules_engine.spec.slo import SLO

STEP = pd.Timedelta("30s")


def frames(days: int, series: int):
    rng = np.random.default_rng(0)
    rows = days * 2880
    grid = pd.date_range("2026-01-01", periods=rows, freq=STEP, tz="UTC")
    labels = pd.DataFrame({"instance": [f"vllm-{i}:8000" for i in range(series)],
                           "model_name": [f"model-{i % 5}" for i in range(series)]})
    daily = 1 + 0.3 * np.sin(np.arange(rows) / 2880 * 2 * np.pi)[:, None]
    itl = 0.03 * daily * (1 + rng.normal(0, 0.08, (rows, series)))
    itl[20 * 2880:, :5] *= 1.25
    signal = RangeFrame("itl", pd.DataFrame(itl, index=grid), labels)

    requests = rng.poisson(300 * daily, (rows, series)).astype(np.float64)
    errors = rng.binomial(requests.astype(np.int64), 0.001).astype(np.float64)
    burst = slice(rows - 2000, rows - 1800)
    errors[burst, 0] = requests[burst, 0] * 0.3
    slo_frames = {"errors": RangeFrame("errors", pd.DataFrame(np.cumsum(errors, axis=0), index=grid), labels),
                  "total": RangeFrame("total", pd.DataFrame(np.cumsum(requests, axis=0), index=grid), labels)}
    return grid, signal, slo_frames


def measure(run, repeat: int):
    """(best seconds, peak MiB allocated during one run, result of the last run)."""
    best = float("inf")
    result = None
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    gc.collect()
    tracemalloc.start()
    run()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return best, peak, result


def regression_peer(rule, values: np.ndarray, grid: pd.DatetimeIndex, first_row: int):
    """Per evaluation and series: slice both windows, compare means, U-test where the ratio moved."""
    k = int(rule.window // STEP)
    lag = int(rule.baseline.offset // STEP)
    every = int(rule.every // STEP)
    hits = 0
    for row in range(first_row - first_row % every, len(grid), every):
        if row - lag - k + 1 < 0:
            continue
        for column in range(values.shape[1]):
            current = values[row - k + 1:row + 1, column]
            baseline = values[row - lag - k + 1:row - lag + 1, column]
            if current.mean() / baseline.mean() >= rule.ratio_above:
                if scipy.stats.mannwhitneyu(current, baseline, method="asymptotic").pvalue < rule.alpha:
                    hits += 1
    return hits


def slo_peer(slo_frames: dict, windows: list[pd.Timedelta], budget: float):
    """Idiomatic pandas: increases with resets, per-instance rolling sums for every window, burn rates at the end."""
    increases = {}
    for role, frame in slo_frames.items():
        values = frame.values
        delta = values.diff()
        increases[role] = delta.where(delta >= 0, values).fillna(0.0)
    burn = {}
    for window in windows:
        errors = increases["errors"].rolling(window).sum()
        total = increases["total"].rolling(window).sum()
        burn[window] = errors / total / budget
    return burn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--series", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-peers", action="store_true")
    options = parser.parse_args()

    grid, signal, slo_frames = frames(options.days, options.series)
    points = signal.values.size
    print(f"{options.series} series × {len(grid)} points ({options.days} d at 30 s) = {points:,} points per signal")

    pack = RulePack.model_validate({"kind": "RulePack", "name": "bench", "rules": [{
        "name": "ITLRegression", "type": "regression", "category": "high_latency", "signal": "itl", "window": "1h",
        "baseline": {"offset": "1d"}, "ratio_above": 1.2, "alpha": 0.001, "min_samples": 60, "every": "5m"}]})
    rule = pack.rules[0]
    window = RangeWindow(grid[2880 + 240], grid[-1], STEP)
    seconds, peak, found = measure(lambda: regression.evaluate(rule, pack, {"signal": signal}, window), options.repeat)
    print(f"regression evaluate: {seconds:.2f} s, peak {peak:.0f} MiB, {len(found)} findings "
          f"({sorted({f.labels['instance'] for f in found})})")
    for stat in ("p95",):
        quantile = RulePack.model_validate({**pack.model_dump(by_alias=True), "rules": [
            {**pack.rules[0].model_dump(by_alias=True, exclude_none=True), "stat": stat}]})
        q_seconds, q_peak, _ = measure(lambda: regression.evaluate(quantile.rules[0], quantile, {"signal": signal},
                                                                   window), options.repeat)
        print(f"regression evaluate, stat {stat}: {q_seconds:.2f} s, peak {q_peak:.0f} MiB")
    # A fleet-wide deploy against last week: every series is a candidate for 7 days (the U test's worst case).
    fleet_wide = RangeFrame("itl", signal.values * np.where(np.arange(len(grid)) >= 20 * 2880, 1.25, 1.0)[:, None],
                            signal.labels)
    weekly = RulePack.model_validate({**pack.model_dump(by_alias=True), "rules": [
        {**pack.rules[0].model_dump(by_alias=True, exclude_none=True), "baseline": {"offset": "7d"}}]})
    w_seconds, w_peak, w_found = measure(lambda: regression.evaluate(weekly.rules[0], weekly, {"signal": fleet_wide},
                                                                     window), 1)
    print(f"regression evaluate, fleet-wide deploy vs 7d (every series tested for a week): {w_seconds:.2f} s, "
          f"peak {w_peak:.0f} MiB, {len(w_found)} findings")
    if not options.skip_peers:
        values = signal.values.to_numpy()
        first_row = int(grid.searchsorted(window.start))
        started = time.perf_counter()
        regression_peer(rule, values, grid, first_row)
        peer = time.perf_counter() - started
        print(f"regression peer (loop + scipy per evaluation): {peer:.2f} s -> ratio {peer / seconds:.1f}x")

    for group_by in (["instance"], ["model_name"]):
        slo = SLO.model_validate({"kind": "SLO", "name": "availability", "objective": 99.5, "group_by": group_by,
                                  "sli": {"ratio": {"errors": "errors", "total": "total"}}})
        catalog = load_windows()
        slo_window = RangeWindow(grid[-2 * 2880], grid[-1], STEP)
        seconds, peak, results = measure(lambda: slo_eval.evaluate_slo(slo, slo_frames, slo_window, catalog),
                                         options.repeat)
        alerts = sum(len(r.findings) for r in results)
        print(f"SLO evaluate by {group_by[0]}: {seconds:.2f} s, peak {peak:.0f} MiB, {len(results)} groups, "
              f"{alerts} burn alerts")
    if not options.skip_peers:
        started = time.perf_counter()
        slo_peer(slo_frames, catalog.windows, slo.error_budget)
        peer = time.perf_counter() - started
        slo_by_instance = SLO.model_validate({**slo.model_dump(by_alias=True), "group_by": ["instance"]})
        seconds, _, _ = measure(lambda: slo_eval.evaluate_slo(slo_by_instance, slo_frames, slo_window, catalog), 1)
        print(f"SLO peer (pandas diff + rolling per window, burn rates only): {peer:.2f} s -> ratio "
              f"{peer / seconds:.1f}x")


if __name__ == "__main__":
    main()
