"""A range-query result as one wide frame: a DatetimeIndex × one column per series, plus a labels table."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class RangeFrame:
    """Samples of every series of one range query on a regular evaluation grid.

    `values` has a UTC DatetimeIndex covering start..end at `step` (missing samples are NaN) and integer
    columns 0..n-1; `labels` is indexed by the same integers with one column per label name ("" where a
    series lacks the label).
    """

    query: str
    values: pd.DataFrame
    labels: pd.DataFrame

    @property
    def series_count(self) -> int:
        return self.values.shape[1]

    def series_labels(self, column: int) -> dict[str, str]:
        row = self.labels.loc[column]
        return {name: value for name, value in row.items() if value != ""}


def evaluation_grid(start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> pd.DatetimeIndex:
    """The timestamps a range query with these parameters evaluates at (Prometheus: start, start+step, ... <= end)."""
    return pd.date_range(start=start, end=end, freq=step, tz="UTC")


def frame_from_matrix(query: str, matrix: list[dict], grid: pd.DatetimeIndex) -> RangeFrame:
    """Build a RangeFrame from a Prometheus `matrix` result ([{"metric": {...}, "values": [[ts, "v"], ...]}, ...]).

    Samples are placed on `grid` by position, so the only Python-level loop is over series, never samples.
    """
    labels = pd.DataFrame([series.get("metric", {}) for series in matrix]).fillna("")
    values = np.full((len(grid), len(matrix)), np.nan)
    if matrix:
        lengths = np.fromiter((len(series["values"]) for series in matrix), dtype=np.int64, count=len(matrix))
        flat = [sample for series in matrix for sample in series["values"]]
        pairs = np.array(flat, dtype=object).reshape(-1, 2) if flat else np.empty((0, 2), dtype=object)
        timestamps = pairs[:, 0].astype(np.float64)
        samples = _parse_sample_values(pairs[:, 1])
        columns = np.repeat(np.arange(len(matrix)), lengths)
        rows = _grid_positions(grid, timestamps)
        on_grid = rows >= 0
        values[rows[on_grid], columns[on_grid]] = samples[on_grid]
    frame = pd.DataFrame(values, index=grid, columns=pd.RangeIndex(len(matrix)))
    labels.index = pd.RangeIndex(len(matrix))
    return RangeFrame(query=query, values=frame, labels=labels)


def _parse_sample_values(raw: np.ndarray) -> np.ndarray:
    # Prometheus encodes sample values as strings, including "NaN", "+Inf" and "-Inf", which numpy parses.
    return raw.astype(str).astype(np.float64)


def _grid_positions(grid: pd.DatetimeIndex, timestamps: np.ndarray) -> np.ndarray:
    """Row of each timestamp on the grid, or -1 for a timestamp that is not a grid point."""
    if len(grid) == 0:
        return np.full(len(timestamps), -1, dtype=np.int64)
    start = grid[0].value / 1e9
    step = (grid[1].value - grid[0].value) / 1e9 if len(grid) > 1 else 1.0
    offsets = (timestamps - start) / step
    rows = np.rint(offsets).astype(np.int64)
    ok = (np.abs(offsets - rows) < 1e-6) & (rows >= 0) & (rows < len(grid))
    return np.where(ok, rows, -1)


def empty_frame(query: str, grid: pd.DatetimeIndex) -> RangeFrame:
    return frame_from_matrix(query, [], grid)
