"""Trend rules: least-squares fits over a sliding window, vectorized across series, as predict_linear/deriv do.

At every evaluation the samples of (t - window, t] (both ends, like a `[window:step]` subquery) are fitted with a
line; the fit's value at t plus slope × horizon is what `predict_linear` returns, and the slope is `deriv`.
Sums of x, y, x², xy, y² over the window come from cumulative sums, so the whole range costs a few array passes
regardless of the window's length. x is counted in steps from the grid start to keep the sums well conditioned.
"""
from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd

from rules_engine.evaluate.alerting import episode_extremes, firing_episodes, steps_for
from rules_engine.evaluate.findings import Finding
from rules_engine.evaluate.series import RangeWindow, findings_from_episodes, guard_holds
from rules_engine.source.frame import RangeFrame
from rules_engine.spec.models import RulePack, SeverityLadder, format_duration
from rules_engine.spec.trend import LeadTimeLadder, TrendRule


def rolling_fit(values: np.ndarray, window_steps: int) -> dict[str, np.ndarray]:
    """Least-squares line over the last `window_steps` rows (inclusive) of every column, skipping NaN samples.

    Returns (rows × series) arrays: `n` (samples used), `slope` (per step), `fitted` (the line's value at the
    row itself, predict_linear's intercept) and `r2` (NaN where the series is flat or the fit is undefined).
    """
    rows = values.shape[0]
    present = ~np.isnan(values)
    # Slope and R² do not change when x or y shift; centring both keeps the cumulative sums small, so their
    # differences keep their precision over long ranges of large values (tokens/s in the thousands, 30 days).
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column has no mean
        level = np.nan_to_num(np.nanmean(values, axis=0))
    y = np.where(present, values - level, 0.0)
    origin = (rows - 1) / 2.0
    x = (np.arange(rows, dtype=np.float64)[:, None] - origin) * present

    def window_sum(term: np.ndarray) -> np.ndarray:
        total = np.cumsum(term, axis=0)
        shifted = np.zeros_like(total)
        shifted[window_steps:] = total[:-window_steps]
        return total - shifted

    n = window_sum(present.astype(np.float64))
    sx, sy = window_sum(x), window_sum(y)
    sxx, sxy, syy = window_sum(x * x), window_sum(x * y), window_sum(y * y)
    with np.errstate(divide="ignore", invalid="ignore"):
        var_x = n * sxx - sx * sx
        cov = n * sxy - sx * sy
        var_y = n * syy - sy * sy
        slope = cov / var_x
        here = np.arange(rows, dtype=np.float64)[:, None] - origin
        fitted = level + sy / n + slope * (here - sx / n)
        # Cumulative sums leave rounding noise of ~1e-12 of their magnitude: a "variance" below that is flat.
        flat = var_y <= 1e-12 * np.maximum(n * syy, 1e-300)
        r2 = np.where(flat, np.nan, cov * cov / (var_x * var_y))
    slope[var_x <= 0] = np.nan
    return {"n": n, "slope": slope, "fitted": fitted, "r2": np.clip(r2, 0.0, 1.0)}


