"""A range-query result as one wide frame: a DatetimeIndex × one column per series, plus a labels table.

Sources build it without per-sample Python work (see source/prometheus.py: decode_matrix, frame_from_chunks)."""
from __future__ import annotations

from dataclasses import dataclass

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
