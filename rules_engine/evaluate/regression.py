"""Regression rules: a current window against a baseline window, by a relative change AND a Mann-Whitney U test.

The comparison runs every `every` (aligned to multiples of it, like a rule group's interval). The window
statistics come from rolling windows over the whole frame at once; only the (evaluation, series) pairs whose
statistic moved past the relative bound are tested, in chunks, with a vectorized two-sided asymptotic Mann-Whitney
U test (tie-corrected, with continuity correction: what scipy.stats.mannwhitneyu(method="asymptotic") returns).
Episodes of significant regressions then go through the same `for`/`keep_firing_for` logic as every rule.

Each finding carries the effect size (rank-biserial correlation: +1 when every current sample exceeds every
baseline sample), the p-value and relative change at the first firing evaluation, and an onset estimate: the
single change point that best splits the samples before the first firing into two levels (least squares).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
from scipy.special import ndtr

from rules_engine.evaluate.alerting import Episodes, firing_episodes, steps_for
from rules_engine.evaluate.findings import Finding
from rules_engine.evaluate.series import EvaluationError, RangeWindow, findings_from_episodes, guard_holds
from rules_engine.promql.windows import QUANTILES
from rules_engine.source.frame import RangeFrame
from rules_engine.spec.models import RulePack, SeverityLadder, format_duration
from rules_engine.spec.regression import RegressionRule

# Candidates tested per chunk: bounds memory to ~chunk × (current + baseline samples) × 8 bytes × a few arrays.
TEST_CHUNK = 8192


def rolling_stat(values: pd.DataFrame, stat: str, steps: int, min_samples: int) -> np.ndarray:
    """The statistic over the last `steps` rows of each column (NaN where fewer than min_samples are present)."""
    rolling = values.rolling(steps, min_periods=min_samples)
    if stat == "mean":
        return rolling.mean().to_numpy()
    return rolling.quantile(QUANTILES[stat], interpolation="linear").to_numpy()


def mann_whitney(current: np.ndarray, baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two-sided asymptotic Mann-Whitney U per row of (m × k) and (m × kb) samples; NaN samples are left out.

    Returns (U of current, p-value, n current, n baseline). Ranks are average ranks of the row's present samples:
    missing samples are set to +inf, which sorts them after every present one and leaves the present ranks as they
    would be without them.
    """
    m, k = current.shape
    combined = np.concatenate([current, baseline], axis=1)
    missing = np.isnan(combined)
    combined[missing] = np.inf
    n1 = k - missing[:, :k].sum(axis=1)
    n2 = baseline.shape[1] - missing[:, k:].sum(axis=1)
    order = np.argsort(combined, axis=1, kind="stable")
    ordered = np.take_along_axis(combined, order, axis=1)
    width = combined.shape[1]
    position = np.broadcast_to(np.arange(width), (m, width))
    new_value = np.ones((m, width), dtype=bool)
    new_value[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    run_first = np.maximum.accumulate(np.where(new_value, position, 0), axis=1)
    last_of_run = np.ones((m, width), dtype=bool)
    last_of_run[:, :-1] = new_value[:, 1:]
    run_last = np.minimum.accumulate(np.where(last_of_run, position, width - 1)[:, ::-1], axis=1)[:, ::-1]
    average_rank = (run_first + run_last) / 2.0 + 1.0
    from_current = (order < k) & np.isfinite(ordered)
    rank_sum = (average_rank * from_current).sum(axis=1)
    u1 = rank_sum - n1 * (n1 + 1) / 2.0

    # Tie correction: sum of t³ - t over runs of equal present values.
    tie_length = (run_last - run_first + 1).astype(np.float64)
    counted = new_value & np.isfinite(ordered)
    ties = np.where(counted, tie_length ** 3 - tie_length, 0.0).sum(axis=1)
    n = n1 + n2
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = n1 * n2 / 2.0
        sigma = np.sqrt(n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1))))
        z = (np.abs(u1 - mu) - 0.5) / sigma
        p = np.clip(2.0 * ndtr(-z), 0.0, 1.0)
    p = np.where(sigma > 0, p, 1.0)
    return u1, p, n1.astype(np.int64), n2.astype(np.int64)


def change_point(samples: np.ndarray) -> int | None:
    """Index of the first sample of the later level, for the split minimizing the two levels' squared error."""
    y = samples[~np.isnan(samples)]
    positions = np.flatnonzero(~np.isnan(samples))
    if len(y) < 4:
        return None
    total, total_sq = np.cumsum(y), np.cumsum(y * y)
    n = len(y)
    left_n = np.arange(1, n)
    left_sum, left_sq = total[:-1], total_sq[:-1]
    right_sum, right_sq = total[-1] - left_sum, total_sq[-1] - left_sq
    cost = (left_sq - left_sum ** 2 / left_n) + (right_sq - right_sum ** 2 / (n - left_n))
    cost[:1] = np.inf  # at least two samples on each side
    cost[-1:] = np.inf
    return int(positions[int(np.argmin(cost)) + 1])


