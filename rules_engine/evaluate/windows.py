"""Window statistics over a range frame, with the semantics of `<stat>_over_time((signal)[window:step])`.

Prometheus 2.x selects a range inclusively at both ends, so a 1h window at a 30s step holds 121 points
(closed="both"); missing points are skipped, as a subquery skips evaluations that returned nothing.
"""
from __future__ import annotations

import pandas as pd

from rules_engine.promql.windows import QUANTILES


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
