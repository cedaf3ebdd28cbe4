"""Window statistics over a range frame, with the semantics of `<stat>_over_time((signal)[window:step])`.

Prometheus 2.x selects a range inclusively at both ends, so a 1h window at a 30s step holds 121 points
(closed="both"); missing points are skipped, as a subquery skips evaluations that returned nothing.
"""
from __future__ import annotations

import pandas as pd

QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
PROMQL_FUNCTIONS = {"mean": "avg_over_time", "min": "min_over_time", "max": "max_over_time", "last": "last_over_time"}


def window_stat(values: pd.DataFrame, stat: str, window: pd.Timedelta, step: pd.Timedelta) -> pd.DataFrame:
    if stat == "last":
        # The newest sample at most `window` old: a forward fill limited to the window's steps.
        return values.ffill(limit=int(window // step))
    rolling = values.rolling(window, closed="both", min_periods=1)
    if stat in QUANTILES:
        return rolling.quantile(QUANTILES[stat], interpolation="linear")
    if stat == "mean":
        return rolling.mean()
    if stat == "min":
        return rolling.min()
    if stat == "max":
        return rolling.max()
    raise ValueError(f"unknown window statistic {stat!r}")


def promql_window_stat(expr: str, stat: str, window: str, step: str) -> str:
    """The PromQL that computes the same statistic inside Prometheus (what the compile stage and the peer use)."""
    subquery = f"({expr})[{window}:{step}]"
    if stat in QUANTILES:
        return f"quantile_over_time({QUANTILES[stat]}, {subquery})"
    return f"{PROMQL_FUNCTIONS[stat]}({subquery})"
