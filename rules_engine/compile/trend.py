"""Trend rules as Prometheus alerts: `predict_linear` for a predicted crossing, `deriv` for a slope bound.

Both run over a `[window:step]` subquery of the recorded signal, the least-squares fit the engine computes; the
engine's minimum sample count becomes `count_over_time(...) >= min_samples`. Its R² filter (`min_r2`) has no
PromQL form: the annotation `fit_filter` says so, and such an alert can fire on a noisy series the engine skips.
A lead-time ladder becomes one alert per level with the horizon shortened to that level's fraction of it.
"""
from __future__ import annotations

import pandas as pd

from rules_engine.compile.prometheus import Level, SignalRef, ladder_levels, leveled_alerts, number
from rules_engine.spec.models import RulePack, SeverityLadder, format_duration
from rules_engine.spec.trend import LeadTimeLadder, TrendRule

COMPARISONS = {"above": ">", "below": "<"}


def trend_alerts(rule: TrendRule, pack: RulePack, signals: dict[str, SignalRef], interval: pd.Timedelta):
    subquery = f"[{format_duration(rule.window)}:{format_duration(interval)}]"

    def min_samples(ref: str) -> str:
        return f"count_over_time(({ref}){subquery}) >= {rule.min_samples}"

    extra = {"fit_filter": f"R² >= {number(rule.min_r2)} is checked only by `rules-engine evaluate`"} if rule.min_r2 > 0 else {}
    comparison = COMPARISONS[rule.direction]
    if rule.mode == "crossing":
        horizon = rule.horizon.total_seconds()  # type: ignore[union-attr]

        def predicted(seconds: float):
            return lambda ref: f"predict_linear(({ref}){subquery}, {number(seconds)})"

        if isinstance(rule.severity, str):
            levels = [Level(rule.severity, rule.threshold, comparison, predicted(horizon))]
        else:
            ladder = rule.severity if isinstance(rule.severity, LeadTimeLadder) else LeadTimeLadder(by="lead_time")
            levels = [Level(severity, rule.threshold, comparison, predicted(horizon * fraction))
                      for severity, fraction in (("medium", 1.0), ("high", ladder.high), ("critical", ladder.critical))]
        what = f"the signal predicted {format_duration(rule.horizon)} ahead"
        extra["horizon"] = format_duration(rule.horizon)
    else:
        per = rule.per.total_seconds()

        def slope(ref: str) -> str:
            return f"deriv(({ref}){subquery}) * {number(per)}"

        severity = rule.severity if rule.severity is not None else SeverityLadder()
        levels = [Level(name, bound, op, slope) for name, bound, op in ladder_levels(rule.direction, rule.threshold, severity)]
        what = f"the signal's slope per {format_duration(rule.per)}"
    return leveled_alerts(rule, pack, signals, "trend", levels, what, extra, extra_condition=min_samples)
