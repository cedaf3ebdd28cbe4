"""Threshold tuning: one threshold rule's alerts over history for many thresholds (and `for` durations) at once.

The rule's compared value is computed once (fetch, window statistic, guard); the runs of "condition holds" for
every candidate threshold come from one pass over it (evaluate/alerting.threshold_runs: each step of a series
starts or ends a run for a range of sorted thresholds, found by binary search, so the work does not grow with
thresholds × rows), and `for`/`keep_firing_for` apply to those runs with the engine's own alert-state code, once
per `for` candidate. So a sweep of 50 thresholds costs little more than one backtest (bench/bench_tune.py).

Per candidate: alerts (firing episodes overlapping the range, over all series) and alerts per day, the share of
series-time spent firing and, given labelled incidents (spec/incidents.py) of the rule's category, how many were
detected (an alert on a matching series fired during the incident, or within `grace` after it), the delay from
the incident's start to the first firing, and the alerts that overlapped no incident.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from rules_engine.evaluate.alerting import Episodes, episodes_from_runs, steps_for, threshold_runs
from rules_engine.evaluate.engine import align, fetch_all, is_filtering, rule_queries, select_rules
from rules_engine.evaluate.series import EvaluationError, RangeWindow, guard_holds
from rules_engine.evaluate.threshold import compared_values
from rules_engine.promql.kinds import RuleKind
from rules_engine.source.base import Source, SourceError
from rules_engine.source.frame import RangeFrame
from rules_engine.spec.incidents import Incident
from rules_engine.spec.loader import RuleSet
from rules_engine.spec.models import RulePack, ThresholdRule

DEFAULT_CANDIDATES = 25
DEFAULT_GRACE = pd.Timedelta("10m")


@dataclass(frozen=True)
class Candidate:
    threshold: float
    for_: pd.Timedelta
    alerts: int
    alerts_per_day: float
    firing_share: float  # of series × range time
    detected: int | None = None  # of the incidents judged; None without incidents
    missed: tuple[str, ...] = ()
    median_delay: pd.Timedelta | None = None
    max_delay: pd.Timedelta | None = None
    unmatched_alerts: int | None = None  # alerts that overlapped no incident (with grace)


@dataclass
class Sweep:
    rule: str
    category: str
    direction: str
    threshold: float  # the rule's own
    for_: pd.Timedelta
    start: pd.Timestamp
    end: pd.Timestamp
    step: pd.Timedelta
    series: int
    candidates: list[Candidate] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)  # judged: the rule's category, a matching series
    unmatched_incidents: list[Incident] = field(default_factory=list)  # of its category, but no series matches
    filtered_at: float | None = None  # the data holds only samples past this threshold (comparison in Prometheus)
    grace: pd.Timedelta = DEFAULT_GRACE  # an alert this long after an incident's end still detected it
    notes: list[str] = field(default_factory=list)

    @property
    def days(self) -> float:
        return (self.end - self.start) / pd.Timedelta("1D")


def run_tune(ruleset: RuleSet, source: Source, name: str, start: pd.Timestamp, end: pd.Timestamp,
             step: pd.Timedelta, kinds: Mapping[str, RuleKind], thresholds: Sequence[float] | None = None,
             fors: Sequence[pd.Timedelta] | None = None, incidents: Iterable[Incident] = (),
             grace: pd.Timedelta = DEFAULT_GRACE) -> Sweep:
    """Sweep rule `name` over [start, end] at `step`; default thresholds around its own, default `for` its own."""
    pack, rule = _threshold_rule(ruleset, name)
    start, end = align(start, end, step)
    fors = sorted(set(fors or [rule.for_]))
    # The warm-up of a backtest of the rule with the longest `for` swept: the same history, so the same episodes.
    fetch_start = (start - kinds[rule.type].warmup(rule.model_copy(update={"for_": max(fors)}))).floor(step)
    frames, filtered = _fetch(ruleset, source, pack, rule, fetch_start, end, step, kinds)
    window = RangeWindow(start=start, end=end, step=step)
    values = compared_values(rule, pack, frames, window)
    observed = values.to_numpy(dtype=float)
    first_row = int(values.index.searchsorted(start))

    sweep = Sweep(rule=rule.name, category=rule.category, direction=rule.direction, threshold=rule.threshold,
                  for_=rule.for_, start=start, end=end, step=step, series=observed.shape[1],
                  filtered_at=rule.threshold if filtered else None, grace=grace)
    if thresholds is None:
        thresholds = default_thresholds(rule, observed[first_row:], sweep.filtered_at)
    # The rule's own threshold is always a row: the reference the others are read against.
    candidates = np.array(sorted({float(t) for t in thresholds} | {rule.threshold}), dtype=float)
    if filtered:
        looser = candidates < rule.threshold if rule.direction == "above" else candidates > rule.threshold
        if looser.any():
            sweep.notes.append(f"{int(looser.sum())} threshold(s) looser than {rule.threshold:g} left out: the data "
                               "holds only samples past the rule's own threshold (its comparison ran in Prometheus; "
                               "query Prometheus directly to sweep below it)")
            candidates = candidates[~looser]
    if len(candidates) == 0:
        raise EvaluationError("no threshold left to sweep")

    signal = frames["windowed"] if "windowed" in frames else frames["signal"]
    judged = [i for i in incidents if i.category in (None, rule.category)]
    matching = [_matching_columns(signal, incident) for incident in judged]
    sweep.incidents = [incident for incident, found in zip(judged, matching) if len(found)]
    sweep.unmatched_incidents = [incident for incident, found in zip(judged, matching) if not len(found)]
    columns = [found for found in matching if len(found)]

    # Where the guard fails the condition cannot hold: a missing value. A `below` rule is `-value > -threshold`.
    rows, series = observed.shape
    if "guard" in frames:
        observed = np.where(guard_holds(signal, frames["guard"], pack.keep_labels), observed, np.nan)
    if rule.direction == "below":
        observed, candidates = -observed, -candidates[::-1]
    runs = threshold_runs(observed, candidates)  # column k · series + s: candidate k on series s
    if rule.direction == "below":
        candidates = -candidates  # back to the rule's values, in the order of the runs' columns
    keep_steps = steps_for(rule.keep_firing_for, step)
    for for_ in fors:
        episodes = window.overlapping(episodes_from_runs(runs, rows, steps_for(for_, step), keep_steps), values.index)
        sweep.candidates.extend(_score(episodes, candidates, series, first_row, for_, sweep, columns, values.index))
    sweep.candidates.sort(key=lambda candidate: (candidate.for_, candidate.threshold))
    return sweep


def default_thresholds(rule: ThresholdRule, observed: np.ndarray, filtered_at: float | None = None,
                       count: int = DEFAULT_CANDIDATES) -> list[float]:
    """Candidates from half to one and a half times the rule's threshold, kept within the values seen (3 significant
    digits, the threshold itself included); from the values' quantiles when the threshold is not positive."""
    threshold = rule.threshold
    finite = observed[np.isfinite(observed)]
    if threshold > 0:
        low, high = threshold * 0.5, threshold * 1.5
        if len(finite):
            low, high = max(low, float(finite.min())), min(high, float(finite.max()))
        low, high = min(low, threshold), max(high, threshold)
    elif len(finite):
        low, high = (float(q) for q in np.quantile(finite, [0.05, 0.999]))
    else:
        return [threshold]
    if filtered_at is not None:  # only the strict side of the rule's threshold is in the data
        low, high = (threshold, max(high, threshold)) if rule.direction == "above" else (min(low, threshold), threshold)
    grid = np.linspace(low, high, count)
    return sorted({float(f"{value:.3g}") for value in grid} | {threshold})


