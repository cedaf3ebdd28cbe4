"""What every rule kind's evaluation shares: the evaluated range, guards, and turning episodes into findings."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from rules_engine.evaluate.alerting import Episodes
from rules_engine.evaluate.findings import Finding
from rules_engine.source.frame import RangeFrame


class EvaluationError(Exception):
    """A rule could not be evaluated on the data it got; the message says why, for the report."""


@dataclass(frozen=True)
class RangeWindow:
    """The range being backtested. Frames start earlier (warm-up) so windows and `for` are full at `start`."""

    start: pd.Timestamp
    end: pd.Timestamp
    step: pd.Timedelta

    def overlapping(self, episodes: Episodes, grid: pd.DatetimeIndex) -> Episodes:
        """Episodes still firing at or after the range start (those resolved during the warm-up are not ours)."""
        first_row = int(grid.searchsorted(self.start))
        keep = episodes.resolved_row > first_row
        return Episodes(episodes.column[keep], episodes.firing_row[keep], episodes.resolved_row[keep], episodes.rows)


def guard_holds(signal: RangeFrame, guard: RangeFrame, keep_labels: list[str]) -> np.ndarray:
    """(rows × signal series): whether the guard returned a sample for a matching series, as `and on(...)` would.

    Series match on the pack's kept labels that both sides carry; a guard without any of them must be a single
    series, which then applies to every signal series.
    """
    rows = len(signal.values.index)
    if guard.series_count == 0 or signal.series_count == 0:
        return np.zeros((rows, signal.series_count), dtype=bool)
    present = guard.values.notna().to_numpy()
    on = [name for name in keep_labels if name in signal.labels.columns and name in guard.labels.columns]
    if not on:
        if guard.series_count != 1:
            raise EvaluationError(
                f"the guard returns {guard.series_count} series that share none of the labels {keep_labels} with the "
                "signal; aggregate it by those labels or to a single series"
            )
        return np.repeat(present, signal.series_count, axis=1)
    pairs = signal.labels[on].reset_index(names="signal").merge(guard.labels[on].reset_index(names="guard"), on=on)
    matches = np.zeros((guard.series_count, signal.series_count), dtype=np.float32)
    matches[pairs["guard"].to_numpy(), pairs["signal"].to_numpy()] = 1.0
    return (present.astype(np.float32) @ matches) > 0


def findings_from_episodes(rule, pack, kind: str, signal: RangeFrame, grid: pd.DatetimeIndex, episodes: Episodes,
                           values: np.ndarray, severities: list[str], threshold: float,
                           details: dict | None = None) -> list[Finding]:
    findings = []
    for index in range(len(episodes)):
        labels = {k: v for k, v in signal.series_labels(int(episodes.column[index])).items() if k != "__name__"}
        resolved = int(episodes.resolved_row[index])
        findings.append(Finding(
            rule=rule.name,
            kind=kind,
            category=rule.category,
            severity=severities[index],
            labels=labels,
            start=grid[int(episodes.firing_row[index])],
            end=grid[resolved] if resolved < episodes.rows else None,
            value=float(values[index]),
            threshold=float(threshold),
            recommendation=rule.recommendation,
            playbook=rule.playbook,
            pack=pack.name,
            summary=rule.annotations.summary,
            description=rule.annotations.description,
            runbook_url=rule.annotations.runbook_url,
            rule_labels=dict(rule.labels),
            details=dict(details or {}),
        ))
    return findings
