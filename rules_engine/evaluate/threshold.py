"""Threshold rules in pandas: a signal, or a window statistic of it, above or below a threshold for a duration.

Its queries and PromQL meaning: rules_engine/promql/threshold.py."""
from __future__ import annotations

import numpy as np
import pandas as pd

from rules_engine.evaluate.alerting import episode_extremes, firing_episodes, steps_for
from rules_engine.evaluate.findings import Finding
from rules_engine.evaluate.series import RangeWindow, findings_from_episodes, guard_holds
from rules_engine.evaluate.windows import window_stat
from rules_engine.source.frame import RangeFrame
from rules_engine.spec.models import RulePack, SeverityLadder, ThresholdRule, format_duration


def compared_values(rule: ThresholdRule, pack: RulePack, frames: dict[str, RangeFrame], window: RangeWindow
                    ) -> pd.DataFrame:
    """The value the rule compares with its threshold at every step: the signal, or its window statistic."""
    if "windowed" in frames:
        return frames["windowed"].values
    values = frames["signal"].values
    return window_stat(values, rule.stat, rule.window, window.step) if rule.stat is not None else values


def evaluate(rule: ThresholdRule, pack: RulePack, frames: dict[str, RangeFrame], window: RangeWindow) -> list[Finding]:
    signal = frames["windowed"] if "windowed" in frames else frames["signal"]
    values = compared_values(rule, pack, frames, window)
    observed = values.to_numpy()
    with np.errstate(invalid="ignore"):
        active = observed > rule.threshold if rule.direction == "above" else observed < rule.threshold
    if "guard" in frames:
        active &= guard_holds(signal, frames["guard"], pack.keep_labels)
    episodes = firing_episodes(active, steps_for(rule.for_, window.step), steps_for(rule.keep_firing_for, window.step))
    episodes = window.overlapping(episodes, values.index)
    peaks = episode_extremes(observed, episodes, largest=rule.direction == "above")
    severities = severity_of(rule, peaks)
    details = {"stat": rule.stat, "window": format_duration(rule.window) if rule.window is not None else None,
               "direction": rule.direction}
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