def _threshold_rule(ruleset: RuleSet, name: str) -> tuple[RulePack, ThresholdRule]:
    pairs = select_rules(ruleset, [name])
    if not pairs:
        raise EvaluationError(f"{name} is an SLO: tune sweeps a threshold rule's threshold")
    pack, rule = pairs[0]
    if not isinstance(rule, ThresholdRule):
        raise EvaluationError(f"{name} is a {rule.type} rule: tune sweeps threshold rules (above:/below:)")
    return pack, rule


def _fetch(ruleset: RuleSet, source: Source, pack: RulePack, rule: ThresholdRule, start: pd.Timestamp,
           end: pd.Timestamp, step: pd.Timedelta, kinds: Mapping[str, RuleKind]
           ) -> tuple[dict[str, RangeFrame], bool]:
    """The rule's raw signal (and guard), so every threshold can be judged; else (a snapshot recorded without
    them) the queries a backtest sends, which may hold only the samples past the rule's own threshold."""
    signal, *guard = kinds[rule.type].signals(rule, pack)
    raw = {"signal": signal, **({"guard": guard[0]} if guard else {})}
    planned = rule_queries(ruleset.rules(), step, kinds)[rule.name]
    first_error = None
    for queries in (raw, planned):
        frames, errors = fetch_all(source, list(dict.fromkeys(queries.values())), start, end, step)
        if not errors:
            return ({role: frames[query] for role, query in queries.items()},
                    queries is planned and any(is_filtering(query) for query in planned.values()))
        first_error = first_error or next(iter(errors.values()))
    raise SourceError(first_error)


