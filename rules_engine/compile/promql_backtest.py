"""`evaluate --engine promql`: backtest the *generated* alert expressions by range-querying them in Prometheus.

Each rule's base alert (its threshold level) is compiled with the backtest step as the subquery step, its recorded
series expanded back into the expressions they record (history holds no recorded series), and range-queried over
the backtest range. A sample in the answer means the condition held at that evaluation, as it would for the
alerting rule; `for` and `keep_firing_for` are then applied by the same code the pandas engine uses
(evaluate/alerting.py), so the two engines differ only in who computed the condition.

Severity: threshold rules grade the episode's peak with the engine's ladder (the compiled levels are that ladder);
other kinds take the highest compiled level whose condition held at some evaluation of the episode.
What the compiled alerts leave out (regression's statistical test, trend's R² filter) is left out here too: that
is the point of this engine, to show what the live path would do.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from rules_engine.compile.prometheus import AlertingRule, compile_pack
from rules_engine.evaluate import threshold
from rules_engine.evaluate.alerting import episode_extremes, firing_episodes, steps_for
from rules_engine.evaluate.engine import Backtest, RuleOutcome, align, fetch_plan, select_rules
from rules_engine.evaluate.findings import SEVERITIES, severity_rank
from rules_engine.evaluate.series import EvaluationError, RangeWindow, findings_from_episodes
from rules_engine.source.base import Source, SourceError
from rules_engine.spec.loader import RuleSet
from rules_engine.spec.models import format_duration


def compiled_alerts(ruleset: RuleSet, step: pd.Timedelta) -> dict[str, list[AlertingRule]]:
    """rule name → its alerts (base level first), compiled with `step` as the subquery step."""
    found: dict[str, list[AlertingRule]] = {}
    for pack in ruleset.packs:
        for alert in compile_pack(pack, step).alerts:
            found.setdefault(alert.rule, []).append(alert)
    return found


def run_promql_backtest(ruleset: RuleSet, source: Source, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta,
                        names: Iterable[str] | None = None) -> Backtest:
    start, end = align(start, end, step)
    if end <= start:
        raise EvaluationError(f"empty range: start {start.isoformat()} is not before end {end.isoformat()}")
    alerts_by_rule = compiled_alerts(ruleset, step)
    # The pandas engine fetches every query from one start (the largest warm-up): start the same grid here, so
    # `for` state builds up from the same first evaluation in both engines.
    _, fetch_start = fetch_plan(ruleset, start, step, names)
    window = RangeWindow(start=start, end=end, step=step)
    backtest = Backtest(start=start, end=end, step=step)
    for pack, rule in select_rules(ruleset, names):
        alerts = alerts_by_rule.get(rule.name)
        outcome = RuleOutcome(pack=pack.name, rule=rule.name, kind=rule.type, queries={})
        backtest.outcomes.append(outcome)
        if not alerts:
            outcome.error = f"rule type {rule.type!r} has no compiled Prometheus alert"
            continue
        base = alerts[0]
        outcome.queries = {"alert": base.expanded_expr}
        try:
            frame = source.query_range(base.expanded_expr, fetch_start, end, step)
        except SourceError as error:
            outcome.error = str(error)
            continue
        outcome.series = frame.series_count
        values = frame.values.to_numpy(dtype=np.float64)
        active = ~np.isnan(values)
        episodes = firing_episodes(active, steps_for(rule.for_, step), steps_for(rule.keep_firing_for, step))
        episodes = window.overlapping(episodes, frame.values.index)
        above = getattr(rule, "direction", "above") == "above"
        peaks = episode_extremes(values, episodes, largest=above)
        try:
            if rule.type == "threshold":
                severities = threshold.severity_of(rule, peaks)
            else:
                severities = _level_severities(alerts, frame, episodes, source, fetch_start, end, step)
        except SourceError as error:
            outcome.error = str(error)
            continue
        details = {"engine": "promql", "expr": base.expanded_expr, "step": format_duration(step)}
        found = findings_from_episodes(rule, pack, rule.type, frame, frame.values.index, episodes, peaks, severities,
                                       base.bound, details)
        outcome.findings = len(found)
        backtest.findings.extend(found)
    backtest.findings.sort(key=lambda f: (-severity_rank(f.severity), -(f.duration(end) / step), f.rule, f.start))
    return backtest


def _level_severities(alerts: list[AlertingRule], frame, episodes, source: Source, start, end, step) -> list[str]:
    """Per episode, the most severe level whose condition held at some evaluation within it."""
    severities = np.full(len(episodes), alerts[0].severity, dtype=object)
    if len(episodes) == 0 or len(alerts) == 1:
        return list(severities)
    keys = [tuple(sorted(frame.series_labels(int(c)).items())) for c in episodes.column]
    for alert in sorted(alerts[1:], key=lambda a: SEVERITIES.index(a.severity)):
        level = source.query_range(alert.expanded_expr, start, end, step)
        columns = {tuple(sorted(level.series_labels(c).items())): c for c in range(level.series_count)}
        held = ~np.isnan(level.values.to_numpy(dtype=np.float64))
        for index, key in enumerate(keys):
            column = columns.get(key)
            if column is None:
                continue
            rows = held[episodes.firing_row[index]:episodes.resolved_row[index], column]
            if rows.any():
                severities[index] = alert.severity
    return list(severities)
