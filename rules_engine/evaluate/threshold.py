"""Threshold rules: a signal, or a window statistic of it, above or below a threshold for a duration."""
from __future__ import annotations

import numpy as np
import pandas as pd

from rules_engine.evaluate.alerting import episode_extremes, firing_episodes, steps_for
from rules_engine.evaluate.findings import Finding
from rules_engine.evaluate.series import RangeWindow, findings_from_episodes, guard_holds
from rules_engine.evaluate.windows import promql_window_stat, window_stat
from rules_engine.source.frame import RangeFrame
from rules_engine.spec.models import RulePack, SeverityLadder, ThresholdRule, format_duration
from rules_engine.spec.promql import inject_selector

COMPARISONS = {"above": ">", "below": "<"}


# Window statistics Prometheus computes about as cheaply as the signal itself (quantiles sort every window).
PUSHDOWN_STATS = frozenset({"mean", "min", "max", "last"})


def queries(rule: ThresholdRule, pack: RulePack, pushdown_step: pd.Timedelta | None = None) -> dict[str, str]:
    """The range queries the rule needs, by role.

    A rule without a window statistic pushes its comparison, and its guard, down into the query, so Prometheus
    returns only the samples past the threshold (a filtering comparison keeps its value, which the severity ladder
    still needs). With `pushdown_step`, a mean/min/max/last window goes down too, as a subquery at that step
    (role `windowed`): the engine asks for that when no other rule needs the raw signal, since sending the whole
    signal costs more than Prometheus computing such a window.
    """
    signal = inject_selector(rule.signal, pack.selector)
    guard = inject_selector(rule.guard, pack.selector) if rule.guard else None
    if rule.stat is None:
        role = "signal"
    elif pushdown_step is not None and rule.stat in PUSHDOWN_STATS:
        role = "windowed"
        signal = promql_window_stat(signal, rule.stat, format_duration(rule.window), format_duration(pushdown_step))
    else:
        return {"signal": signal, "guard": guard} if guard else {"signal": signal}
    condition = f"({signal}) {COMPARISONS[rule.direction]} {rule.threshold!r}"
    if guard:
        # `and on(kept labels)` is what guard_holds computes for a separate guard frame.
        condition = f"{condition} and on ({', '.join(pack.keep_labels)}) ({guard})"
    return {role: condition}


def warmup(rule: ThresholdRule) -> pd.Timedelta:
    """History needed before the range start so the first evaluations see full windows and `for` durations."""
    return (rule.window or pd.Timedelta(0)) + rule.for_


def evaluate(rule: ThresholdRule, pack: RulePack, frames: dict[str, RangeFrame], window: RangeWindow) -> list[Finding]:
    signal = frames["windowed"] if "windowed" in frames else frames["signal"]
    values = signal.values
    if rule.stat is not None and "windowed" not in frames:
        values = window_stat(values, rule.stat, rule.window, window.step)
    observed = values.to_numpy()
    with np.errstate(invalid="ignore"):
        active = observed > rule.threshold if rule.direction == "above" else observed < rule.threshold
    if "guard" in frames:
        active &= guard_holds(signal, frames["guard"], pack.keep_labels)
    episodes = firing_episodes(active, steps_for(rule.for_, window.step), steps_for(rule.keep_firing_for, window.step))
    episodes = window.overlapping(episodes, values.index)
    peaks = episode_extremes(observed, episodes, largest=rule.direction == "above")
    severities = severity_of(rule, peaks)
    details = {"stat": rule.stat, "window": str(rule.window) if rule.window is not None else None, "direction": rule.direction}
    return findings_from_episodes(rule, pack, "threshold", signal, values.index, episodes, peaks, severities,
                                  rule.threshold, details)


def severity_of(rule: ThresholdRule, peaks: np.ndarray) -> list[str]:
    """Severity of each peak: fixed, or the highest ladder level the peak reached (`low` below the first level)."""
    if not isinstance(rule.severity, SeverityLadder):
        return [rule.severity] * len(peaks)
    ladder = rule.severity
    with np.errstate(divide="ignore", invalid="ignore"):
        if ladder.by == "value":
            past = peaks if rule.direction == "above" else -peaks
            bounds = [(name, bound if rule.direction == "above" else -bound) for name, bound in ladder.levels()]
        else:
            past = peaks / rule.threshold if rule.direction == "above" else rule.threshold / peaks
            bounds = ladder.levels()
    severity = np.full(len(peaks), "low", dtype=object)
    for name, bound in sorted(bounds, key=lambda level: level[1]):
        severity[past >= bound] = name
    return list(severity)