def evaluate(rule: TrendRule, pack: RulePack, frames: dict[str, RangeFrame], window: RangeWindow) -> list[Finding]:
    signal = frames["signal"]
    grid = signal.values.index
    step_seconds = window.step.total_seconds()
    fit = rolling_fit(signal.values.to_numpy(dtype=np.float64), int(rule.window // window.step) + 1)
    slope_per_second = fit["slope"] / step_seconds
    trustworthy = (fit["n"] >= rule.min_samples) & (fit["r2"] >= rule.min_r2)
    above = rule.direction == "above"
    with np.errstate(invalid="ignore", divide="ignore"):
        if rule.mode == "crossing":
            horizon = rule.horizon.total_seconds()  # type: ignore[union-attr]
            judged = fit["fitted"] + slope_per_second * horizon  # predict_linear(window, horizon)
            past = judged > rule.threshold if above else judged < rule.threshold
            # Seconds until the fitted line meets the limit; 0 once it is already past it.
            lead = (rule.threshold - fit["fitted"]) / slope_per_second
            already = fit["fitted"] >= rule.threshold if above else fit["fitted"] <= rule.threshold
            lead = np.where(already, 0.0, lead)
        else:
            judged = slope_per_second * rule.per.total_seconds()
            past = judged > rule.threshold if above else judged < rule.threshold
            lead = None
    active = past & trustworthy
    if "guard" in frames:
        active &= guard_holds(signal, frames["guard"], pack.keep_labels)

    episodes = firing_episodes(active, steps_for(rule.for_, window.step), steps_for(rule.keep_firing_for, window.step))
    episodes = window.overlapping(episodes, grid)
    peaks = episode_extremes(judged, episodes, largest=above)
    at_fire = (episodes.firing_row, episodes.column)
    details = {
        "mode": rule.mode,
        "window": format_duration(rule.window),
        "fit_samples": fit["n"][at_fire].astype(int).tolist(),
        "r2": fit["r2"][at_fire].tolist(),
        "slope_per_second": slope_per_second[at_fire].tolist(),
    }
    if lead is not None:
        first_lead = lead[at_fire]
        shortest = episode_extremes(np.where(active, lead, np.nan), episodes, largest=False)
        crossing = grid[episodes.firing_row] + pd.to_timedelta(first_lead, unit="s")
        severities = _lead_severities(rule, shortest)
        details.update(horizon=str(rule.horizon), lead_seconds=first_lead.tolist(), shortest_lead_seconds=shortest.tolist(),
                       predicted_crossing=[t.isoformat() for t in crossing],
                       fitted_value=fit["fitted"][at_fire].tolist())
    else:
        severities = _slope_severities(rule, peaks)
        details.update(per=str(rule.per))
    return _split_details(findings_from_episodes(rule, pack, "trend", signal, grid, episodes, peaks, severities,
                                                 rule.threshold, details))


def _split_details(findings: list[Finding]) -> list[Finding]:
    """findings_from_episodes copies one details dict to every finding; give each its own episode's entries."""
    per_episode = ("fit_samples", "r2", "slope_per_second", "lead_seconds", "shortest_lead_seconds",
                   "predicted_crossing", "fitted_value")
    out = []
    for index, finding in enumerate(findings):
        details = {key: (value[index] if key in per_episode else value) for key, value in finding.details.items()}
        out.append(replace(finding, details=details))
    return out


def _lead_severities(rule: TrendRule, shortest_lead: np.ndarray) -> list[str]:
    if isinstance(rule.severity, str):
        return [rule.severity] * len(shortest_lead)
    ladder = rule.severity if isinstance(rule.severity, LeadTimeLadder) else LeadTimeLadder(by="lead_time")
    horizon = rule.horizon.total_seconds()  # type: ignore[union-attr]
    severity = np.full(len(shortest_lead), "medium", dtype=object)
    severity[shortest_lead <= ladder.high * horizon] = "high"
    severity[shortest_lead <= ladder.critical * horizon] = "critical"
    return list(severity)


def _slope_severities(rule: TrendRule, peaks: np.ndarray) -> list[str]:
    if isinstance(rule.severity, str):
        return [rule.severity] * len(peaks)
    ladder = rule.severity if isinstance(rule.severity, SeverityLadder) else SeverityLadder()
    above = rule.direction == "above"
    with np.errstate(divide="ignore", invalid="ignore"):
        if ladder.by == "value":
            past = peaks if above else -peaks
            bounds = [(name, bound if above else -bound) for name, bound in ladder.levels()]
        else:
            past = peaks / rule.threshold if above else rule.threshold / peaks
            bounds = ladder.levels()
    severity = np.full(len(peaks), "low", dtype=object)
    for name, bound in sorted(bounds, key=lambda level: level[1]):
        severity[past >= bound] = name
    return list(severity)
