"""Trend rules in PromQL: `predict_linear` for a predicted crossing, `deriv` for a slope bound.

Both run over a `[window:step]` subquery of the signal, the least-squares fit the engine computes; the engine's
minimum sample count becomes `count_over_time(...) >= min_samples`. Its R² filter (`min_r2`) has no PromQL form:
the annotation `fit_filter` says so, and such an alert can fire on a noisy series the engine skips.
A lead-time ladder becomes one alert per level with the horizon shortened to that level's fraction of it.
"""
from __future__ import annotations

import pandas as pd

from rules_engine.promql.levels import DIRECTION_OPERATORS, AlertCondition, Level, ladder_levels, number
from rules_engine.promql.selectors import signal_and_guard
from rules_engine.spec.models import RulePack, SeverityLadder, format_duration
from rules_engine.spec.trend import LeadTimeLadder, TrendRule


def signals(rule: TrendRule, pack: RulePack) -> list[str]:
    """The expressions the rule reads, selector injected: its signal, then its guard if it has one."""
    return signal_and_guard(rule.signal, rule.guard, pack.selector)


def queries(rule: TrendRule, pack: RulePack, pushdown_step: pd.Timedelta | None = None) -> dict[str, str]:
    """The signal (and guard): the fit runs over the raw signal, nothing of it is pushed down."""
    return dict(zip(("signal", "guard"), signals(rule, pack)))


def warmup(rule: TrendRule) -> pd.Timedelta:
    """Full fit windows and `for` at the first evaluations, and an alert kept firing into the range."""
    return rule.window + rule.for_ + rule.keep_firing_for


def lead_fractions(rule: TrendRule) -> dict[str, float]:
    """severity -> the fraction of the horizon within which a crossing earns it (one level for a fixed severity)."""
    if isinstance(rule.severity, str):
        return {rule.severity: 1.0}
    ladder = rule.severity if isinstance(rule.severity, LeadTimeLadder) else LeadTimeLadder(by="lead_time")
    return {"medium": 1.0, "high": ladder.high, "critical": ladder.critical}


def alert_condition(rule: TrendRule, pack: RulePack, interval: pd.Timedelta) -> AlertCondition:
    subquery = f"[{format_duration(rule.window)}:{format_duration(interval)}]"

    def min_samples(ref: str) -> str:
        return f"count_over_time(({ref}){subquery}) >= {rule.min_samples}"

    annotations = {}
    engine_only = []
    if rule.min_r2 > 0:
        annotations["fit_filter"] = f"R² >= {number(rule.min_r2)} is checked only by `rules-engine evaluate`"
        engine_only.append(f"the fit quality filter (R² >= {number(rule.min_r2)}) runs only in `rules-engine evaluate`")
    comparison = DIRECTION_OPERATORS[rule.direction]
    if rule.mode == "crossing":
        horizon = rule.horizon.total_seconds()  # type: ignore[union-attr]

        def predicted(seconds: float):
            return lambda ref: f"predict_linear(({ref}){subquery}, {number(seconds)})"

        levels = [Level(severity, rule.threshold, comparison, predicted(horizon * fraction))
                  for severity, fraction in lead_fractions(rule).items()]
        what = f"the signal predicted {format_duration(rule.horizon)} ahead"
        annotations["horizon"] = format_duration(rule.horizon)
    else:
        per = rule.per.total_seconds()

        def slope(ref: str) -> str:
            return f"deriv(({ref}){subquery}) * {number(per)}"

        severity = rule.severity if rule.severity is not None else SeverityLadder()
        levels = [Level(name, bound, op, slope) for name, bound, op in ladder_levels(rule.direction, rule.threshold, severity)]
        what = f"the signal's slope per {format_duration(rule.per)}"
    return AlertCondition(levels, what, annotations, extra_condition=min_samples, engine_only=engine_only,
                          caveats=("fit_filter",))