def evaluate(rule: RegressionRule, pack: RulePack, frames: dict[str, RangeFrame], window: RangeWindow) -> list[Finding]:
    signal = frames["signal"]
    frame = signal.values
    grid = frame.index
    values = frame.to_numpy(dtype=np.float64)
    rows, series = values.shape
    step = window.step
    k = max(int(rule.window // step), 1)
    kb = max(int(rule.baseline_window // step), 1)
    min_samples = min(rule.min_samples, k, kb)
    if rule.min_samples > min(k, kb):
        raise EvaluationError(f"`min_samples: {rule.min_samples}` can never be met: the windows hold {min(k, kb)} "
                              f"samples at a {format_duration(step)} step")

    if rows < max(k, kb):
        return []  # not one full window of data: nothing to compare
    # Evaluations: multiples of `every` on the grid, with a full current window behind them.
    epoch = np.asarray((grid - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1))  # unit-independent seconds
    on_interval = epoch % max(int(rule.every.total_seconds()), 1) == 0
    if not on_interval.any():
        on_interval = np.zeros(rows, dtype=bool)
        on_interval[:: max(int(rule.every // step), 1)] = True
    current_stat = rolling_stat(frame, rule.stat, k, min_samples)
    if rule.baseline.kind == "at":
        at_row = int(grid.searchsorted(pd.Timestamp(rule.baseline.at).tz_convert("UTC")))
        if at_row - kb < 0 or at_row >= rows:
            raise EvaluationError(
                f"the baseline at {pd.Timestamp(rule.baseline.at).isoformat()} needs samples from "
                f"{(pd.Timestamp(rule.baseline.at) - rule.baseline_window).isoformat()}, outside the fetched range "
                f"{grid[0].isoformat()}..{grid[-1].isoformat()}; start the backtest at or before that time")
        baseline_block = frame.iloc[at_row - kb:at_row]
        fixed = baseline_block.mean() if rule.stat == "mean" else baseline_block.quantile(QUANTILES[rule.stat])
        fixed = fixed.where(baseline_block.notna().sum() >= min_samples)
        baseline_stat = np.broadcast_to(fixed.to_numpy(dtype=np.float64), (rows, series))
        baseline_end = np.full(rows, at_row, dtype=np.int64)  # exclusive row bound of the baseline samples
        eligible = on_interval & (np.arange(rows) - k + 1 >= at_row)
    else:
        lag = int(rule.baseline.offset // step) if rule.baseline.kind == "offset" else k  # type: ignore[operator]
        own = current_stat if kb == k else rolling_stat(frame, rule.stat, kb, min_samples)
        baseline_stat = np.full((rows, series), np.nan)
        if lag < rows:
            baseline_stat[lag:] = own[: rows - lag]
        baseline_end = np.arange(rows) - lag + 1
        eligible = on_interval & (baseline_end - kb >= 0) & (np.arange(rows) - k + 1 >= 0)

    eval_rows = np.flatnonzero(eligible)
    current_at, baseline_at = current_stat[eval_rows], baseline_stat[eval_rows]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = current_at / baseline_at
        if rule.direction == "above":
            ratio = np.where((baseline_at == 0) & (current_at > 0), np.inf, ratio)
            moved = ratio >= rule.ratio
        else:
            moved = ratio <= rule.ratio
    moved &= np.isfinite(current_at) & ~np.isnan(baseline_at)
    if "guard" in frames:
        moved &= guard_holds(signal, frames["guard"], pack.keep_labels)[eval_rows]

    p_value = np.full(moved.shape, np.nan)
    effect = np.full(moved.shape, np.nan)
    counts = np.zeros(moved.shape + (2,), dtype=np.int64)
    cand_eval, cand_col = np.nonzero(moved)
    current_view = np.lib.stride_tricks.sliding_window_view(values, k, axis=0)  # (rows-k+1, series, k)
    baseline_view = np.lib.stride_tricks.sliding_window_view(values, kb, axis=0)
    for lo in range(0, len(cand_eval), TEST_CHUNK):
        e, c = cand_eval[lo:lo + TEST_CHUNK], cand_col[lo:lo + TEST_CHUNK]
        r = eval_rows[e]
        current = current_view[r - k + 1, c]
        baseline = baseline_view[baseline_end[r] - kb, c]
        u1, p, n1, n2 = mann_whitney(current, baseline)
        p_value[e, c] = p
        with np.errstate(divide="ignore", invalid="ignore"):
            effect[e, c] = 2.0 * u1 / (n1 * n2) - 1.0
        counts[e, c, 0], counts[e, c, 1] = n1, n2
    enough = (counts[..., 0] >= min_samples) & (counts[..., 1] >= min_samples)
    active = moved & enough & (p_value < rule.alpha)

    every_steps = max(int(rule.every // step), 1)
    coarse = firing_episodes(active, -(-steps_for(rule.for_, step) // every_steps),
                             -(-steps_for(rule.keep_firing_for, step) // every_steps))
    # Back from evaluations to grid rows; keep the episodes still firing at or after the range start.
    resolved = np.where(coarse.resolved_row < len(eval_rows),
                        eval_rows[np.minimum(coarse.resolved_row, max(len(eval_rows) - 1, 0))], rows)
    keep = resolved > int(grid.searchsorted(window.start))
    coarse = Episodes(coarse.column[keep], coarse.firing_row[keep], coarse.resolved_row[keep], coarse.rows)
    episodes = Episodes(coarse.column, eval_rows[coarse.firing_row], resolved[keep], rows)

    peaks, severities, per_episode = [], [], []
    for index in range(len(episodes)):
        col, first = int(coarse.column[index]), int(coarse.firing_row[index])
        last = int(min(coarse.resolved_row[index], len(eval_rows)))
        during = current_at[first:last, col]
        during = during[active[first:last, col]]
        peak = float(np.nanmax(during) if rule.direction == "above" else np.nanmin(during))
        fire_row = int(eval_rows[first])
        base = float(baseline_at[first, col])
        onset = _onset(values[:, col], grid, rule, fire_row, k, kb, baseline_end[fire_row])
        change = float(current_at[first, col] / base - 1.0) if base != 0 else None  # JSON has no infinity
        peaks.append(peak)
        severities.append(_severity(rule, peak / base if base else np.inf))
        per_episode.append({
            "measure": rule.measure,
            "stat": rule.stat,
            "window": format_duration(rule.window),
            "baseline": _baseline_text(rule),
            "baseline_value": base,
            "current_value": float(current_at[first, col]),
            "relative_change": change,
            "p_value": float(p_value[first, col]),
            "alpha": rule.alpha,
            "effect_size": float(effect[first, col]),
            "samples": {"current": int(counts[first, col, 0]), "baseline": int(counts[first, col, 1])},
            "onset": onset.isoformat() if onset is not None else None,
            "threshold_value": base * rule.ratio,
        })
    findings = findings_from_episodes(rule, pack, "regression", signal, grid, episodes, np.array(peaks),
                                      severities, rule.ratio)
    # The threshold a reader compares the value with is the baseline moved by the ratio, in the signal's unit.
    return [replace(finding, threshold=details["threshold_value"], details=details)
            for finding, details in zip(findings, per_episode)]


def _onset(column: np.ndarray, grid: pd.DatetimeIndex, rule: RegressionRule, fire_row: int, k: int, kb: int,
           baseline_end: int) -> pd.Timestamp | None:
    """The change point among the samples known at the first firing: baseline-side history, then the current window.

    For an offset baseline the samples just before the current window stand in for the old level (the change
    happened after them, or the window before would have fired already).
    """
    if rule.baseline.kind == "at":
        first = max(baseline_end - kb, 0)
    else:
        first = max(fire_row - k - max(k, kb) + 1, 0)
    found = change_point(column[first:fire_row + 1])
    return grid[first + found] if found is not None else None


def _baseline_text(rule: RegressionRule) -> str:
    if rule.baseline.kind == "offset":
        return f"offset {format_duration(rule.baseline.offset)}"  # type: ignore[arg-type]
    if rule.baseline.kind == "preceding":
        return f"preceding {format_duration(rule.baseline_window)}"
    return f"at {pd.Timestamp(rule.baseline.at).isoformat()}"


def _severity(rule: RegressionRule, ratio: float) -> str:
    """Fixed, or by how far the change ratio went past the rule's bound (its inverse for `ratio_below`)."""
    if isinstance(rule.severity, str):
        return rule.severity
    ladder: SeverityLadder = rule.severity
    if ladder.by == "value":
        past = ratio if rule.direction == "above" else (1.0 / ratio if ratio > 0 else np.inf)
    else:
        past = ratio / rule.ratio if rule.direction == "above" else (rule.ratio / ratio if ratio > 0 else np.inf)
    severity = "low"
    for name, bound in sorted(ladder.levels(), key=lambda level: level[1]):
        if past >= bound:
            severity = name
    return severity
