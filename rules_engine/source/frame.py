"""A range-query result as one wide frame: a DatetimeIndex × one column per series, plus a labels table.

Sources build it without per-sample Python work (see source/prometheus.py: decode_matrix, frame_from_chunks)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import pandas as pd


@dataclass(frozen=True)
class RangeFrame:
    """Samples of every series of one range query on a regular evaluation grid.

    `values` has a UTC DatetimeIndex covering start..end at `step` (missing samples are NaN) and integer
    columns 0..n-1; `labels` is indexed by the same integers with one column per label name ("" where a
    series lacks the label). `warnings` are what the server said about the answer (partial data), each once.
    """

    query: str
    values: pd.DataFrame
    labels: pd.DataFrame
    warnings: tuple[str, ...] = ()

    @property
    def series_count(self) -> int:
        return self.values.shape[1]

    def series_labels(self, column: int) -> dict[str, str]:
        row = self.labels.loc[column]
        return {name: value for name, value in row.items() if value != ""}


def partial_data(frames: Iterable[RangeFrame]) -> list[str]:
    """The distinct warnings of some frames, in order: what a result computed from them should report once."""
    return list(dict.fromkeys(warning for frame in frames for warning in frame.warnings))


def evaluation_grid(start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> pd.DatetimeIndex:
    """The timestamps a range query with these parameters evaluates at (Prometheus: start, start+step, ... <= end)."""
    return pd.date_range(start=start, end=end, freq=step, tz="UTC")
