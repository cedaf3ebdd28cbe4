"""Window statistics in PromQL: `<stat>_over_time((signal)[window:step])`, the meaning every engine shares.

The pandas engine computes the same statistic with rolling windows (evaluate/windows.py); the compiler writes
these expressions into rule files and dashboards; the PromQL engine range-queries them.
"""
from __future__ import annotations

import pandas as pd

from rules_engine.spec.models import format_duration

QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
PROMQL_FUNCTIONS = {"mean": "avg_over_time", "min": "min_over_time", "max": "max_over_time", "last": "last_over_time"}
# Window statistics Prometheus computes about as cheaply as the signal itself (quantiles sort every window).
CHEAP_STATS = frozenset(PROMQL_FUNCTIONS)


def window_stat_query(expr: str, stat: str, window: pd.Timedelta, step: pd.Timedelta, modifier: str = "") -> str:
    """`stat` of `expr` over `window` evaluated every `step`; `modifier` (` offset 1d`, ` @ 1700000000`) moves the
    window back in time."""
    subquery = f"({expr})[{format_duration(window)}:{format_duration(step)}]{modifier}"
    if stat in QUANTILES:
        return f"quantile_over_time({QUANTILES[stat]}, {subquery})"
    return f"{PROMQL_FUNCTIONS[stat]}({subquery})"
