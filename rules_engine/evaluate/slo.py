"""SLO evaluation: attainment, error budget, burn rates and multiwindow multi-burn-rate findings.

Everything is computed from events on the evaluation grid:
- ratio and latency SLIs fetch their **counters** per series (no `rate()`/`increase()` in the query), take the
  increase between consecutive grid points (a drop is a counter reset: the new value is the increase, as
  Prometheus' `increase()` assumes), and sum the increases of the series of each group (`group_by`). Events in a
  window are then differences of cumulative sums, exact at grid points and free of `increase()`'s
  extrapolation, so attainment and burn rates can be checked against counts taken from the raw data;
- timeslice SLIs turn every slice (aligned to multiples of `slice`) into one event at the slice's last grid point:
  good when the slice's value meets the target, bad otherwise; slices without samples are not events.

With `errors` events E and `total` events T over a window W:
    error ratio(W) = E(W) / T(W),   burn rate(W) = error ratio(W) / (1 - objective)
Attainment is 1 - error ratio over the period ending at the range end; the budget remaining is
1 - (1 - attainment) / (1 - objective) (negative once overspent), and as time it is that fraction of the
period's allowed bad time, (1 - objective) × period.

The alert catalog (windows, budget percentages, severities) is data, one per SLO period:
rules_engine/data/burn_windows/<period>.yaml or the SLO's `alerting.windows`,
read by rules_engine/promql/burn_windows.py.
A pair fires while the burn rate over both its long and its short window exceeds
factor = budget% / 100 × period / long window, and (ratio and latency SLIs) while at least `min_event_rate`
events per second arrived over the long window.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

from rules_engine.evaluate.alerting import episode_extremes, firing_episodes
from rules_engine.evaluate.findings import Finding
from rules_engine.evaluate.series import RangeWindow
from rules_engine.promql.burn_windows import AlertPair, WindowCatalog, slo_catalog
from rules_engine.promql.slo import latency_selectors, slo_queries
from rules_engine.source.base import Source, SourceError
from rules_engine.source.frame import RangeFrame, partial_data
from rules_engine.spec.models import format_duration
from rules_engine.spec.slo import SLO
from rules_engine.spec.times import rfc3339

# -- results -------------------------------------------------------------------------------------------------------

@dataclass
class SLOResult:
    """One SLO over one series group at the end of the evaluated range.

    Fields: `slo`, `sli` (ratio | latency | timeslices), `objective` (percent), `period`, `labels` (the group's
    `group_by` labels), `period_start`/`end` (the period the attainment covers, clipped to the data), `coverage`
    (share of the period that had data), `good`/`total` (events or slices in the period), `attainment` (fraction
    good), `compliant` (attainment >= objective), `budget_remaining` (fraction of the error budget left, negative
    when overspent), `budget_remaining_time` (that fraction of the allowed bad time), `burn_rates` (window ->
    burn rate at the range end), `worst_burn` (highest burn rate over the first alert pair's long window within
    the range: window, value, at), for timeslices also `op`, `target`, `current_value` (the last slice's value),
    `value_at_objective` (the slice value the objective's share of slices meets) and `deviation_percent`
    ((value_at_objective - target) / |target| × 100); `findings` (burn alerts), `warnings`, `error`.
    """

    slo: str
    sli: str
    objective: float
    period: pd.Timedelta
    labels: dict[str, str] = field(default_factory=dict)
    period_start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    coverage: float = 0.0
    good: float = 0.0
    total: float = 0.0
    attainment: float | None = None
    compliant: bool | None = None
    budget_remaining: float | None = None
    budget_remaining_time: pd.Timedelta | None = None
    burn_rates: dict[str, float | None] = field(default_factory=dict)
    worst_burn: dict[str, Any] | None = None
    op: str | None = None
    target: float | None = None
    current_value: float | None = None
    value_at_objective: float | None = None
    deviation_percent: float | None = None
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    # Budget remaining at every step of the range (the period ending at that step): the report's burn-down.
    burn_down: pd.Series | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON export's entry of the `slos` list (timestamps RFC 3339, durations in seconds)."""
        return {
            "slo": self.slo,
            "sli": self.sli,
            "objective": self.objective,
            "period": format_duration(self.period),
            "period_seconds": self.period.total_seconds(),
            "labels": dict(self.labels),
            "period_start": _iso(self.period_start),
            "end": _iso(self.end),
            "coverage": _number(self.coverage),
            "good": _number(self.good),
            "total": _number(self.total),
            "attainment": _number(self.attainment),
            "compliant": self.compliant,
            "budget_remaining": _number(self.budget_remaining),
            "budget_remaining_seconds": (None if self.budget_remaining_time is None
                                         else self.budget_remaining_time.total_seconds()),
            "burn_rates": {window: _number(value) for window, value in self.burn_rates.items()},
            "worst_burn": None if self.worst_burn is None else {
                "window": self.worst_burn["window"], "value": _number(self.worst_burn["value"]),
                "at": _iso(self.worst_burn["at"])},
            "op": self.op,
            "target": self.target,
            "current_value": _number(self.current_value),
            "value_at_objective": _number(self.value_at_objective),
            "deviation_percent": _number(self.deviation_percent),
            "findings": len(self.findings),
            "warnings": list(self.warnings),
            "error": self.error,
        }


def slo_findings(results: Iterable[SLOResult]) -> list[Finding]:
    return [finding for result in results for finding in result.findings]


def _iso(value: pd.Timestamp | None) -> str | None:
    return rfc3339(value, "auto")


def _number(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# -- evaluation --------------------------------------------------------------------------------------------------------

def slo_fetch_start(slo: SLO, catalog: WindowCatalog, start: pd.Timestamp, end: pd.Timestamp,
                    step: pd.Timedelta) -> pd.Timestamp:
    """How early an SLO's queries start: the whole period before `end`, and the longest burn window before `start`."""
    return (min(start - max(catalog.windows), end - slo.period) - step).floor(step)


def evaluate_slos(slos: Iterable[SLO], source: Source, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta,
                  check_buckets: bool = True) -> list[SLOResult]:
    """Evaluate every SLO over [start, end] at `step`: one SLOResult per SLO and series group, findings inside.

    Burn-alert findings are those firing within [start, end]; attainment covers the period ending at `end`
    (history before `start` is fetched for it and for the burn windows). A query that fails gives a result with
    `error` set instead of raising, like a rule that cannot be evaluated.
    """
    start, end = start.floor(step), end.floor(step)
    results: list[SLOResult] = []
    for slo in slos:
        try:
            catalog = slo_catalog(slo)
        except ValueError as error:
            results.append(SLOResult(slo.name, slo.sli.type, slo.objective, slo.period, error=str(error)))
            continue
        fetch_start = slo_fetch_start(slo, catalog, start, end, step)
        bucket_warning = None
        if slo.sli.latency is not None and check_buckets:
            try:
                bucket_warning = check_latency_bucket(slo, source)
            except ValueError as error:
                results.append(SLOResult(slo.name, slo.sli.type, slo.objective, slo.period, error=str(error)))
                continue
        try:
            frames = {role: source.query_range(query, fetch_start, end, step) for role, query in slo_queries(slo).items()}
        except SourceError as error:
            results.append(SLOResult(slo.name, slo.sli.type, slo.objective, slo.period, error=str(error)))
            continue
        found = evaluate_slo(slo, frames, RangeWindow(start, end, step), catalog)
        notes = [bucket_warning] if bucket_warning else []
        notes += [f"Prometheus warned (partial data): {warning}" for warning in partial_data(frames.values())]
        for result in found:
            result.warnings.extend(notes)
        results.extend(found)
    return results


def check_latency_bucket(slo: SLO, source: Source) -> str | None:
    """Raise ValueError when the latency threshold is not a bucket boundary of the histogram in Prometheus.

    Sources that cannot list label values (a recorded snapshot) skip the check and say so in a warning.
    """
    latency = slo.sli.latency
    assert latency is not None
    lookup = getattr(source, "label_values", None)
    if lookup is None:  # a recorded snapshot: evaluate_slo still refuses a threshold no bucket series matched
        return None
    values = []
    for match in latency_selectors(slo, "_bucket"):
        try:
            values += lookup("le", match=match)
        except SourceError as error:
            return f"bucket boundaries not checked: {error}"
    match = " or ".join(latency_selectors(slo, "_bucket"))
    bounds = sorted({float(v) for v in values if v not in ("+Inf", "Inf")})
    if not bounds:
        raise ValueError(f"SLO {slo.name}: no buckets of {latency.histogram} match {match} in Prometheus; check the "
                         "histogram name and the selector")
    if not any(math.isclose(b, latency.threshold, rel_tol=1e-9) for b in bounds):
        raise ValueError(f"SLO {slo.name}: latency threshold {latency.threshold!r} is not a bucket boundary of "
                         f"{latency.histogram}; its buckets are le={', '.join(f'{b:g}' for b in bounds)}")
    return None


def counter_increases(values: np.ndarray) -> np.ndarray:
    """Per-step increases of counters (rows × series): a drop is a reset, after which the new value is the increase.

    Gaps carry the last value over, so the events of a gap are counted where the series comes back; the first
    sample of a series is its baseline, not an increase (as Prometheus' increase() treats it).
    """
    carried = pd.DataFrame(values).ffill().to_numpy()
    previous = np.empty_like(carried)
    previous[0] = np.nan
    previous[1:] = carried[:-1]
    increase = values - previous
    increase = np.where(increase < 0, values, increase)
    return np.nan_to_num(increase, nan=0.0)


def _groups(frames: list[RangeFrame], group_by: list[str]) -> tuple[list[tuple], list[np.ndarray]]:
    """The union of group keys over the frames, and per frame each series' group index."""
    keys_per_frame = []
    for frame in frames:
        labels = frame.labels
        columns = [labels[name] if name in labels.columns else pd.Series("", index=labels.index) for name in group_by]
        keys_per_frame.append([tuple(str(c[i]) for c in columns) for i in labels.index])
    keys = sorted({key for keys in keys_per_frame for key in keys})
    position = {key: index for index, key in enumerate(keys)}
    return keys, [np.array([position[key] for key in frame_keys], dtype=np.int64) for frame_keys in keys_per_frame]


def _sum_by_group(events: np.ndarray, group_of: np.ndarray, groups: int) -> np.ndarray:
    membership = np.zeros((events.shape[1], groups))
    membership[np.arange(events.shape[1]), group_of] = 1.0
    return events @ membership


def _timeslice_events(slo: SLO, frame: RangeFrame, step: pd.Timedelta) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bad slice events, slice events, slice values) on the grid: one event per slice at its last grid point."""
    sli = slo.sli.timeslices
    assert sli is not None
    values = frame.values
    slice_length = sli.slice or step
    if slice_length < step or slice_length % step != pd.Timedelta(0):
        raise ValueError(f"slice {format_duration(slice_length)} must be a multiple of the step {format_duration(step)}")
    # Label each grid point with the end of its slice (slices are (k·slice, (k+1)·slice], aligned like rule groups).
    slice_end = values.index.ceil(slice_length)
    grouped = values.groupby(slice_end)
    stat = getattr(grouped, sli.slice_stat)() if sli.slice_stat != "last" else grouped.last()
    meets = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}[sli.op]
    observed = stat.to_numpy()
    present = ~np.isnan(observed)
    bad = present & ~meets(np.where(present, observed, 0.0), sli.target)
    rows = values.index.get_indexer(stat.index)  # slice ends on the grid (-1 if the slice ends after the range)
    on_grid = rows >= 0
    total = np.zeros(values.shape)
    errors = np.zeros(values.shape)
    slice_values = np.full(values.shape, np.nan)
    total[rows[on_grid]] = present[on_grid]
    errors[rows[on_grid]] = bad[on_grid]
    slice_values[rows[on_grid]] = observed[on_grid]
    return errors, total, slice_values


def evaluate_slo(slo: SLO, frames: dict[str, RangeFrame], window: RangeWindow,
                 catalog: WindowCatalog | None = None) -> list[SLOResult]:
    """Evaluate one SLO on already fetched frames (roles as slo_queries gives them)."""
    catalog = catalog or slo_catalog(slo)
    step = window.step
    grid = next(iter(frames.values())).values.index
    base = dict(slo=slo.name, sli=slo.sli.type, objective=slo.objective, period=slo.period)
    slice_values = None
    latency = slo.sli.latency
    if latency is not None and frames["good"].series_count == 0 and frames["total"].series_count > 0:
        return [SLOResult(**base, error=f"latency threshold {latency.threshold!r} is not a bucket boundary of "
                                        f"{latency.histogram}: no {latency.histogram}_bucket series has that `le`")]
    try:
        if slo.sli.timeslices is not None:
            keys, (group_of,) = _groups([frames["signal"]], slo.group_by)
            bad, total, slice_values = _timeslice_events(slo, frames["signal"], step)
            errors = _sum_by_group(bad, group_of, len(keys))
            totals = _sum_by_group(total, group_of, len(keys))
        else:
            event_role = "good" if "good" in frames else "errors"
            keys, (event_group, total_group) = _groups([frames[event_role], frames["total"]], slo.group_by)
            events = _sum_by_group(counter_increases(frames[event_role].values.to_numpy()), event_group, len(keys))
            totals = _sum_by_group(counter_increases(frames["total"].values.to_numpy()), total_group, len(keys))
            # Good events can only be fewer than total ones; a scrape that saw the bucket before the count is noise.
            errors = np.clip(totals - events, 0.0, None) if event_role == "good" else events
    except ValueError as error:
        return [SLOResult(**base, error=str(error))]
    if not keys:
        return [SLOResult(**base, error="no series: the SLI's queries returned nothing over the range")]

    cumulative_errors = np.vstack([np.zeros((1, len(keys))), np.cumsum(errors, axis=0)])
    cumulative_total = np.vstack([np.zeros((1, len(keys))), np.cumsum(totals, axis=0)])

    end_row = int(grid.searchsorted(window.end, side="right")) - 1
    start_row = int(grid.searchsorted(window.start))
    # Burn rates are judged from one longest window before the range start (so an alert already firing at the
    # start is reported from when it began) to the range end; the 30-day history before that only feeds the
    # period's attainment, which needs two rows of the cumulative sums.
    judged_first = max(start_row - int(round(max(catalog.windows) / step)), 0)
    judged = grid[judged_first:end_row + 1]

    def over(cumulative: np.ndarray, steps: int) -> np.ndarray:
        """Events in (t - steps·step, t] for every judged row t (NaN where the grid holds less history)."""
        summed = np.full((len(judged), cumulative.shape[1]), np.nan)
        first_full = max(steps - judged_first, 0)  # judged rows before this one lack the history
        if first_full < len(judged):
            rows = np.arange(judged_first + first_full, end_row + 1)
            np.subtract(cumulative[rows + 1], cumulative[rows + 1 - steps], out=summed[first_full:])
        return summed

    budget = slo.error_budget
    burn: dict[pd.Timedelta, np.ndarray] = {}
    event_rate: dict[pd.Timedelta, np.ndarray] = {}
    warnings: list[str] = []
    for length in catalog.windows:
        steps = int(round(length / step))
        if steps < 1 or steps >= len(grid):
            warnings.append(f"burn window {format_duration(length)} does not fit a {format_duration(step)} step over "
                            "the fetched range")
            burn[length] = np.full((len(judged), len(keys)), np.nan)
            event_rate[length] = np.full((len(judged), len(keys)), np.nan)
            continue
        window_total = over(cumulative_total, steps)
        with np.errstate(divide="ignore", invalid="ignore"):
            burn[length] = over(cumulative_errors, steps) / window_total / budget
        event_rate[length] = window_total / length.total_seconds()

    period_steps = int(round(slo.period / step))
    first_row = max(end_row - period_steps, 0)  # events in (first_row, end_row]
    period_errors = cumulative_errors[end_row + 1] - cumulative_errors[first_row + 1]
    period_total = cumulative_total[end_row + 1] - cumulative_total[first_row + 1]
    covered = (end_row - first_row) / period_steps if period_steps else 0.0
    if covered < 0.999:
        warnings.append(f"attainment covers {covered:.0%} of the {format_duration(slo.period)} period: the data starts "
                        f"at {grid[0].isoformat()}")

    pairs = [p for p in catalog.pairs if (p.alert == "page" and slo.alerting.page) or
             (p.alert == "ticket" and slo.alerting.ticket)]
    for pair in pairs:
        if pair.factor(slo.period) * budget >= 1.0:
            warnings.append(f"{pair.alert} {pair.speed} alert can never fire: its factor {pair.factor(slo.period):.3g} × "
                            f"error budget {budget:.3g} is >= 1 (objective {slo.objective}% is too low for it)")
    findings = _burn_findings(slo, pairs, burn, event_rate, keys, judged, window)
    burn_down = _budget_remaining(cumulative_errors, cumulative_total, start_row, end_row, period_steps, budget)
    worst_window = catalog.pairs[0].long if catalog.pairs else catalog.windows[0]
    results = []
    for index, key in enumerate(keys):
        labels = {name: value for name, value in zip(slo.group_by, key) if value != ""}
        result = SLOResult(**base, labels=labels, period_start=grid[first_row], end=grid[end_row], coverage=covered,
                           good=float(period_total[index] - period_errors[index]), total=float(period_total[index]),
                           warnings=list(warnings))
        if period_total[index] > 0:
            result.attainment = 1.0 - period_errors[index] / period_total[index]
            result.compliant = bool(result.attainment >= slo.target - 1e-12)
            result.budget_remaining = 1.0 - (1.0 - result.attainment) / budget
            result.budget_remaining_time = pd.Timedelta(seconds=result.budget_remaining * budget
                                                        * slo.period.total_seconds())
        result.burn_rates = {format_duration(length): _at(burn[length], len(judged) - 1, index)
                             for length in catalog.burn_windows}
        in_range = burn[worst_window][start_row - judged_first:, index]
        if np.isfinite(in_range).any():
            worst = int(np.nanargmax(np.where(np.isfinite(in_range), in_range, np.nan)))
            result.worst_burn = {"window": format_duration(worst_window), "value": float(in_range[worst]),
                                 "at": grid[start_row + worst]}
        if slice_values is not None:
            _timeslice_summary(slo, result, slice_values, group_of, index, first_row, end_row)
        result.findings = [f for f in findings if tuple(f.details["group"]) == key]
        result.burn_down = pd.Series(burn_down[:, index], index=grid[start_row:end_row + 1])
        results.append(result)
    return results


def _budget_remaining(cumulative_errors: np.ndarray, cumulative_total: np.ndarray, start_row: int, end_row: int,
                      period_steps: int, budget: float) -> np.ndarray:
    """(range rows × groups): the budget remaining for the period ending at each row, as at the range end."""
    rows = np.arange(start_row, end_row + 1)
    first = np.maximum(rows - period_steps, 0)
    errors = cumulative_errors[rows + 1] - cumulative_errors[first + 1]
    total = cumulative_total[rows + 1] - cumulative_total[first + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 1.0 - errors / total / budget, np.nan)


def _at(values: np.ndarray, row: int, column: int) -> float | None:
    value = values[row, column]
    return float(value) if np.isfinite(value) else None


def value_at_objective(values: np.ndarray, objective: float, op: str) -> float:
    """The slice value the objective's share of slices meets: the SLO is met iff this value meets the target.

    For `<`/`<=` the smallest v with share(values <= v) >= objective; for `>`/`>=` the largest v with
    share(values >= v) >= objective (order statistics, no interpolation, so it agrees with the attainment).
    """
    ordered = np.sort(values)
    n = len(ordered)
    if op in ("<", "<="):
        return float(ordered[max(int(math.ceil(n * objective - 1e-9)) - 1, 0)])
    return float(ordered[min(int(math.floor(n * (1.0 - objective) + 1e-9)), n - 1)])


def _timeslice_summary(slo: SLO, result: SLOResult, slice_values: np.ndarray, group_of: np.ndarray, index: int,
                       first_row: int, end_row: int) -> None:
    sli = slo.sli.timeslices
    assert sli is not None
    values = slice_values[first_row + 1:end_row + 1][:, group_of == index]
    present = values[~np.isnan(values)]
    result.op, result.target = sli.op, sli.target
    if present.size == 0:
        return
    last_rows = values[~np.isnan(values).all(axis=1)]
    result.current_value = float(np.nanmean(last_rows[-1]))
    result.value_at_objective = value_at_objective(present, slo.target, sli.op)
    if sli.target != 0:
        result.deviation_percent = (result.value_at_objective - sli.target) / abs(sli.target) * 100.0


def _burn_findings(slo: SLO, pairs: list[AlertPair], burn: dict, event_rate: dict, keys: list[tuple],
                   grid: pd.DatetimeIndex, window: RangeWindow) -> list[Finding]:
    findings: list[Finding] = []
    counts_events = slo.sli.timeslices is None
    for pair in pairs:
        factor = pair.factor(slo.period)
        with np.errstate(invalid="ignore"):
            active = (burn[pair.long] > factor) & (burn[pair.short] > factor)
            if counts_events:
                active &= event_rate[pair.long] >= slo.alerting.min_event_rate
        episodes = window.overlapping(firing_episodes(active, 0, 0), grid)
        peaks = episode_extremes(burn[pair.long], episodes, largest=True)
        for index in range(len(episodes)):
            column = int(episodes.column[index])
            resolved = int(episodes.resolved_row[index])
            firing = int(episodes.firing_row[index])
            labels = {name: value for name, value in zip(slo.group_by, keys[column]) if value != ""}
            findings.append(Finding(
                rule=slo.name, kind="slo", category="slo_burn", severity=pair.severity, labels=labels,
                start=grid[firing], end=grid[resolved] if resolved < episodes.rows else None,
                value=float(peaks[index]), threshold=factor, recommendation=slo.recommendation, playbook=slo.playbook,
                pack=f"slo/{slo.name}", summary=f"{slo.name}: error budget burn over {factor:.3g}x on {format_duration(pair.long)} and "
                                                f"{format_duration(pair.short)} ({pair.alert}, {pair.speed})",
                description=slo.description, runbook_url=slo.runbook_url, rule_labels=dict(slo.labels),
                details={"slo": slo.name, "alert": pair.alert, "speed": pair.speed,
                         "long_window": format_duration(pair.long), "short_window": format_duration(pair.short),
                         "factor": factor, "objective": slo.objective, "period": format_duration(slo.period),
                         "burn_rate_long": float(burn[pair.long][firing, column]),
                         "burn_rate_short": float(burn[pair.short][firing, column]),
                         "group": list(keys[column])}))
    return findings
