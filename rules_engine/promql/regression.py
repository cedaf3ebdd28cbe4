"""Regression rules in PromQL: the window statistic as a ratio against an offset baseline.

`<stat>_over_time((signal)[window-1s:every]) / <stat>_over_time((signal)[baseline_window-1s:every] offset <offset>)`
(1s less: the engine's windows end at the evaluation and do not reach back to its start point)
compared with `ratio_above`/`ratio_below`. The engine also requires a significant Mann-Whitney U test; that test
has no PromQL form, so the compiled alert fires on the change ratio alone, and its `statistical_test` annotation
says so. A `preceding` baseline is an offset of one window; an `at:` baseline is pinned with `@`.
"""
from __future__ import annotations

import pandas as pd

from rules_engine.promql.histograms import histogram_signal
from rules_engine.promql.levels import AlertCondition, Level, ladder_levels, number
from rules_engine.promql.selectors import signal_and_guard
from rules_engine.promql.windows import window_stat_query
from rules_engine.spec.models import RulePack, format_duration
from rules_engine.spec.regression import RegressionRule


def signal_query(rule: RegressionRule) -> str:
    """The PromQL of the compared samples: the rule's signal, or one built from its histogram."""
    if rule.signal is not None:
        return rule.signal
    assert rule.histogram is not None
    return histogram_signal(rule.histogram)


def signals(rule: RegressionRule, pack: RulePack) -> list[str]:
    """The expressions the rule reads, selector injected: its signal, then its guard if it has one."""
    return signal_and_guard(signal_query(rule), rule.guard, pack.selector)


def queries(rule: RegressionRule, pack: RulePack, pushdown_step: pd.Timedelta | None = None) -> dict[str, str]:
    """The signal (and guard): the U test needs every sample of both windows, nothing is pushed down."""
    return dict(zip(("signal", "guard"), signals(rule, pack)))


def warmup(rule: RegressionRule) -> pd.Timedelta:
    """History before the range start: the baseline's reach behind the current window, plus `for`,
    `keep_firing_for` (an alert that fired before the start and is kept firing into it) and one interval.

    An explicit-time baseline (`at:`) cannot be expressed relative to the range start: see earliest_sample().
    """
    reach = rule.window
    if rule.baseline.kind == "offset":
        reach = max(rule.window, rule.baseline.offset + rule.baseline_window)  # type: ignore[operator]
    elif rule.baseline.kind == "preceding":
        reach = rule.window + rule.baseline_window
    return reach + rule.for_ + rule.keep_firing_for + rule.every


def earliest_sample(rule: RegressionRule) -> pd.Timestamp | None:
    """For an explicit-time baseline, the earliest sample it needs (absolute, unlike warmup()); None otherwise.

    The fetch must start at or before min(range start - warmup, this) for `baseline: {at: ...}` to be evaluable.
    """
    if rule.baseline.kind != "at":
        return None
    return pd.Timestamp(rule.baseline.at).tz_convert("UTC") - rule.baseline_window


def baseline_offset(rule: RegressionRule) -> pd.Timedelta:
    """How far back the baseline window ends, for a relative baseline (`offset:` or `preceding`)."""
    return rule.baseline.offset if rule.baseline.kind == "offset" else rule.window


def baseline_modifier(rule: RegressionRule) -> str:
    baseline = rule.baseline
    if baseline.kind == "at":
        return f" @ {int(pd.Timestamp(baseline.at).timestamp())}"
    return f" offset {format_duration(baseline_offset(rule))}"


def alert_condition(rule: RegressionRule, pack: RulePack, interval: pd.Timedelta) -> AlertCondition:
    # The engine's windows hold window/step samples, ending at the evaluation (evaluate/regression.py); Prometheus
    # 2.x subquery ranges are closed at both ends and would add the point one window back, which matters for short
    # (level-shift) windows. A second less keeps the compiled alert on the engine's samples.
    just_under = pd.Timedelta(seconds=1)

    def ratio(ref: str) -> str:
        current = window_stat_query(ref, rule.stat, rule.window - just_under, rule.every)
        baseline = window_stat_query(ref, rule.stat, rule.baseline_window - just_under, rule.every,
                                     baseline_modifier(rule))
        return f"{current} / {baseline}"

    levels = [Level(name, bound, op, ratio) for name, bound, op in ladder_levels(rule.direction, rule.ratio, rule.severity)]
    annotations = {
        "statistical_test": (f"not compiled: the Mann-Whitney U test (alpha {number(rule.alpha)}, at least "
                             f"{rule.min_samples} samples a side) runs only in `rules-engine evaluate`; this alert "
                             "fires on the change ratio alone"),
        "baseline": baseline_modifier(rule).strip(),
    }
    engine_only = [f"the Mann-Whitney U test (alpha {number(rule.alpha)}) runs only in `rules-engine evaluate`; "
                   "the alert fires on the change ratio against the offset baseline alone"]
    what = f"the {rule.stat} over {format_duration(rule.window)} relative to its baseline"
    return AlertCondition(levels, what, annotations, engine_only=engine_only, caveats=("statistical_test",))
