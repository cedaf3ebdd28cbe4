"""A PromQL range evaluator over raw samples, vectorized over every series and step at once (numpy).

It covers the expression shapes the shipped packs and the compiler write: selectors with matchers and offsets,
`rate`/`increase`/`delta`/`irate` (Prometheus 2.x extrapolation and counter resets), `*_over_time` over ranges
and subqueries, `histogram_quantile` (le parsing, coalesced bounds, forced monotonicity, +Inf bucket),
`sum`/`min`/`max`/`avg`/`count` by/without, arithmetic and comparison filters between vectors and scalars with
on/ignoring matching, `and`/`or`/`unless`, and the 5-minute lookback with staleness markers. Semantics follow
Prometheus 2.x (the version the agreement tests run): ranges and the lookback are closed at both ends.

Anything else raises `Unsupported` (statically from `check`, or while evaluating, e.g. a matching Prometheus
would reject); `LocalSource` then sends that query to Prometheus' query API instead.

A vector is (values, present, labels): values[T, S] float64, present[T, S] bool (a present sample may be NaN),
one label dict per column. Windows over samples are reduced with `ufunc.reduceat` over (start, end) index pairs,
which adds in sample order like Prometheus does, so results agree to float precision.
"""
from __future__ import annotations

import copy
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import promql_parser

from rules_engine.source.base import SourceError
from rules_engine.source.frame import RangeFrame, evaluation_grid
from rules_engine.source.prometheus import MatrixChunk
from rules_engine.source.raw import (Matcher, RangeVectorReader, RawSamples, RemoteReader, join_pieces,
                                     probe_remote_read)

LOOKBACK_MS = 5 * 60 * 1000
BLOCK_CELLS = 1 << 16  # (step, series) cells evaluated at once by a range function
_MS = 1_000_000  # ns per ms


class Unsupported(Exception):
    """The local evaluator does not compute this expression (the reason says what); the query path does."""


@dataclass
class Vec:
    values: np.ndarray  # (T, S) float64
    present: np.ndarray  # (T, S) bool
    labels: list[dict[str, str]]


Fetch = Callable[[tuple[Matcher, ...], int, int], RawSamples]

RANGE_FUNCTIONS = {"rate", "increase", "delta", "irate"}
OVER_TIME = {"sum_over_time", "count_over_time", "avg_over_time", "min_over_time", "max_over_time",
             "last_over_time", "present_over_time"}
AGGREGATIONS = {"sum", "min", "max", "avg", "count"}
ARITHMETIC = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}
COMPARISON = {">": np.greater, "<": np.less, ">=": np.greater_equal, "<=": np.less_equal, "==": np.equal,
              "!=": np.not_equal}
SET_OPERATORS = {"and", "or", "unless"}


# -- what is supported --------------------------------------------------------------------------------------------

def _strip(node):
    while isinstance(node, promql_parser.ParenExpr):
        node = node.expr
    return node


def check(node, staleness: bool = True) -> None:
    """Raise Unsupported naming the first part of the expression computed only by the query path. Without
    `staleness` (a reader that drops staleness markers) bare instant selectors are not computed locally."""
    node = _strip(node)
    if isinstance(node, promql_parser.NumberLiteral):
        return
    if isinstance(node, promql_parser.VectorSelector):
        _selector_matchers(node)
        if not staleness:
            raise Unsupported("an instant selector needs staleness markers, which this raw reader does not carry")
        return
    if isinstance(node, promql_parser.UnaryExpr):
        return check(node.expr, staleness)
    if isinstance(node, promql_parser.Call):
        name = node.func.name
        args = [_strip(arg) for arg in node.args]
        if name in RANGE_FUNCTIONS or name in OVER_TIME:
            if len(args) != 1:
                raise Unsupported(f"{name} with {len(args)} arguments")
            if isinstance(args[0], promql_parser.MatrixSelector):
                _selector_matchers(args[0].vector_selector)
                return
            if isinstance(args[0], promql_parser.SubqueryExpr) and name in OVER_TIME:
                if args[0].at is not None:
                    raise Unsupported("@ modifier")
                return check(args[0].expr, staleness)
            raise Unsupported(f"{name} of {type(args[0]).__name__}")
        if name == "histogram_quantile":
            if not isinstance(args[0], promql_parser.NumberLiteral):
                raise Unsupported("histogram_quantile with a non-literal quantile")
            return check(args[1], staleness)
        raise Unsupported(f"function {name}")
    if isinstance(node, promql_parser.AggregateExpr):
        op = str(node.op)
        if op not in AGGREGATIONS or node.param is not None:
            raise Unsupported(f"aggregation {op}")
        return check(node.expr, staleness)
    if isinstance(node, promql_parser.BinaryExpr):
        op = str(node.op)
        if op not in ARITHMETIC and op not in COMPARISON and op not in SET_OPERATORS:
            raise Unsupported(f"operator {op}")
        modifier = node.modifier
        if modifier is not None and str(modifier.card).rsplit(".", 1)[-1] in ("OneToMany", "ManyToOne"):
            raise Unsupported("group_left/group_right")
        check(node.lhs, staleness)
        check(node.rhs, staleness)
        return
    raise Unsupported(type(node).__name__)


def _selector_matchers(node) -> tuple[Matcher, ...]:
    if node.at is not None:
        raise Unsupported("@ modifier")
    if node.matchers.or_matchers:
        raise Unsupported("`or` inside a selector")
    matchers = [Matcher(m.name, str(m.op).rsplit(".", 1)[-1], m.value) for m in node.matchers.matchers]
    if node.name:
        matchers.insert(0, Matcher("__name__", "Equal", node.name))
    return tuple(matchers)


def _ms(delta) -> int:
    return 0 if delta is None else int(round(delta.total_seconds() * 1000))


# -- labels -------------------------------------------------------------------------------------------------------

def label_key(labels: Mapping[str, str]) -> tuple:
    return tuple(sorted((name, value) for name, value in labels.items() if value != ""))


def _without_name(labels: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in labels.items() if name != "__name__"}


def _group_ids(keys: Sequence[tuple]) -> tuple[np.ndarray, list[tuple]]:
    index: dict[tuple, int] = {}
    ids = np.fromiter((index.setdefault(key, len(index)) for key in keys), dtype=np.int64, count=len(keys))
    return ids, list(index)


# -- windows over raw samples --------------------------------------------------------------------------------------

