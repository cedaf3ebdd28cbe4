"""The promtool cases of each rule kind: input series that make its compiled alerts fire at every severity band
or keep them silent, and when to check them (rules_engine/kinds.py hands each kind its CaseBuilder)."""
from __future__ import annotations

import math

import pandas as pd

from rules_engine.compile.promtool_tests import (CaseBuilder, Cases, check_step, firing_values, holds, safe_value,
                                                 window_value)
from rules_engine.promql.levels import number
from rules_engine.promql.regression import baseline_offset
from rules_engine.promql.trend import lead_fractions
from rules_engine.spec.models import format_duration


def _constant(value: float, samples: int) -> str:
    return f"{number(value)}x{samples}"


def _ramp(at_check: float, per_step: float, steps: int, samples: int) -> str:
    """A straight line reaching `at_check` at evaluation `steps`."""
    start = at_check - per_step * steps
    sign = "+" if per_step >= 0 else "-"
    return f"{number(start)}{sign}{number(abs(per_step))}x{samples}"


def _bands(alerts) -> list[tuple[str, float]]:
    """(case name, value) per severity band, then the safe side."""
    return [(f"band{band}", value) for band, value in enumerate(firing_values(alerts))] + [("safe", safe_value(alerts[0]))]


# -- threshold ---------------------------------------------------------------------------------------------------

def threshold_cases(rule, alerts, interval: pd.Timedelta, steps: int, samples: int) -> Cases:
    """A constant input per severity band and on the safe side."""
    return [(case, _constant(value, samples), tuple(a for a in alerts if holds(value, a)),
             window_value(value, rule.stat, rule.window, interval)) for case, value in _bands(alerts)]


THRESHOLD = CaseBuilder(threshold_cases)


# -- trend -------------------------------------------------------------------------------------------------------

def trend_cases(rule, alerts, interval: pd.Timedelta, steps: int, samples: int) -> Cases:
    """Straight lines: a slope rule gets a slope per band; a crossing rule a line that reaches the limit within
    each level's horizon but not the next's, early enough that the level has held for `for` at the check."""
    seconds = interval.total_seconds()
    if rule.mode == "slope":
        per = rule.per.total_seconds()
        return [(case, _ramp(0.0, value / per * seconds, steps, samples), tuple(a for a in alerts if holds(value, a)),
                 math.nan) for case, value in _bands(alerts)]
    horizon = rule.horizon.total_seconds()
    fractions = lead_fractions(rule)
    ordered = sorted(alerts, key=lambda a: -fractions[a.severity])
    sign = 1.0 if rule.direction == "above" else -1.0
    slope = sign * max(abs(rule.threshold), 1.0) * 0.5 / horizon  # per second
    cases = []
    for band, alert in enumerate(ordered):
        later = fractions[ordered[band + 1].severity] if band + 1 < len(ordered) else 0.0
        # How far (in horizons) from the limit the line is at the check: just beyond the next level's reach.
        distance = later + 0.1 * (fractions[alert.severity] - later)
        held = horizon * (fractions[alert.severity] - distance)
        if held < (rule.for_ + 2 * interval).total_seconds():
            continue  # this level cannot have held for `for` on a line: no case for it
        at_check = rule.threshold - slope * horizon * distance
        cases.append((f"band{band}", _ramp(at_check, slope * seconds, steps, samples), tuple(ordered[: band + 1]), math.nan))
    cases.append(("safe", _ramp(rule.threshold - slope * horizon * 1.5, slope * seconds, steps, samples), (), math.nan))
    points = int(rule.window // interval) + 1
    if points < rule.min_samples:  # the window can never hold min_samples points: the alert cannot fire
        cases = [(case, values, (), observed) for case, values, _, observed in cases]
    return cases


def trend_check_step(rule, interval: pd.Timedelta) -> int:
    """After the fit's minimum samples, `for` must elapse."""
    return check_step(rule, interval, warm=(rule.min_samples - 1) * interval)


TREND = CaseBuilder(trend_cases, check_step=trend_check_step)


# -- regression --------------------------------------------------------------------------------------------------

# A baseline a week back costs promtool ~2,000 evaluations of every rule in the file at a 5m step: still seconds.
MAX_REGRESSION_OFFSET = pd.Timedelta(days=8)


def _ceil_steps(duration: pd.Timedelta, interval: pd.Timedelta) -> int:
    return int(-(-duration // interval))


def regression_schedule(rule, interval: pd.Timedelta) -> tuple[int, int]:
    """(switch step, check step) for a step input: the baseline level before `switch`, the current level from it.

    The alert's condition holds while the current window sees only the new level and the baseline window only the
    old one, from switch + window to switch + offset, and not before the offset window reaches the first sample
    (an empty baseline gives no ratio): the switch comes late enough for that. The check comes `for` (and a step)
    after the condition holds.
    """
    switch = max(1, _ceil_steps(baseline_offset(rule) - rule.window, interval) + 1)
    check = switch + _ceil_steps(rule.window + rule.for_, interval) + 1
    return switch, check


def regression_cases(rule, alerts, interval: pd.Timedelta, steps: int, samples: int) -> Cases:
    """A step from 1 (the baseline level) to the change ratio of each band, the safe side's ratio for the last."""
    switch, _ = regression_schedule(rule, interval)
    baseline = window_value(1.0, rule.stat, rule.baseline_window, interval)
    return [(case, f"1x{switch - 1} {number(value)}x{samples - switch - 1}", tuple(a for a in alerts if holds(value, a)),
             window_value(value, rule.stat, rule.window, interval) / baseline) for case, value in _bands(alerts)]


def regression_untestable(rule, interval: pd.Timedelta) -> str | None:
    """Why a step input cannot test the rule (None when it can)."""
    if rule.baseline.kind == "at":
        return "its baseline is pinned to a time (`at:`), which promtool's clock (starting at 0) cannot reach"
    offset = baseline_offset(rule)
    if offset <= rule.window + rule.for_ + 2 * interval:
        return "its baseline overlaps the current window for `for`, so no step input holds it cleanly"
    if offset > MAX_REGRESSION_OFFSET:
        return f"its baseline lies {format_duration(offset)} back: promtool would evaluate the whole file that long"
    return None


REGRESSION = CaseBuilder(
    regression_cases,
    check_step=lambda rule, interval: regression_schedule(rule, interval)[1],
    pending_step=lambda rule, interval: None,  # a partly filled window may pass the ratio early: not exact when
    untestable=regression_untestable,
    interval=lambda rule, pack_interval: rule.every,  # evaluated at its `every`: a day-old baseline stays cheap
)
