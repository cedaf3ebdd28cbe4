"""Regression rules as Prometheus alerts: the window statistic as a ratio against an offset baseline.

`<stat>_over_time((signal)[window:every]) / <stat>_over_time((signal)[baseline_window:every] offset <offset>)`
compared with `ratio_above`/`ratio_below`. The engine also requires a significant Mann-Whitney U test; that test
has no PromQL form, so the compiled alert fires on the change ratio alone, and its `statistical_test` annotation
says so. A `preceding` baseline is an offset of one window; an `at:` baseline is pinned with `@`.
"""
from __future__ import annotations

import pandas as pd

from rules_engine.compile.prometheus import Level, SignalRef, ladder_levels, leveled_alerts, number
from rules_engine.evaluate.windows import PROMQL_FUNCTIONS, QUANTILES
from rules_engine.spec.models import RulePack, format_duration
from rules_engine.spec.regression import RegressionRule


def _stat(ref: str, stat: str, window: pd.Timedelta, step: pd.Timedelta, modifier: str = "") -> str:
    subquery = f"({ref})[{format_duration(window)}:{format_duration(step)}]{modifier}"
    if stat in QUANTILES:
        return f"quantile_over_time({QUANTILES[stat]}, {subquery})"
    return f"{PROMQL_FUNCTIONS[stat]}({subquery})"


def baseline_modifier(rule: RegressionRule) -> str:
    baseline = rule.baseline
    if baseline.kind == "offset":
        return f" offset {format_duration(baseline.offset)}"
    if baseline.kind == "preceding":
        return f" offset {format_duration(rule.window)}"
    return f" @ {int(pd.Timestamp(baseline.at).timestamp())}"


def regression_alerts(rule: RegressionRule, pack: RulePack, signals: dict[str, SignalRef], interval: pd.Timedelta):
    def ratio(ref: str) -> str:
        current = _stat(ref, rule.stat, rule.window, rule.every)
        baseline = _stat(ref, rule.stat, rule.baseline_window, rule.every, baseline_modifier(rule))
        return f"{current} / {baseline}"

    levels = [Level(name, bound, op, ratio) for name, bound, op in ladder_levels(rule.direction, rule.ratio, rule.severity)]
    extra = {
        "statistical_test": (f"not compiled: the Mann-Whitney U test (alpha {number(rule.alpha)}, at least "
                             f"{rule.min_samples} samples a side) runs only in `rules-engine evaluate`; this alert "
                             "fires on the change ratio alone"),
        "baseline": baseline_modifier(rule).strip(),
    }
    what = f"the {rule.stat} over {format_duration(rule.window)} relative to its baseline"
    return leveled_alerts(rule, pack, signals, "regression", levels, what, extra)
