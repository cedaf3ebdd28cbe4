"""A Source that remembers each query's last frame and, for the next overlapping range, fetches only the new tail.

Rounds of `monitor` ask for almost the same ranges again: [now - L, now] slides by one interval. Points older than
`refetch` before the end of what is cached are reused as they are; the last `refetch` of them and everything after
are fetched again. Why the overlap: the newest points of a range query still change after they were read -- a
scrape is stamped with its start time but becomes queryable only when it ends, remote-write and federation
deliver late, and `rate()`/window values at a step read samples that had not arrived yet. A `refetch` longer than
the scrape interval plus the ingestion lag makes the combined frame equal to a fresh query of the whole range.
A range that starts before the cached one, or off its grid, or with another step, is fetched whole.
"""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd

from rules_engine.source.base import Source
from rules_engine.source.frame import RangeFrame, evaluation_grid


class CachingSource:
    """Wraps a Source; `fetched_points` counts grid points asked of it (what the cache saves shows there)."""

    def __init__(self, source: Source, refetch: pd.Timedelta = pd.Timedelta("1m")) -> None:
        self.source = source
        self.refetch = refetch
        self.fetched_points = 0
        self._frames: dict[tuple[str, pd.Timedelta], RangeFrame] = {}
        self._lock = threading.Lock()  # the engine fetches a few queries at once

    def query_range(self, query: str, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> RangeFrame:
        key = (query, step)
        with self._lock:
            cached = self._frames.get(key)
        tail_start = self._tail_start(cached, start, end, step)
        if tail_start is None:
            frame = self.source.query_range(query, start, end, step)
        elif tail_start > end:
            frame = _trim(cached, start, end, step)
        else:
            tail = self.source.query_range(query, tail_start, end, step)
            frame = _join(cached, tail, start, end, step)
        self.fetched_points += len(evaluation_grid(tail_start if tail_start is not None else start, end, step))
        with self._lock:
            self._frames[key] = frame
        return frame

    def _tail_start(self, cached: RangeFrame | None, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta
                    ) -> pd.Timestamp | None:
        """Where fetching must start to complete the cached frame, or None to fetch [start, end] whole."""
        if cached is None or len(cached.values.index) == 0:
            return None
        cached_start, cached_end = cached.values.index[0], cached.values.index[-1]
        if start < cached_start or (start - cached_start) % step != pd.Timedelta(0) or end < cached_end:
            return None
        reuse_until = cached_end - self.refetch  # points after this are fetched again
        if reuse_until < start:
            return None
        first_new = cached_start + ((reuse_until - cached_start) // step + 1) * step
        return max(first_new, start)


def _keys(frame: RangeFrame) -> list[tuple]:
    """Each series' label set (one Python tuple per series, not per sample)."""
    records = frame.labels.to_dict("records")
    return [tuple(sorted((name, value) for name, value in labels.items() if value != "")) for labels in records]


def _trim(frame: RangeFrame, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> RangeFrame:
    return _join(frame, None, start, end, step)


def _join(cached: RangeFrame, tail: RangeFrame | None, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta
          ) -> RangeFrame:
    """The frame a fresh query of [start, end] returns: cached points before the tail, the tail's from there on;
    series ordered by label set as Prometheus orders them, and only those with a sample in the range."""
    grid = evaluation_grid(start, end, step)
    parts = [(cached, cached.values.index < (tail.values.index[0] if tail is not None else grid[-1] + step))]
    if tail is not None:
        parts.append((tail, np.ones(len(tail.values.index), dtype=bool)))
    keys: dict[tuple, int] = {}
    for frame, _ in parts:
        for key in _keys(frame):
            keys.setdefault(key, len(keys))
    ordered = sorted(keys)
    column_of = {key: index for index, key in enumerate(ordered)}
    values = np.full((len(grid), len(ordered)), np.nan)
    for frame, rows in parts:
        if frame.series_count == 0:
            continue
        positions = grid.get_indexer(frame.values.index[rows])
        on_grid = positions >= 0
        columns = np.array([column_of[key] for key in _keys(frame)], dtype=np.int64)
        block = frame.values.to_numpy()[rows][on_grid]
        values[np.ix_(positions[on_grid], columns)] = block
    present = ~np.isnan(values).all(axis=0)
    kept = [key for key, keep in zip(ordered, present) if keep]
    labels = pd.DataFrame([dict(key) for key in kept]).fillna("") if kept else pd.DataFrame(index=pd.RangeIndex(0))
    labels.index = pd.RangeIndex(len(kept))
    frame = pd.DataFrame(values[:, present], index=grid, columns=pd.RangeIndex(len(kept)))
    warnings = tuple(dict.fromkeys((*cached.warnings, *(tail.warnings if tail is not None else ()))))
    return RangeFrame(query=cached.query, values=frame, labels=labels, warnings=warnings)