class Windows:
    """For each (step, series): the first and last sample index of the series in [t - range, t] (first > last
    when there are none), over samples flat and sorted by (series, time)."""

    def __init__(self, raw: RawSamples, drop_stale: bool) -> None:
        counts, stamps, values = raw.counts, raw.timestamps_ms, raw.values
        stale = raw.stale if raw.has_staleness else None
        if drop_stale and stale is not None and stale.any():
            series = np.repeat(np.arange(len(counts)), counts)[~stale]
            counts = np.bincount(series, minlength=len(counts)).astype(np.int64)
            stamps, values, stale = stamps[~stale], values[~stale], None
        self.counts, self.stamps, self.values, self.stale = counts, stamps, values, stale
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def _search(self, times_ms: np.ndarray, side: str) -> np.ndarray:
        """(T, S) global index of searchsorted(series' stamps, t, side). On an evenly spaced grid (what range
        queries and subqueries evaluate at) each sample's first grid point is computed in integers and counted:
        O(samples + cells) for all series at once. Otherwise one binary search per series."""
        steps, series = len(times_ms), len(self.counts)
        spacing = int(times_ms[1] - times_ms[0]) if steps > 1 else 0
        if steps > 1 and spacing > 0 and np.all(np.diff(times_ms) == spacing):
            low, high = int(self.offsets[0]), int(self.offsets[-1])
            relative = self.stamps[low:high] - times_ms[0]
            # right: samples at or before x_k = x_0 + k*spacing are those with ceil((t - x_0)/spacing) <= k;
            # left: those before x_k, floor((t - x_0)/spacing) + 1 <= k.
            first = -((-relative) // spacing) if side == "right" else relative // spacing + 1
            np.clip(first, 0, steps, out=first)
            first += np.repeat(np.arange(series, dtype=np.int64) * (steps + 1), self.counts)
            counted = np.bincount(first, minlength=series * (steps + 1)).reshape(series, steps + 1)[:, :steps]
            found = np.cumsum(counted, axis=1)
            found += self.offsets[:-1, None]
            return found.T
        found = np.empty((steps, series), dtype=np.int64)
        for column, (low, high) in enumerate(zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist())):
            found[:, column] = np.searchsorted(self.stamps[low:high], times_ms, side=side) + low
        return found

    def last_at_or_before(self, times_ms: np.ndarray) -> np.ndarray:
        """(T, S) index of the last sample at or before each t, or -1."""
        last = self._search(times_ms, "right") - 1
        return np.where(last >= self.offsets[None, :-1], last, -1)

    def window(self, times_ms: np.ndarray, range_ms: int) -> tuple[np.ndarray, np.ndarray]:
        """(T, S) first and last index of samples in [t - range, t]; first > last where there are none."""
        first = self._search(times_ms - range_ms, "left")
        last = self._search(times_ms, "right") - 1
        return first, last

    def resets(self) -> tuple[np.ndarray, np.ndarray]:
        """Where a counter decreased within its series (sample index, ascending) and the value before it."""
        if getattr(self, "_resets", None) is None:
            values = self.values
            if len(values) < 2:
                self._resets = np.empty(0, dtype=np.int64), np.empty(0)
            else:
                where = np.flatnonzero(values[1:] < values[:-1]) + 1
                where = where[~np.isin(where, self.offsets[1:-1])]  # a new series starting lower is no reset
                self._resets = where, values[where - 1]
        return self._resets

    def blocks(self, steps: int, budget: int | None = None):
        """(first column, end column, these windows restricted to those series): blocks of about `budget`
        (step, series) cells, so the temporaries of a function stay small whatever the range."""
        self.resets()  # computed once, shared by the blocks
        size = max(1, (budget or BLOCK_CELLS) // max(steps, 1))
        for low in range(0, len(self.counts), size):
            high = min(low + size, len(self.counts))
            part = copy.copy(self)
            part.counts, part.offsets = self.counts[low:high], self.offsets[low:high + 1]
            yield low, high, part


def _reduce_windows(ufunc, data: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """ufunc over data[first:last+1] for each (step, series) window with first <= last, in sample order; NaN
    elsewhere. One `reduceat` over (start, end) pairs laid out series by series, so the reductions between one
    window's end and the next one's start (discarded) stay short."""
    out = np.full(first.shape, np.nan)
    have = (first <= last).T
    if not have.any() or len(data) == 0:
        return out
    identity = 0.0 if ufunc is np.add else np.nan  # fmax/fmin skip NaN
    extended = np.append(data, identity)  # every end index (last + 1) is then a valid index
    pairs = np.empty(2 * int(have.sum()), dtype=np.int64)
    pairs[0::2], pairs[1::2] = first.T[have], last.T[have] + 1
    reduced = out.T.copy()
    reduced[have] = ufunc.reduceat(extended, pairs)[0::2]
    return reduced.T


def _extrapolated(windows: Windows, times_ms: np.ndarray, range_ms: int, counter: bool, rate: bool,
                  offset_ms: int) -> tuple[np.ndarray, np.ndarray]:
    first, last = windows.window(times_ms - offset_ms, range_ms)
    present = (last - first) >= 1
    safe_first, safe_last = np.where(present, first, 0), np.where(present, last, 0)
    values, stamps = windows.values, windows.stamps
    if len(values) == 0:
        return np.full(first.shape, np.nan), np.zeros(first.shape, dtype=bool)
    first_v, last_v = values[safe_first], values[safe_last]
    result = last_v - first_v
    if counter:
        # Prometheus adds the previous value at each decrease inside the window (a counter reset), in order.
        where, before = windows.resets()
        # Only the columns of series with a reset (resets are rare): the others add nothing, as in Prometheus.
        columns = np.unique(np.searchsorted(windows.offsets, where, side="right") - 1)
        columns = columns[(columns >= 0) & (columns < first.shape[1])]
        if len(columns):
            low = np.searchsorted(where, first[:, columns] + 1)  # resets at sample indices first+1 .. last
            high = np.searchsorted(where, last[:, columns], side="right")
            has = present[:, columns] & (high > low)
            if has.any():
                added = _reduce_windows(np.add, before, np.where(has, low, 1), np.where(has, high - 1, 0))
                result[:, columns] += np.where(has, added, 0.0)
    t_end = (times_ms - offset_ms)[:, None]
    range_start = t_end - range_ms
    first_t, last_t = stamps[safe_first], stamps[safe_last]
    with np.errstate(divide="ignore", invalid="ignore"):
        to_start = (first_t - range_start) / 1000
        to_end = (t_end - last_t) / 1000
        sampled = (last_t - first_t) / 1000
        average = sampled / np.maximum(last - first, 1)
        if counter:
            to_zero = sampled * (first_v / result)
            shorten = (result > 0) & (first_v >= 0) & (to_zero < to_start)
            to_start = np.where(shorten, to_zero, to_start)
        threshold = average * 1.1
        interval = sampled + np.where(to_start < threshold, to_start, average / 2)
        interval = interval + np.where(to_end < threshold, to_end, average / 2)
        # Prometheus scales once by a factor that already holds the division by the range (same rounding).
        factor = interval / sampled
        if rate:
            factor = factor / (range_ms / 1000)
        result = result * factor
    return np.where(present, result, np.nan), present


def _irate(windows: Windows, times_ms: np.ndarray, range_ms: int, offset_ms: int) -> tuple[np.ndarray, np.ndarray]:
    first, last = windows.window(times_ms - offset_ms, range_ms)
    present = (last - first) >= 1
    if len(windows.values) == 0:
        return np.full(first.shape, np.nan), present
    last_i, previous_i = np.where(present, last, 0), np.where(present, last - 1, 0)
    last_v, previous_v = windows.values[last_i], windows.values[previous_i]
    interval = (windows.stamps[last_i] - windows.stamps[previous_i]).astype(np.float64)
    present &= interval != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        result = np.where(last_v < previous_v, last_v, last_v - previous_v) / (interval / 1000)
    return np.where(present, result, np.nan), present


def _over_time(name: str, values: np.ndarray, first: np.ndarray, last: np.ndarray,
               last_values: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    count = np.maximum(last - first + 1, 0)
    present = count > 0
    if name == "count_over_time":
        result = count.astype(np.float64)
    elif name == "present_over_time":
        result = np.ones(count.shape)
    elif name == "last_over_time":
        result = last_values(np.where(present, last, 0))
    elif name in ("min_over_time", "max_over_time"):
        result = _reduce_windows(np.fmin if name == "min_over_time" else np.fmax, values, first, last)
    else:
        total = _reduce_windows(np.add, values, first, last)
        result = total if name == "sum_over_time" else total / np.where(present, count, 1)
    return np.where(present, result, np.nan), present


# -- the evaluator ------------------------------------------------------------------------------------------------

class Evaluator:
    """Evaluates an expression at `times_ms` (int64 ms, ascending) from raw samples `fetch` returns."""

    def __init__(self, fetch: Fetch, staleness: bool = True) -> None:
        self.fetch = fetch
        self.staleness = staleness

    def evaluate(self, node, times_ms: np.ndarray):
        node = _strip(node)
        if isinstance(node, promql_parser.NumberLiteral):
            return float(node.val)
        if isinstance(node, promql_parser.VectorSelector):
            return self._instant(node, times_ms)
        if isinstance(node, promql_parser.UnaryExpr):
            inner = self.evaluate(node.expr, times_ms)
            if isinstance(inner, float):
                return -inner
            return Vec(-inner.values, inner.present, [_without_name(labels) for labels in inner.labels])
        if isinstance(node, promql_parser.Call):
            return self._call(node, times_ms)
        if isinstance(node, promql_parser.AggregateExpr):
            return self._aggregate(node, times_ms)
        if isinstance(node, promql_parser.BinaryExpr):
            return self._binary(node, times_ms)
        raise Unsupported(type(node).__name__)

    def _raw(self, selector, start_ms: int, end_ms: int) -> RawSamples:
        return self.fetch(_selector_matchers(selector), start_ms, end_ms)

    def _instant(self, node, times_ms: np.ndarray) -> Vec:
        offset = _ms(node.offset)
        at = times_ms - offset
        raw = self._raw(node, int(at[0]) - LOOKBACK_MS, int(at[-1]))
        windows = Windows(raw, drop_stale=False)
        last = windows.last_at_or_before(at)
        safe = np.maximum(last, 0)
        present = last >= 0
        if len(windows.stamps):
            present &= windows.stamps[safe] >= at[:, None] - LOOKBACK_MS
            if windows.stale is not None:
                present &= ~windows.stale[safe]
            values = np.where(present, windows.values[safe], np.nan)
        else:
            values = np.full(last.shape, np.nan)
        return Vec(values, present, [dict(metric) for metric in raw.metrics])

    def _call(self, node, times_ms: np.ndarray) -> Vec:
        name = node.func.name
        args = [_strip(arg) for arg in node.args]
        if name == "histogram_quantile":
            if not isinstance(args[0], promql_parser.NumberLiteral):
                raise Unsupported("histogram_quantile with a non-literal quantile")
            inner = self.evaluate(args[1], times_ms)
            if not isinstance(inner, Vec):
                raise Unsupported("histogram_quantile of a scalar")
            return histogram_quantile(float(args[0].val), inner)
        if name not in RANGE_FUNCTIONS and name not in OVER_TIME:
            raise Unsupported(f"function {name}")
        argument = args[0]
        if isinstance(argument, promql_parser.SubqueryExpr):
            if name not in OVER_TIME:
                raise Unsupported(f"{name} of a subquery")
            return self._subquery_over_time(name, argument, times_ms)
        if not isinstance(argument, promql_parser.MatrixSelector):
            raise Unsupported(f"{name} of {type(argument).__name__}")
        selector = argument.vector_selector
        range_ms, offset = _ms(argument.range), _ms(selector.offset)
        raw = self._raw(selector, int(times_ms[0]) - offset - range_ms, int(times_ms[-1]) - offset)
        windows = Windows(raw, drop_stale=True)
        labels = [_without_name(metric) for metric in raw.metrics]
        if name == "last_over_time":
            labels = [dict(metric) for metric in raw.metrics]  # the one *_over_time that keeps the name
        values = np.full((len(times_ms), len(raw.metrics)), np.nan)
        present = np.zeros(values.shape, dtype=bool)
        for low, high, part in windows.blocks(len(times_ms)):
            if name == "irate":
                block = _irate(part, times_ms, range_ms, offset)
            elif name in RANGE_FUNCTIONS:
                block = _extrapolated(part, times_ms, range_ms, counter=name != "delta", rate=name == "rate",
                                      offset_ms=offset)
            else:
                first, last = part.window(times_ms - offset, range_ms)
                block = _over_time(name, part.values, first, last, lambda index: part.values[index])
            values[:, low:high], present[:, low:high] = block
        return Vec(values, present, labels)

    def _subquery_over_time(self, name: str, node, times_ms: np.ndarray) -> Vec:
        range_ms, offset = _ms(node.range), _ms(node.offset)
        step = _ms(node.step)
        if step <= 0:
            raise Unsupported("a subquery without its own step (it takes the rule evaluation interval)")
        low = int(times_ms[0]) - offset - range_ms
        start = step * (low // step) if low >= 0 else -((-low) // step) * step  # Go truncates toward zero
        if start < low:
            start += step
        inner_times = np.arange(start, int(times_ms[-1]) - offset + 1, step, dtype=np.int64)
        if len(inner_times) == 0:
            raise Unsupported("an empty subquery")
        inner = self.evaluate(node.expr, inner_times)
        if not isinstance(inner, Vec):
            raise Unsupported("a subquery of a scalar")
        series = inner.values.shape[1]
        # Flatten series-major, keeping only present points: a window is a contiguous run of them.
        present_t = inner.present.T
        counts = present_t.sum(axis=1)
        flat_values = inner.values.T[present_t]
        flat_stamps = np.broadcast_to(inner_times, present_t.shape)[present_t]
        raw = RawSamples([{}] * series, counts.astype(np.int64), flat_stamps, flat_values, has_staleness=False)
        windows = Windows(raw, drop_stale=False)
        first, last = windows.window(times_ms - offset, range_ms)
        values, present = _over_time(name, windows.values, first, last, lambda index: windows.values[index])
        labels = inner.labels if name == "last_over_time" else [_without_name(labels) for labels in inner.labels]
        return Vec(values, present, labels)

    def _aggregate(self, node, times_ms: np.ndarray) -> Vec:
        op = str(node.op)
        if op not in AGGREGATIONS or node.param is not None:
            raise Unsupported(f"aggregation {op}")
        inner = self.evaluate(node.expr, times_ms)
        if not isinstance(inner, Vec):
            raise Unsupported(f"{op} of a scalar")
        modifier = node.modifier
        by = modifier is None or str(modifier.type).endswith("By")
        names = set(modifier.labels) if modifier is not None else set()
        if by:
            grouped = [{name: value for name, value in labels.items() if name in names} for labels in inner.labels]
        else:
            grouped = [{name: value for name, value in labels.items() if name not in names and name != "__name__"}
                       for labels in inner.labels]
        ids, keys = _group_ids([label_key(labels) for labels in grouped])
        values, present = aggregate(op, inner.values, inner.present, ids, len(keys))
        return Vec(values, present, [dict(key) for key in keys])

    def _binary(self, node, times_ms: np.ndarray):
        op = str(node.op)
        lhs, rhs = self.evaluate(node.lhs, times_ms), self.evaluate(node.rhs, times_ms)
        modifier = node.modifier
        return_bool = modifier is not None and modifier.return_bool
        if isinstance(lhs, float) and isinstance(rhs, float):
            if op in ARITHMETIC:
                with np.errstate(all="ignore"):
                    return float(ARITHMETIC[op](np.float64(lhs), np.float64(rhs)))
            raise Unsupported(f"scalar {op} scalar")
        if op in SET_OPERATORS:
            if isinstance(lhs, float) or isinstance(rhs, float):
                raise Unsupported(f"{op} with a scalar")
            return set_operation(op, lhs, rhs, modifier)
        if isinstance(lhs, float) or isinstance(rhs, float):
            vector, scalar = (rhs, lhs) if isinstance(lhs, float) else (lhs, rhs)
            left, right = (scalar, vector.values) if isinstance(lhs, float) else (vector.values, scalar)
            with np.errstate(all="ignore"):
                if op in ARITHMETIC:
                    return Vec(ARITHMETIC[op](left, right), vector.present.copy(),
                               [_without_name(labels) for labels in vector.labels])
                held = COMPARISON[op](left, right)
            if return_bool:
                return Vec(held.astype(np.float64), vector.present.copy(),
                           [_without_name(labels) for labels in vector.labels])
            return Vec(np.where(held, vector.values, np.nan), vector.present & held, vector.labels)
        return vector_operation(op, lhs, rhs, modifier, return_bool)


# -- aggregation, histogram_quantile, vector matching --------------------------------------------------------------

def aggregate(op: str, values: np.ndarray, present: np.ndarray, ids: np.ndarray, groups: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Aggregate columns by group id, adding in column order (Prometheus' order within a group)."""
    steps = values.shape[0]
    if values.shape[1] == 0:
        return np.full((steps, groups), np.nan), np.zeros((steps, groups), dtype=bool)
    order = np.argsort(ids, kind="stable")
    grouped = np.array_equal(order, np.arange(len(order)))  # columns already in group order
    # One working copy of the values, in group order, holding the reduction's identity where a sample is missing.
    fill = np.nan if op in ("max", "min") or len(order) == groups else 0.0
    if grouped:
        work = np.where(present, values, fill) if op != "count" else None
    else:
        present = present[:, order]
        work = values[:, order] if op != "count" else None
        if work is not None:
            np.copyto(work, fill, where=~present)
    if len(order) == groups:  # one column a group (`sum by` of every label, coalescing distinct buckets)
        have = present.copy() if grouped else present
        return (np.where(have, 1.0, np.nan) if op == "count" else work), have
    starts = np.searchsorted(ids[order], np.arange(groups))
    count = np.add.reduceat(present, starts, axis=1, dtype=np.int32)
    have = count > 0
    del present
    if op == "count":
        result = count.astype(np.float64)
    elif op in ("max", "min"):
        result = (np.fmax if op == "max" else np.fmin).reduceat(work, starts, axis=1)
    else:
        result = np.add.reduceat(work, starts, axis=1)
        if op == "avg":
            result /= np.maximum(count, 1)
    result[~have] = np.nan
    return result, have


def _parse_bound(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan  # Prometheus skips a series whose le does not parse


def histogram_quantile(q: float, inner: Vec) -> Vec:
    bounds = np.array([_parse_bound(labels.get("le", "")) for labels in inner.labels])
    keep = ~np.isnan(bounds)
    values, present, labels = inner.values, inner.present, inner.labels
    if not keep.all():
        labels = [labels for labels, kept in zip(inner.labels, keep) if kept]
        values, present, bounds = values[:, keep], present[:, keep], bounds[keep]
    # The group is the series without le (its name included, as Prometheus keys it); the result drops both.
    group_ids, keys = _group_ids([label_key({n: v for n, v in labels.items() if n != "le"}) for labels in labels])
    steps, groups = values.shape[0], len(keys)
    if groups == 0:
        return Vec(np.empty((steps, 0)), np.empty((steps, 0), dtype=bool), [])
    # Coalesce series with the same (group, bound), summing counts as Prometheus does.
    pairs = np.stack([group_ids, (bounds + 0.0).view(np.int64)], axis=1) if len(bounds) else np.empty((0, 2), dtype=np.int64)
    _, bucket_ids = np.unique(pairs, axis=0, return_inverse=True)
    bucket_ids = bucket_ids.reshape(-1)
    buckets = bucket_ids.max() + 1
    bucket_group = np.zeros(buckets, dtype=np.int64)
    bucket_bound = np.zeros(buckets)
    bucket_group[bucket_ids], bucket_bound[bucket_ids] = group_ids, bounds
    # Lay buckets out as [group, position by bound]: the summed columns come out in that order (one copy).
    order = np.lexsort((bucket_bound, bucket_group))
    rank = np.empty(buckets, dtype=np.int64)
    rank[order] = np.arange(buckets)
    counts, have = aggregate("sum", values, present, rank[bucket_ids], buckets)
    sorted_groups = bucket_group[order]
    position = np.arange(buckets) - np.searchsorted(sorted_groups, sorted_groups)
    width = int(position.max()) + 1
    upper = np.full((groups, width), np.inf)
    upper[sorted_groups, position] = bucket_bound[order]
    if (np.isnan(counts) & have).any():
        raise Unsupported("histogram_quantile over NaN bucket counts")
    result = np.full((steps, groups), np.nan)
    result_present = np.zeros((steps, groups), dtype=bool)
    rows = max(1, BLOCK_CELLS // max(groups * width, 1))  # a few steps at a time: the cube stays small
    for low in range(0, steps, rows):
        high = min(low + rows, steps)
        result[low:high], result_present[low:high] = _bucket_quantile(
            q, counts[low:high], have[low:high], sorted_groups, position, upper)
    out_labels = [{n: v for n, v in dict(key).items() if n not in ("le", "__name__")} for key in keys]
    return Vec(result, result_present, out_labels)


def _bucket_quantile(q: float, counts: np.ndarray, have: np.ndarray, groups_of: np.ndarray, position: np.ndarray,
                     upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prometheus' bucketQuantile for some steps at once: counts/have are (steps, buckets), bucket k belonging to
    group groups_of[k] at position[k] in bound order; upper is (groups, width) of bounds."""
    steps, (groups, width) = counts.shape[0], upper.shape
    cube = np.empty((steps, groups, width))
    there = np.zeros((steps, groups, width), dtype=bool)
    cube[:, groups_of, position] = counts
    there[:, groups_of, position] = have
    n = there.sum(axis=2)
    cells = np.arange(steps * groups)
    if np.all(there[:, :, :-1] >= there[:, :, 1:]):
        # What is scraped: the buckets present at a step are the lowest of their histogram; nothing to compact.
        upper_rows = np.tile(np.arange(groups), steps)

        def bound_at(index: np.ndarray) -> np.ndarray:
            return upper[upper_rows, index.reshape(-1)].reshape(index.shape)
    else:  # compact the buckets present at each step to the left, keeping bound order
        compact = np.argsort(~there, axis=2, kind="stable")
        cube = np.take_along_axis(cube, compact, axis=2)
        bounds = np.take_along_axis(np.broadcast_to(upper, cube.shape), compact, axis=2).reshape(-1, width)
        del compact

        def bound_at(index: np.ndarray) -> np.ndarray:
            return bounds[cells, index.reshape(-1)].reshape(index.shape)
    del there
    cube[np.arange(width) >= n[:, :, None]] = -np.inf
    np.maximum.accumulate(cube, axis=2, out=cube)  # ensureMonotonic
    flat = cube.reshape(-1, width)

    def count_at(index: np.ndarray) -> np.ndarray:
        return flat[cells, index.reshape(-1)].reshape(index.shape)

    last = np.maximum(n - 1, 0)
    observations = count_at(last)
    top = bound_at(last)
    result_present = n > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        rank = q * observations
        # sort.Search over all but the last bucket: the first whose (monotonic) count reaches the rank.
        hit = (np.arange(width) < (n - 1)[:, :, None]) & (cube >= rank[:, :, None])
        first_hit = hit.argmax(axis=2)
        b = np.where(hit.reshape(-1, width)[cells, first_hit.reshape(-1)].reshape(n.shape), first_hit, n - 1)
        del hit
        b_safe = np.clip(b, 0, width - 1)
        end = bound_at(b_safe)
        count_b = count_at(b_safe)
        prev = np.clip(b - 1, 0, width - 1)
        start = np.where(b > 0, bound_at(prev), 0.0)
        count_prev = np.where(b > 0, count_at(prev), 0.0)
        interpolated = start + (end - start) * ((rank - count_prev) / (count_b - count_prev))
        second_last = bound_at(np.clip(n - 2, 0, width - 1))
        result = np.where(b == n - 1, second_last, interpolated)
        result = np.where((b == 0) & (end <= 0) & (b != n - 1), end, result)
        nan = ~np.isposinf(top) | (n < 2) | (observations == 0)
        result = np.where(nan, np.nan, result)
    if math.isnan(q):
        result = np.full_like(result, np.nan)
    elif q < 0:
        result = np.full_like(result, -np.inf)
    elif q > 1:
        result = np.full_like(result, np.inf)
    return np.where(result_present, result, np.nan), result_present


def _signatures(vector: Vec, modifier) -> list[tuple]:
    matching = modifier.matching if modifier is not None else None
    if matching is not None and str(matching.type).endswith("Include"):
        names = set(matching.labels)
        return [tuple(sorted((n, v) for n, v in labels.items() if n in names and v != "")) for labels in vector.labels]
    ignored = set(matching.labels) if matching is not None else set()
    ignored.add("__name__")
    return [tuple(sorted((n, v) for n, v in labels.items() if n not in ignored and v != "")) for labels in vector.labels]


def _any_by_signature(present: np.ndarray, signatures: list[tuple], wanted: list[tuple]) -> np.ndarray:
    """(T, len(wanted)): whether any column with that signature is present at each step."""
    ids, keys = _group_ids(signatures)
    if not keys:
        return np.zeros((present.shape[0], len(wanted)), dtype=bool)
    _, have = aggregate("count", present.astype(np.float64), present, ids, len(keys))
    index = {key: i for i, key in enumerate(keys)}
    columns = np.array([index.get(key, -1) for key in wanted], dtype=np.int64)
    found = have[:, np.maximum(columns, 0)] if len(columns) else np.zeros((present.shape[0], 0), dtype=bool)
    return found & (columns >= 0)[None, :]


def set_operation(op: str, lhs: Vec, rhs: Vec, modifier) -> Vec:
    left_sigs, right_sigs = _signatures(lhs, modifier), _signatures(rhs, modifier)
    if op == "and":
        keep = lhs.present & _any_by_signature(rhs.present, right_sigs, left_sigs)
        return Vec(np.where(keep, lhs.values, np.nan), keep, lhs.labels)
    if op == "unless":
        keep = lhs.present & ~_any_by_signature(rhs.present, right_sigs, left_sigs)
        return Vec(np.where(keep, lhs.values, np.nan), keep, lhs.labels)
    added = rhs.present & ~_any_by_signature(lhs.present, left_sigs, right_sigs)
    return Vec(np.concatenate([lhs.values, np.where(added, rhs.values, np.nan)], axis=1),
               np.concatenate([lhs.present, added], axis=1), lhs.labels + rhs.labels)


def vector_operation(op: str, lhs: Vec, rhs: Vec, modifier, return_bool: bool) -> Vec:
    left_sigs, right_sigs = _signatures(lhs, modifier), _signatures(rhs, modifier)
    # One column per right signature; two right series with one signature at one step is Prometheus' error.
    right_ids, right_keys = _group_ids(right_sigs)
    steps = lhs.values.shape[0]
    if len(right_keys):
        count, _ = aggregate("count", rhs.present.astype(np.float64), rhs.present, right_ids, len(right_keys))
        if (count > 1).any():
            raise Unsupported("several right-hand series match one signature (Prometheus refuses this matching)")
        right_values, right_present = aggregate("sum", rhs.values, rhs.present, right_ids, len(right_keys))
    else:
        right_values, right_present = np.empty((steps, 0)), np.empty((steps, 0), dtype=bool)
    index = {key: i for i, key in enumerate(right_keys)}
    columns = np.array([index.get(key, -1) for key in left_sigs], dtype=np.int64)
    matched = columns >= 0
    safe = np.maximum(columns, 0)
    if len(right_keys):
        other_values, other_present = right_values[:, safe], right_present[:, safe] & matched[None, :]
    else:
        other_values = np.full(lhs.values.shape, np.nan)
        other_present = np.zeros(lhs.values.shape, dtype=bool)
    both = lhs.present & other_present
    left_ids, left_keys = _group_ids(left_sigs)
    if len(left_keys) < len(left_sigs):
        matches, _ = aggregate("count", both.astype(np.float64), both, left_ids, len(left_keys))
        if (matches > 1).any():
            raise Unsupported("several left-hand series match one right-hand series (needs group_left)")
    with np.errstate(all="ignore"):
        if op in ARITHMETIC:
            values, present = ARITHMETIC[op](lhs.values, other_values), both
        elif return_bool:
            values, present = COMPARISON[op](lhs.values, other_values).astype(np.float64), both
        else:
            held = COMPARISON[op](lhs.values, other_values)
            values, present = lhs.values, both & held
    matching = modifier.matching if modifier is not None else None
    labels = []
    for series in lhs.labels:
        result = dict(series)
        if op in ARITHMETIC or return_bool:
            result.pop("__name__", None)
        if matching is not None and str(matching.type).endswith("Include"):
            result = {n: v for n, v in result.items() if n in set(matching.labels)}
        elif matching is not None:
            result = {n: v for n, v in result.items() if n not in set(matching.labels)}
        labels.append(result)
    return Vec(np.where(present, values, np.nan), present, labels)


# -- the frame ----------------------------------------------------------------------------------------------------

def to_frame(query: str, vector: Vec, grid: pd.DatetimeIndex) -> RangeFrame:
    """Series with a sample, one per label set, ordered by label set as Prometheus orders a range result."""
    ids, keys = _group_ids([label_key(labels) for labels in vector.labels])
    count, _ = aggregate("count", vector.present.astype(np.float64), vector.present, ids, len(keys))
    if (count > 1).any():
        raise Unsupported("two series with one label set at one step (Prometheus refuses this result)")
    values, present = aggregate("sum", vector.values, vector.present, ids, len(keys))
    values = np.where(present, values, np.nan)
    kept = present.any(axis=0)
    order = sorted((i for i in range(len(keys)) if kept[i]), key=lambda i: keys[i])
    labels = pd.DataFrame([dict(keys[i]) for i in order]).fillna("")
    labels.index = pd.RangeIndex(len(order))
    frame = pd.DataFrame(values[:, order] if order else np.empty((len(grid), 0)), index=grid,
                         columns=pd.RangeIndex(len(order)))
    return RangeFrame(query=query, values=frame, labels=labels)


# -- the source ---------------------------------------------------------------------------------------------------

TAIL_REREAD_MS = 5 * 60 * 1000  # a later range re-reads this much before the previous end (late samples)


def time_slice(raw: RawSamples, low_ms: int, high_ms: int) -> RawSamples:
    """The samples of `raw` with low_ms <= t <= high_ms (every series kept, possibly with none)."""
    keep = (raw.timestamps_ms >= low_ms) & (raw.timestamps_ms <= high_ms)
    series = np.repeat(np.arange(len(raw.counts)), raw.counts)[keep]
    return RawSamples(raw.metrics, np.bincount(series, minlength=len(raw.counts)).astype(np.int64),
                      raw.timestamps_ms[keep], raw.values[keep], raw.has_staleness)


def series_slice(raw: RawSamples, keep: np.ndarray) -> RawSamples:
    """The series of `raw` where `keep` (one bool per series), with all their samples, in the same order."""
    samples = np.repeat(keep, raw.counts)
    return RawSamples([metric for metric, kept in zip(raw.metrics, keep) if kept], raw.counts[keep],
                      raw.timestamps_ms[samples], raw.values[samples], raw.has_staleness)


def matching_series(metrics: Sequence[Mapping[str, str]], matchers: Sequence[Matcher]) -> np.ndarray:
    """Whether each series matches every (Equal or NotEqual) matcher; a missing label matches as "" does."""
    keep = np.ones(len(metrics), dtype=bool)
    for matcher in matchers:
        equal = np.fromiter((metric.get(matcher.name, "") == matcher.value for metric in metrics), dtype=bool,
                            count=len(metrics))
        keep &= equal if matcher.op == "Equal" else ~equal
    return keep


EXACT_OPS = ("Equal", "NotEqual")  # matchers applied locally exactly as Prometheus does (regexes are RE2's)


@dataclass
class PlannedRead:
    """How one selector is read for the queries `LocalSource.prepare` planned: over [start_ms, end_ms] once, or
    filtered from `parent`'s samples by the `extra` matchers; `uses` counts the planned reads of these samples
    still to come (the evaluator's, and one per selector filtered from them)."""

    start_ms: int
    end_ms: int
    uses: int = 0
    parent: tuple[Matcher, ...] | None = None
    extra: tuple[Matcher, ...] = ()


def plan_reads(needs: Mapping[tuple[Matcher, ...], tuple[int, int]], widen_ms: int) -> dict[tuple, PlannedRead]:
    """Each selector's read: its own, or (when it only adds Equal/NotEqual matchers to another selector read
    anyway, whose own range covers it once widened by at most `widen_ms` a side) filtered from that one's samples."""
    plan: dict[tuple, PlannedRead] = {}
    for matchers in sorted(needs, key=len):  # a parent has fewer matchers; parents are read, never filtered
        low, high = needs[matchers]
        chosen = None
        for other, read in plan.items():
            extra = set(matchers) - set(other)
            if (read.parent is None and set(other) < set(matchers) and all(m.op in EXACT_OPS for m in extra)
                    and needs[other][0] - widen_ms <= low and high <= needs[other][1] + widen_ms
                    and (chosen is None or len(other) > len(chosen))):
                chosen = other
        if chosen is None:
            plan[matchers] = PlannedRead(low, high)
            continue
        parent = plan[chosen]
        parent.start_ms, parent.end_ms = min(parent.start_ms, low), max(parent.end_ms, high)
        extra = tuple(m for m in matchers if m not in set(chosen))
        plan[matchers] = PlannedRead(low, high, parent=chosen, extra=extra)
    return plan


_PLAIN_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def group_reads(plan: dict[tuple, PlannedRead], widen_ms: int) -> dict[tuple, PlannedRead]:
    """Selectors read on their own that differ only in their metric name (`__name__="x"`, the same other
    matchers) read together as `{__name__=~"x|y", ...}` and filtered by name: each read has a cost of its own
    (a request, and a decoder's pass over the positions of its chunks) that small selectors would pay many times.
    Histogram buckets (many series a metric) stay reads of their own, so one read's memory is one histogram's."""
    groups: dict[tuple, list[tuple]] = {}
    for matchers, read in plan.items():
        names = [m for m in matchers if m.name == "__name__"]
        if (read.parent is None and len(names) == 1 and names[0].op == "Equal"
                and _PLAIN_NAME.fullmatch(names[0].value) and not names[0].value.endswith("_bucket")):
            groups.setdefault(tuple(m for m in matchers if m.name != "__name__"), []).append(matchers)
    for rest, members in groups.items():
        members.sort(key=lambda m: plan[m].start_ms - plan[m].end_ms)  # the longest range first
        low, high = plan[members[0]].start_ms, plan[members[0]].end_ms
        # Ranges within `widen_ms` of the longest, both ends: no member reads much beyond its own.
        members = [m for m in members
                   if abs(plan[m].start_ms - low) <= widen_ms and abs(plan[m].end_ms - high) <= widen_ms]
        if len(members) < 2:
            continue
        names = sorted(m.value for member in members for m in member if m.name == "__name__")
        key = (Matcher("__name__", "Re", "|".join(names)),) + rest
        plan[key] = PlannedRead(min(plan[m].start_ms for m in members), max(plan[m].end_ms for m in members))
        for member in members:
            read = plan[member]
            read.parent, read.extra = key, tuple(m for m in member if m.name == "__name__")
    return plan


def _as_chunk(raw: RawSamples) -> MatrixChunk:
    return MatrixChunk(raw.metrics, raw.counts, raw.timestamps_ms, raw.values)


READERS = ("auto", "remote-read", "range-vector", "query")
# Selectors read at once. A read's decode holds a few times its samples' 16 bytes in temporaries, and decoding is
# CPU work in this process (streamed chunks are decoded as they arrive): more reads in flight raised the peak, not
# the pace (vLLM pack, 2 cores: 0.44 s and 31 bytes per raw sample with one, 0.47-0.52 s and up to 40 bytes with
# two), while queries evaluate what was read beside them. (SAMPLES answers, which the server builds, gain from two.)
READS_AT_ONCE = 1


class LocalSource:
    """A `Source` that computes each query from raw samples when the local evaluator supports it, and otherwise
    asks `source` to range-query it. `source` is a PrometheusSource, with `reader` "auto" (remote read where the
    server serves it, else the query path), "remote-read", "range-vector" (raw samples through `selector[Δ]`
    queries) or "query" (every query on the query path); or a snapshot with its recorded raw samples as `reader`
    (an object with `read(matchers, start_ms, end_ms)`, `has_staleness` and `name`), whose recorded results are
    replayed as they are. `paths[query]` says how each query was answered (for reports).

    Raw samples read are kept for reuse by later queries and ranges (a monitor's rounds, `raw_samples()` for
    snapshots), except those of queries planned together by `prepare` (a backtest), which go after the last read
    planned for them unless `keep_samples`."""

    def __init__(self, source, reader="auto", cache_margin: pd.Timedelta = pd.Timedelta("1h"),
                 keep_samples: bool = False) -> None:
        self.source = source
        self.client = getattr(source, "client", None)
        self.url = getattr(source, "url", None)
        if isinstance(reader, str):
            if reader not in READERS:
                raise SourceError(f"reader must be one of {', '.join(READERS)}, got {reader!r}")
            if self.client is None and reader != "query":
                raise SourceError(f"reader {reader!r} reads from a Prometheus-compatible server; {source!r} is not one")
            served = None  # auto: the reader that probed remote read, its response type negotiated
            if reader == "auto":
                served = probe_remote_read(self.client)
                reader = "remote-read" if served else "query"
            self.reader_name = reader
            make = {"remote-read": RemoteReader, "range-vector": RangeVectorReader}.get(reader)
            self.reader = served or (make(self.client) if make else None)
        else:
            self.reader, self.reader_name = reader, reader.name
        # Live reads take some extra history once, so queries with longer look-behinds reuse them; a recording
        # is read exactly as recorded.
        self.live = isinstance(self.reader, (RemoteReader, RangeVectorReader))
        self.margin_ms = int(cache_margin.total_seconds() * 1000) if self.live else 0
        self.paths: dict[str, str] = {}
        self.samples_read = 0
        self.bytes_read = 0
        self.read_seconds = 0.0  # in the reader (request, answer, decode), summed over the reads
        self.keep_samples = keep_samples
        self._cache: dict[tuple, tuple[int, int, RawSamples]] = {}
        self._locks: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()
        self._plan: dict[tuple, PlannedRead] = {}
        self._reads = threading.BoundedSemaphore(READS_AT_ONCE)

    def close(self) -> None:
        self.source.close()

    def raw_samples(self) -> list[tuple[tuple[Matcher, ...], int, int, RawSamples]]:
        """Every selector's raw samples read so far: (matchers, start ms, end ms, samples); for snapshots."""
        with self._lock:
            return [(matchers, low, high, raw) for matchers, (low, high, raw) in self._cache.items()]

    def __enter__(self) -> "LocalSource":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalSource({self.url!r}, reader={self.reader_name!r})"

    # The wrapped source's lookups, as attributes of its own: a recorded snapshot has none, and callers that
    # check with getattr(source, "label_values", None) must see that through this wrapper too.
    @property
    def label_values(self) -> Callable[..., list[str]]:
        return self.source.label_values

    @property
    def series_exists(self) -> Callable[..., bool]:
        return self.source.series_exists

    def plan(self, query: str) -> str:
        """How `query` would be answered: "local (<reader>)" or "query (<why not local>)"."""
        if self.reader is None:
            return "query (raw samples not read from this server)"
        if getattr(self.source, "has_result", lambda _: False)(query):
            return "query (recorded result)"
        try:
            check(promql_parser.parse(query), self.reader.has_staleness)
        except Unsupported as why:
            return f"query ({why})"
        return f"local ({self.reader.name})"

    def prepare(self, queries: Iterable[str], start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> None:
        """Plan the raw reads of queries about to be evaluated over the same range: each selector is read once
        over the union of what its queries need (no re-read for a longer look-behind found later), a selector
        that only narrows another one read anyway (`x{reason="error"}` beside `x`) is filtered from its samples
        instead of read, and without `keep_samples` each selector's samples go at the last read planned for them
        (held then only by the evaluation using them). What each query reads is found by evaluating it over no
        samples, which records the reads it asks for."""
        if self.reader is None:
            return
        grid = evaluation_grid(start, end, step)
        if len(grid) == 0:
            return
        times_ms = _grid_ms(grid)
        empty = RawSamples([], np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0),
                           self.reader.has_staleness)
        needs: dict[tuple, tuple[int, int]] = {}
        reads: list[tuple] = []
        for query in dict.fromkeys(queries):
            if not self.plan(query).startswith("local"):
                continue
            asked: list[tuple[tuple, int, int]] = []
            try:
                Evaluator(lambda m, low, high: asked.append((m, low, high)) or empty,
                          self.reader.has_staleness).evaluate(promql_parser.parse(query), times_ms)
            except Unsupported:
                continue
            for matchers, low, high in asked:
                reads.append(matchers)
                known = needs.get(matchers, (low, high))
                needs[matchers] = (min(known[0], low), max(known[1], high))
        plan = plan_reads(needs, self.margin_ms)
        if self.live:  # a recording holds the selectors it was asked for, not their union
            plan = group_reads(plan, self.margin_ms)
        for matchers in reads:
            plan[matchers].uses += 1
        for read in plan.values():
            if read.parent is not None:
                plan[read.parent].uses += 1
        with self._lock:
            self._plan = plan

    def query_range(self, query: str, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> RangeFrame:
        path = self.plan(query)
        if path.startswith("local"):
            grid = evaluation_grid(start, end, step)
            if len(grid) == 0:
                raise SourceError(f"range end {end} is before its start {start} (query: {query})")
            times_ms = _grid_ms(grid)
            try:
                vector = Evaluator(self._fetch, self.reader.has_staleness).evaluate(promql_parser.parse(query),
                                                                                    times_ms)
                if isinstance(vector, float):
                    raise Unsupported("a scalar result")
                frame = to_frame(query, vector, grid)
            except Unsupported as why:
                path = f"query ({why})"
            else:
                with self._lock:
                    self.paths[query] = path
                return frame
        with self._lock:
            self.paths[query] = path
        return self.source.query_range(query, start, end, step)

    def _fetch(self, matchers: tuple[Matcher, ...], start_ms: int, end_ms: int) -> RawSamples:
        planned = self._plan.get(matchers)
        if planned is None or planned.uses <= 0 or not planned.start_ms <= start_ms <= end_ms <= planned.end_ms:
            return self._read(matchers, start_ms, end_ms, self.margin_ms)
        if planned.parent is not None:
            raw = self._filtered(matchers, planned)
        else:
            raw = self._read(matchers, planned.start_ms, planned.end_ms, 0)  # the union of what its queries need
        with self._lock:
            planned.uses -= 1
            if planned.uses == 0 and not self.keep_samples:
                self._cache.pop(matchers, None)
        return raw

    def _read(self, matchers: tuple[Matcher, ...], start_ms: int, end_ms: int, margin: int) -> RawSamples:
        key = matchers
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] <= start_ms and cached[1] >= end_ms:
                return cached[2]
            if cached is not None and cached[0] <= start_ms < cached[1]:
                # A later range (a monitor's next round): keep what is still needed, read only the new end, again
                # from a little before it (samples near the old end may have arrived since).
                low = max(cached[0], start_ms - margin)
                tail = max(low, cached[1] - TAIL_REREAD_MS)
                new = self._reader_read(matchers, tail, end_ms)
                raw = join_pieces([_as_chunk(time_slice(cached[2], low, tail - 1)), _as_chunk(new)],
                                  cached[2].has_staleness and new.has_staleness)
                read, high = new, end_ms
            elif cached is None or start_ms >= cached[1]:  # nothing read yet that is still needed
                low, high = start_ms - margin, end_ms
                raw = read = self._reader_read(matchers, low, high)
            else:  # an earlier start: read the union again
                low, high = min(start_ms, cached[0]) - margin, max(end_ms, cached[1])
                raw = read = self._reader_read(matchers, low, high)
            with self._lock:
                self._cache[key] = (low, high, raw)
                self.samples_read += len(read.values)
                self.bytes_read += read.nbytes
            return raw

    def _reader_read(self, matchers: tuple[Matcher, ...], start_ms: int, end_ms: int) -> RawSamples:
        with self._reads:
            began = time.perf_counter()
            try:
                return self.reader.read(matchers, start_ms, end_ms)
            finally:
                with self._lock:
                    self.read_seconds += time.perf_counter() - began

    def _filtered(self, matchers: tuple[Matcher, ...], planned: PlannedRead) -> RawSamples:
        with self._lock:
            lock = self._locks.setdefault(matchers, threading.Lock())
        with lock:
            cached = self._cache.get(matchers)
            if cached is not None and cached[0] <= planned.start_ms and cached[1] >= planned.end_ms:
                return cached[2]
            parent = self._plan[planned.parent]
            whole = self._fetch(planned.parent, parent.start_ms, parent.end_ms)
            raw = series_slice(whole, matching_series(whole.metrics, planned.extra))
            with self._lock:
                self._cache[matchers] = (parent.start_ms, parent.end_ms, raw)
            return raw


def _grid_ms(grid: pd.DatetimeIndex) -> np.ndarray:
    return (grid.as_unit("ns").asi8 // _MS).astype(np.int64)  # pandas may hold µs or ns
