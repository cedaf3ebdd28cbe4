"""Prometheus alerting-rule state over a whole range at once: pending → firing → resolved, `for`, `keep_firing_for`.

This mirrors rules/alerting.go evaluated at every step of a regular grid:
- an alert becomes active (pending) at the first evaluation where its condition holds, and firing at the first
  evaluation at least `for` later, provided the condition held at every evaluation in between; a pending alert
  whose condition fails is dropped;
- a firing alert whose condition fails keeps firing while `now - first failing evaluation < keep_firing_for`; if
  the condition holds again within that time the same alert goes on firing;
- it resolves at the first evaluation where it no longer fires.
Everything is computed on runs of consecutive active steps, vectorized over all series together.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Episodes:
    """Firing episodes: series column, first firing row, and the row at which the alert resolved.

    `resolved_row == rows` (the grid length) means the alert was still firing at the end of the grid.
    """

    column: np.ndarray
    firing_row: np.ndarray
    resolved_row: np.ndarray
    rows: int

    def __len__(self) -> int:
        return len(self.column)


def steps_for(duration: pd.Timedelta, step: pd.Timedelta) -> int:
    """How many evaluation steps a duration spans, rounding up as the comparison `now - since >= duration` does."""
    return int(np.ceil(duration / step)) if duration > pd.Timedelta(0) else 0


def firing_episodes(active: np.ndarray, for_steps: int, keep_firing_steps: int) -> Episodes:
    """Episodes of firing for a (rows × series) boolean array of "condition holds at this evaluation"."""
    return episodes_from_runs(_runs(np.asarray(active, dtype=bool)), active.shape[0], for_steps, keep_firing_steps)


def episodes_from_runs(runs: Runs, rows: int, for_steps: int, keep_firing_steps: int) -> Episodes:
    """Episodes of firing from the runs of consecutive evaluations where the condition held (see firing_episodes)."""
    if len(runs.column) == 0:
        empty = np.empty(0, dtype=np.int64)
        return Episodes(empty, empty, empty, rows)

    # Runs closer than keep_firing_for belong to one chain: once a run in the chain has fired, the alert keeps
    # firing across the gaps until the chain ends.
    gap_before = np.full(len(runs.column), np.iinfo(np.int64).max)
    same_series = runs.column[1:] == runs.column[:-1]
    gap_before[1:][same_series] = runs.first[1:][same_series] - runs.last[:-1][same_series] - 1
    chain_starts = np.flatnonzero(gap_before > keep_firing_steps)
    chain_ends = np.append(chain_starts[1:], len(runs.column)) - 1

    ignites = (runs.last - runs.first + 1) >= for_steps + 1
    run_index = np.where(ignites, np.arange(len(runs.column)), len(runs.column))
    first_igniting = np.minimum.reduceat(run_index, chain_starts)
    fired = first_igniting < len(runs.column)

    igniting = first_igniting[fired]
    last_run = chain_ends[fired]
    firing_row = runs.first[igniting] + for_steps
    resolved_row = np.minimum(runs.last[last_run] + 1 + keep_firing_steps, rows)
    return Episodes(runs.column[igniting], firing_row, resolved_row, rows)


def firing_mask(episodes: Episodes, series: int) -> np.ndarray:
    """The (rows × series) boolean array of evaluations at which an alert was firing."""
    marks = np.zeros((series, episodes.rows + 1), dtype=np.int32)
    np.add.at(marks, (episodes.column, episodes.firing_row), 1)
    np.add.at(marks, (episodes.column, episodes.resolved_row), -1)
    return (np.cumsum(marks, axis=1)[:, :-1] > 0).T


def episode_extremes(values: np.ndarray, episodes: Episodes, largest: bool) -> np.ndarray:
    """The largest (or smallest) value of each series while it fired, ignoring missing samples."""
    if len(episodes) == 0:
        return np.empty(0)
    rows = values.shape[0]
    flat = np.append(np.asarray(values, dtype=float).T.ravel(), np.nan)
    bounds = np.empty(2 * len(episodes), dtype=np.int64)
    bounds[0::2] = episodes.column * rows + episodes.firing_row
    bounds[1::2] = episodes.column * rows + episodes.resolved_row
    reduce = np.fmax if largest else np.fmin
    return reduce.reduceat(flat, bounds)[0::2]


@dataclass(frozen=True)
class Runs:
    """Maximal runs of evaluations where a condition held: series column, first and last row; ordered by column
    then time."""

    column: np.ndarray
    first: np.ndarray
    last: np.ndarray


def threshold_runs(values: np.ndarray, thresholds: np.ndarray) -> Runs:
    """The runs of `values > threshold` (rows × series; NaN never holds) for every threshold at once, as columns
    `k · series + s` (k: the threshold's index in ascending `thresholds`).

    A run at threshold T starts at a row whose value is above T while the previous one is not, i.e. T lies in
    [previous, value); so each upward step of a series is a start for a contiguous range of sorted thresholds
    (two binary searches), and each downward step an end. The work grows with the steps and the runs found, not
    with thresholds × rows as comparing every threshold at every row would.
    """
    rows, series = values.shape
    padded = np.full((series, rows + 2), -np.inf)
    padded[:, 1:-1] = np.where(np.isnan(values), -np.inf, values).T
    # Index of the first threshold >= each value: the thresholds a value is above are those before it.
    rank = np.searchsorted(thresholds, padded.ravel(), side="left").reshape(series, rows + 2)
    before, after = rank[:, :-1], rank[:, 1:]  # across each boundary between padded positions b and b+1
    starts = _expand(np.flatnonzero(after > before), before, after, series, len(thresholds), rows)
    ends = _expand(np.flatnonzero(before > after), after, before, series, len(thresholds), rows)
    # Per column, runs start and end alternately in time: sorted, the i-th start pairs with the i-th end.
    starts.sort()
    ends.sort()
    width = rows + 1
    # Boundary b lies between padded positions b and b+1: a run starting there has its first row at b (unpadded),
    # one ending there its last row at b - 1.
    return Runs(column=starts // width, first=starts % width, last=ends % width - 1)


def _expand(boundaries: np.ndarray, low: np.ndarray, high: np.ndarray, series: int, count: int, rows: int
            ) -> np.ndarray:
    """Sortable keys (threshold k · series + series column) · (rows + 1) + boundary, one per threshold in
    [low, high) of each boundary."""
    width = rows + 1
    column, position = boundaries // width, boundaries % width
    first, last = low.ravel()[boundaries], high.ravel()[boundaries]
    repeats = last - first
    offsets = np.arange(repeats.sum()) - np.repeat(np.cumsum(repeats) - repeats, repeats)
    k = np.repeat(first, repeats) + offsets
    return (k * series + np.repeat(column, repeats)) * width + np.repeat(position, repeats)


def _runs(active: np.ndarray) -> Runs:
    """Maximal runs of True per series, ordered by series then time."""
    rows, series = active.shape
    padded = np.zeros((series, rows + 2), dtype=np.int8)
    padded[:, 1:-1] = active.T
    edges = np.diff(padded.ravel())
    width = rows + 2
    starts = np.flatnonzero(edges == 1) + 1  # flat position of the first True of each run
    ends = np.flatnonzero(edges == -1)  # flat position of the last True of each run
    return Runs(column=starts // width, first=starts % width - 1, last=ends % width - 1)
