"""Window statistics equal `<stat>_over_time(x[w:step])` computed point by point, inclusive at both ends."""
import numpy as np
import pandas as pd
import pytest

from rules_engine.evaluate.windows import QUANTILES, window_stat
from rules_engine.promql.windows import window_stat_query

STEP = pd.Timedelta("30s")


def subquery_reference(column: np.ndarray, points: int, stat: str) -> np.ndarray:
    out = np.full(len(column), np.nan)
    for row in range(len(column)):
        window = column[max(0, row - points): row + 1]
        window = window[~np.isnan(window)]
        if len(window) == 0:
            continue
        if stat in QUANTILES:
            out[row] = np.quantile(window, QUANTILES[stat])  # linear, rank q*(n-1): what quantile_over_time does
        elif stat == "last":
            out[row] = window[-1]
        else:
            out[row] = {"mean": np.mean, "min": np.min, "max": np.max}[stat](window)
    return out


@pytest.mark.parametrize("stat", ["mean", "min", "max", "last", "p50", "p90", "p95", "p99"])
def test_window_stat_matches_subquery_semantics(stat):
    rng = np.random.default_rng(7)
    grid = pd.date_range("2026-01-01", periods=300, freq=STEP, tz="UTC")
    values = rng.gamma(2.0, 3.0, size=(300, 3))
    values[rng.random((300, 3)) < 0.15] = np.nan  # scrape gaps
    values[100:140, 1] = np.nan  # a gap longer than the window
    frame = pd.DataFrame(values, index=grid)
    got = window_stat(frame, stat, pd.Timedelta("10m"), STEP).to_numpy()
    want = np.stack([subquery_reference(values[:, j], 20, stat) for j in range(3)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-9, equal_nan=True)


def test_promql_spelling():
    assert window_stat_query("up", "p95", pd.Timedelta("1h"), pd.Timedelta("30s")) == "quantile_over_time(0.95, (up)[1h:30s])"
    assert window_stat_query("up", "mean", pd.Timedelta("5m"), pd.Timedelta("1m")) == "avg_over_time((up)[5m:1m])"
