"""Threshold rules in PromQL: a signal, or a window statistic of it, compared with a threshold (and a ladder)."""
from __future__ import annotations

import pandas as pd

from rules_engine.promql.levels import DIRECTION_OPERATORS, AlertCondition, Level, ladder_levels
from rules_engine.promql.selectors import signal_and_guard
from rules_engine.promql.windows import CHEAP_STATS, window_stat_query
from rules_engine.spec.models import RulePack, ThresholdRule, format_duration


def signals(rule: ThresholdRule, pack: RulePack) -> list[str]:
    """The expressions the rule reads, selector injected: its signal, then its guard if it has one."""
    return signal_and_guard(rule.signal, rule.guard, pack.selector)


def queries(rule: ThresholdRule, pack: RulePack, pushdown_step: pd.Timedelta | None = None) -> dict[str, str]:
    """The range queries the rule needs, by role.

    A rule without a window statistic pushes its comparison, and its guard, down into the query, so Prometheus
    returns only the samples past the threshold (a filtering comparison keeps its value, which the severity ladder
    still needs). With `pushdown_step`, a mean/min/max/last window goes down too, as a subquery at that step
    (role `windowed`): the engine asks for that when no other rule needs the raw signal, since sending the whole
    signal costs more than Prometheus computing such a window.
    """
    signal, *guard = signals(rule, pack)
    if rule.stat is None:
        role = "signal"
    elif pushdown_step is not None and rule.stat in CHEAP_STATS:
        role = "windowed"
        signal = window_stat_query(signal, rule.stat, rule.window, pushdown_step)
    else:
        return {"signal": signal, "guard": guard[0]} if guard else {"signal": signal}
    condition = f"({signal}) {DIRECTION_OPERATORS[rule.direction]} {rule.threshold!r}"
    if guard:
        # `and on(kept labels)` is what the engine's guard matching computes for a separate guard frame.
        condition = f"{condition} and on ({', '.join(pack.keep_labels)}) ({guard[0]})"
    return {role: condition}


def warmup(rule: ThresholdRule) -> pd.Timedelta:
    """History needed before the range start so the first evaluations see full windows and `for` durations, and an
    alert that fired before the start and is kept firing into it by `keep_firing_for`."""
    return (rule.window or pd.Timedelta(0)) + rule.for_ + rule.keep_firing_for


def alert_condition(rule: ThresholdRule, pack: RulePack, interval: pd.Timedelta) -> AlertCondition:
    def value_of(ref: str) -> str:
        if rule.stat is None:
            return ref
        return window_stat_query(ref, rule.stat, rule.window, interval)

    levels = [Level(severity, bound, comparison, value_of)
              for severity, bound, comparison in ladder_levels(rule.direction, rule.threshold, rule.severity)]
    what = f"the signal's {rule.stat} over {format_duration(rule.window)}" if rule.stat else "the signal"
    return AlertCondition(levels, what)