def _matching_columns(signal: RangeFrame, incident: Incident) -> np.ndarray:
    """The signal's series carrying every label of the incident (none when the signal lacks one of them)."""
    table = signal.labels
    match = np.ones(signal.series_count, dtype=bool)
    for name, value in incident.labels.items():
        if name not in table.columns:
            return np.empty(0, dtype=np.int64)
        match &= table[name].to_numpy() == value
    return np.flatnonzero(match)


def _score(episodes: Episodes, thresholds: np.ndarray, series: int, first_row: int, for_: pd.Timedelta,
           sweep: Sweep, columns: list[np.ndarray], grid: pd.DatetimeIndex) -> list[Candidate]:
    count = len(thresholds)
    candidate = episodes.column // series
    alerts = np.bincount(candidate, minlength=count)
    # Time from firing (or the range start) to resolution (or the range end), as findings measure it.
    last_row = episodes.rows - 1
    firing_rows = np.minimum(episodes.resolved_row, last_row) - np.maximum(episodes.firing_row, first_row)
    firing = np.bincount(candidate, weights=firing_rows, minlength=count)
    range_rows = last_row - first_row
    share = firing / (range_rows * series) if range_rows and series else np.zeros(count)

    incidents = sweep.incidents
    delays = np.full((len(incidents), count), np.inf)  # rows from incident start to first firing, per candidate
    matched = np.zeros(len(episodes), dtype=bool)
    grace_rows = steps_for(sweep.grace, sweep.step)
    for index, incident in enumerate(incidents):
        start_row = int(grid.searchsorted(incident.start))
        end_row = int(grid.searchsorted(incident.end)) if incident.end is not None else episodes.rows
        end_row = min(end_row + grace_rows, episodes.rows)
        on_series = np.isin(episodes.column % series, columns[index])
        overlaps = on_series & (episodes.firing_row < end_row) & (episodes.resolved_row > start_row)
        matched |= overlaps
        delay = np.maximum(episodes.firing_row[overlaps] - start_row, 0).astype(float)
        np.minimum.at(delays[index], candidate[overlaps], delay)

    days = sweep.days
    found = []
    for k in range(count):
        scored = {}
        if incidents or sweep.unmatched_incidents:
            hit = np.isfinite(delays[:, k])
            seen = delays[hit, k]
            scored = dict(
                detected=int(hit.sum()),
                missed=tuple(incident.describe() for incident, was in zip(incidents, hit) if not was),
                median_delay=sweep.step * float(np.median(seen)) if hit.any() else None,
                max_delay=sweep.step * float(seen.max()) if hit.any() else None,
                unmatched_alerts=int(np.sum(~matched & (candidate == k))),
            )
        found.append(Candidate(threshold=float(thresholds[k]), for_=for_, alerts=int(alerts[k]),
                               alerts_per_day=alerts[k] / days if days else float("nan"),
                               firing_share=float(share[k]), **scored))
    return found
