"""`evaluate --engine promql`: backtest the alert conditions the compiler writes, range-querying them in Prometheus.

Each rule's alert condition comes from its kind's PromQL semantics (rules_engine/promql), evaluated at the
backtest step, with the signal and guard written out in full instead of as the recorded series the compiled rule
file reads (history holds no recorded series). A sample in the answer means the condition held at that
evaluation, as it would for the alerting rule; `for` and `keep_firing_for` are then applied by the same code the
pandas engine uses (evaluate/alerting.py), so the two engines differ only in who computed the condition.

Severity: a kind that grades peaks (threshold ladders) grades the episode's peak as the pandas engine does (the
compiled levels are that ladder); other kinds take the highest level whose condition held at some evaluation of
the episode. What the compiled alerts leave out (regression's statistical test, trend's R² filter) is left out
here too: that is the point of this engine, to show what the live path would do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from rules_engine.evaluate.alerting import episode_extremes, firing_episodes, steps_for
from rules_engine.evaluate.engine import Backtest, RuleOutcome, align, fetch_plan, select_rules
from rules_engine.evaluate.findings import SEVERITIES
from rules_engine.evaluate.series import RangeWindow, findings_from_episodes
from rules_engine.promql.kinds import RuleKind
from rules_engine.promql.labels import guard_matching
from rules_engine.source.base import Source, SourceError
from rules_engine.spec.loader import RuleSet
from rules_engine.spec.models import RulePack, format_duration


@dataclass(frozen=True)
class LevelQuery:
    """One severity level of a rule's alert as a range query: the condition with every signal written out."""

    severity: str
    bound: float
    expr: str


def level_queries(kind: RuleKind, rule, pack: RulePack, step: pd.Timedelta) -> list[LevelQuery]:
    """The rule's alert per level (base level first), as the compiled alerting rules compare it."""
    condition = kind.alert_condition(rule, pack, step)
    signal, *guard = kind.signals(rule, pack)
    on = guard_matching(pack.keep_labels, signal, guard[0]) if guard else ()
    guard_ref = f"({guard[0]})" if guard else None
    return [LevelQuery(level.severity, level.bound, condition.expr(level, f"({signal})", guard_ref, on))
            for level in condition.levels]


def run_promql_backtest(ruleset: RuleSet, source: Source, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta,
                        kinds: Mapping[str, RuleKind], names: Iterable[str] | None = None) -> Backtest:
    start, end = align(start, end, step)
    # The pandas engine fetches every query from one start (the largest warm-up): start the same grid here, so
    # `for` state builds up from the same first evaluation in both engines.
    _, fetch_start = fetch_plan(ruleset, start, step, kinds, names)
    window = RangeWindow(start=start, end=end, step=step)
    backtest = Backtest(start=start, end=end, step=step)
    for pack, rule in select_rules(ruleset, names):
        kind = kinds[rule.type]
        levels = level_queries(kind, rule, pack, step)
        base = levels[0]
        outcome = RuleOutcome(pack=pack.name, rule=rule.name, kind=rule.type, category=rule.category,
                              queries={"alert": base.expr})
        backtest.outcomes.append(outcome)
        try:
            frame = source.query_range(base.expr, fetch_start, end, step)
        except SourceError as error:
            outcome.error = str(error)
            continue
        outcome.series = frame.series_count
        outcome.warnings = list(frame.warnings)
        values = frame.values.to_numpy(dtype=np.float64)
        active = ~np.isnan(values)
        episodes = firing_episodes(active, steps_for(rule.for_, step), steps_for(rule.keep_firing_for, step))
        episodes = window.overlapping(episodes, frame.values.index)
        above = rule.direction == "above"
        peaks = episode_extremes(values, episodes, largest=above)
        try:
            if kind.grade_peaks is not None:
                severities = kind.grade_peaks(rule, peaks)
            else:
                severities = _level_severities(levels, frame, episodes, source, fetch_start, end, step)
        except SourceError as error:
            outcome.error = str(error)
            continue
        details = {"engine": "promql", "expr": base.expr, "step": format_duration(step)}
        found = findings_from_episodes(rule, pack, rule.type, frame, frame.values.index, episodes, peaks, severities,
                                       base.bound, details)
        outcome.findings = len(found)
        backtest.findings.extend(found)
    backtest.sort_findings()
    return backtest


def _level_severities(levels: list[LevelQuery], frame, episodes, source: Source, start, end, step) -> list[str]:
    """Per episode, the most severe level whose condition held at some evaluation within it."""
    severities = np.full(len(episodes), levels[0].severity, dtype=object)
    if len(episodes) == 0 or len(levels) == 1:
        return list(severities)
    keys = [tuple(sorted(frame.series_labels(int(c)).items())) for c in episodes.column]
    for level in sorted(levels[1:], key=lambda level: SEVERITIES.index(level.severity)):
        answer = source.query_range(level.expr, start, end, step)
        columns = {tuple(sorted(answer.series_labels(c).items())): c for c in range(answer.series_count)}
        held = ~np.isnan(answer.values.to_numpy(dtype=np.float64))
        for index, key in enumerate(keys):
            column = columns.get(key)
            if column is None:
                continue
            rows = held[episodes.firing_row[index]:episodes.resolved_row[index], column]
            if rows.any():
                severities[index] = level.severity
    return list(severities)
