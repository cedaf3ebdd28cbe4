"""Range queries against Prometheus, or anything that speaks its HTTP API (Thanos, Mimir, VictoriaMetrics).

Requests go through `PrometheusClient` (connection settings, retries, error messages shared with every other
caller); this module owns what is particular to ranges. Long ranges are split on the step grid so no request
exceeds Prometheus' 11,000 points per series, and the chunks are joined per label set into one `RangeFrame`; the
chunks of one query are fetched `chunk_concurrency` at a time. Answers are decoded from the raw body without
`json` building two Python objects per sample (~1 s per million samples before any frame is built).
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator, Mapping
from warnings import catch_warnings, simplefilter

import numpy as np
import pandas as pd

from rules_engine.source.base import SourceError
from rules_engine.source.client import PrometheusClient, PrometheusSettings, answer_parts, json_answer, parse_settings
from rules_engine.source.frame import RangeFrame, evaluation_grid

# Prometheus rejects a range query whose (end - start) / step exceeds 11,000 ("exceeded maximum resolution of
# 11,000 points per timeseries"); a chunk of 11,000 grid points spans 10,999 steps.
MAX_POINTS_PER_QUERY = 11_000

_NS_PER_MS = 1_000_000


class SourceSettings(PrometheusSettings):
    """`PrometheusSource.from_config`'s mapping: the client's settings and how ranges are split and fetched."""

    max_points_per_query: int | None = None
    chunk_concurrency: int | None = None


class PrometheusSource:
    """A `Source` that evaluates range queries on a Prometheus-compatible HTTP API.

    `url` is a URL (then `connection` holds `PrometheusClient`'s keyword arguments: auth, TLS, headers, timeout,
    retries) or a client already built, shared with other callers.
    """

    def __init__(self, url: str | PrometheusClient, *, max_points_per_query: int = MAX_POINTS_PER_QUERY,
                 chunk_concurrency: int = 2, **connection: Any) -> None:
        if not 1 <= max_points_per_query <= MAX_POINTS_PER_QUERY:
            raise SourceError(f"max_points_per_query must be 1..{MAX_POINTS_PER_QUERY}, got {max_points_per_query}")
        if isinstance(url, PrometheusClient) and connection:
            raise SourceError(f"connection settings ({', '.join(sorted(connection))}) belong to the client given")
        self.client = url if isinstance(url, PrometheusClient) else PrometheusClient(url, **connection)
        self.url = self.client.url  # without credentials: safe in messages and snapshot files
        self.max_points_per_query = max_points_per_query
        self.chunk_concurrency = max(1, int(chunk_concurrency))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "PrometheusSource":
        """Build from a mapping of `PrometheusClient.from_config`'s settings plus max_points_per_query and
        chunk_concurrency."""
        settings = parse_settings(config, SourceSettings)
        ranges = {name: getattr(settings, name) for name in ("max_points_per_query", "chunk_concurrency")
                  if getattr(settings, name) is not None}
        return cls(PrometheusClient(settings.url, **settings.connection()), **ranges)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "PrometheusSource":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PrometheusSource({self.url!r})"

    # -- the Source protocol -----------------------------------------------------------------------------------

    def query_range(self, query: str, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> RangeFrame:
        """Evaluate `query` on evaluation_grid(start, end, step), in as many requests as the 11,000-point limit needs."""
        if step < pd.Timedelta(milliseconds=1):
            raise SourceError(f"step must be at least 1ms, got {step} (query: {query})")
        grid = evaluation_grid(start, end, step)
        if len(grid) == 0:
            raise SourceError(f"range end {end} is before its start {start} (query: {query})")
        pieces = list(_split_grid(grid, self.max_points_per_query))

        def fetch(piece: pd.DatetimeIndex) -> MatrixChunk:
            return self._query_chunk(query, piece[0], piece[-1], step)

        if len(pieces) == 1:
            return frame_from_chunks(query, [fetch(pieces[0])], grid)
        # Prometheus evaluates one request on one core: the pieces of a long range go in parallel.
        with ThreadPoolExecutor(max_workers=min(len(pieces), self.chunk_concurrency)) as pool:
            return frame_from_chunks(query, list(pool.map(fetch, pieces)), grid)

    def _query_chunk(self, query: str, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> "MatrixChunk":
        form = {"query": query, "start": _api_seconds(start.value), "end": _api_seconds(end.value),
                "step": _api_seconds(step.value),
                # Lets the server stop the query when the client stops waiting.
                "timeout": f"{self.client.timeout:g}s"}
        what = f"query {query}"
        return decode_matrix(self.client.post("/api/v1/query_range", form, what), self.client.unusable_answer(what))

    # -- small lookups (the SLO checks ask a source for them when it can answer) -------------------------------

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        """Values of `label` over all series, or over series selected by `match` (a series selector)."""
        return self.client.label_values(label, match)

    def series_exists(self, match: str, start: datetime | None = None, end: datetime | None = None) -> bool:
        """Whether any series matches the selector `match` between start and end (default: the last hour)."""
        return self.client.series_exists(match, start, end)


# -- splitting and encoding the range ---------------------------------------------------------------------------

def _split_grid(grid: pd.DatetimeIndex, points: int) -> Iterator[pd.DatetimeIndex]:
    """Consecutive runs of at most `points` grid points: every grid point in exactly one chunk."""
    for first in range(0, len(grid), points):
        yield grid[first:first + points]


def _api_seconds(nanoseconds: int) -> str:
    # Prometheus works in milliseconds; exact decimal text avoids float rounding moving a chunk off the grid.
    ms = nanoseconds // _NS_PER_MS
    sign = "-" if ms < 0 else ""
    return f"{sign}{abs(ms) // 1000}.{abs(ms) % 1000:03d}"


# -- decoding a matrix answer without per-sample Python work ----------------------------------------------------

@dataclass(frozen=True)
class MatrixChunk:
    """One range-query answer: series labels, and every sample as flat arrays (series i owns counts[i] samples)."""

    metrics: list[dict[str, str]]
    counts: np.ndarray  # int64, samples per series
    timestamps_ms: np.ndarray  # int64
    values: np.ndarray  # float64
    warnings: tuple[str, ...] = ()  # the answer's warnings: Prometheus says the data is partial


_VALUES_KEY = b'"values":['


def decode_matrix(body: bytes, error: Callable[[str], SourceError]) -> MatrixChunk:
    """Decode a query_range answer body.

    `json.loads` would build two Python objects per sample (~1 s per million). Instead each series' "values" array
    is cut out of the body as text and the remaining skeleton (status, labels) is parsed as JSON; the cut-out arrays
    are parsed in one numpy call. The cut is safe: inside a JSON string a quote is escaped, so `"values":[` can
    only be the key itself. An answer laid out differently (whitespace, other key order inside pairs) takes the
    plain JSON path.
    """
    arrays, skeleton = _cut_values_arrays(body)
    try:
        answer = json.loads(skeleton)
    except ValueError:
        answer = None
    if answer is not None:
        result, warnings = _matrix_result(answer, error)
        if not arrays:  # nothing was cut out: the skeleton is the whole answer, already decoded
            return _chunk_from_lists(result, warnings, error)
        if len(arrays) == len(result) and all(series.get("values") == i for i, series in enumerate(result)):
            chunk = _chunk_from_arrays(result, warnings, arrays)
            if chunk is not None:
                return chunk
    return _chunk_from_lists(*_matrix_result(json_answer(body, error), error), error)


def _cut_values_arrays(body: bytes) -> tuple[list[bytes], bytes]:
    """The text inside each `"values":[...]`, and the body with each array replaced by its index."""
    skeleton: list[bytes] = []
    arrays: list[bytes] = []
    position = 0
    while (found := body.find(_VALUES_KEY, position)) >= 0:
        inner = found + len(_VALUES_KEY)
        if body.startswith(b"]", inner):
            close = inner  # an empty array
        else:
            close = body.find(b"]]", inner) + 1
            if close == 0:
                break
        skeleton += [body[position:found], b'"values":%d' % len(arrays)]
        arrays.append(body[inner:close])
        position = close + 1
    skeleton.append(body[position:])
    return arrays, b"".join(skeleton)


def _matrix_result(answer: Any, error: Callable[[str], SourceError]) -> tuple[list[dict], tuple[str, ...]]:
    data, warnings = answer_parts(answer, error)
    if not isinstance(data, dict) or data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
        kind = data.get("resultType") if isinstance(data, dict) else type(data).__name__
        raise error(f"expected a matrix result, got {kind}")
    for series in data["result"]:
        if "histograms" in series:
            raise error("native histogram samples, which are not evaluated; query a float series such as "
                        "histogram_quantile(...) or a classic _bucket series")
    return data["result"], warnings


def _chunk_from_arrays(result: list[dict], warnings: tuple[str, ...], arrays: list[bytes]) -> MatrixChunk | None:
    """Parse the cut-out "values" arrays: `[t,"v"],[t,"v"]` per series. None when the text is not of that form."""
    # A series of n pairs holds 2n - 1 commas; the `],[` separators between series arrays are added by the join.
    counts = np.fromiter(((array.count(b",") + 1) // 2 if array else 0 for array in arrays), dtype=np.int64,
                         count=len(arrays))
    text = b",".join(array for array in arrays if array).translate(None, b'[]"')
    if counts.sum() == 0:
        numbers = np.empty(0)
    else:
        try:
            with catch_warnings():
                # Text that is not all numbers stops the parse early with a warning; the count check catches it.
                simplefilter("ignore", DeprecationWarning)
                numbers = np.fromstring(text.decode("ascii"), sep=",")  # strtod: exact; reads NaN, +Inf, -Inf
        except (ValueError, UnicodeDecodeError):
            return None
    if numbers.size != 2 * counts.sum():
        return None
    pairs = numbers.reshape(-1, 2)
    return MatrixChunk(metrics=[series.get("metric", {}) for series in result], counts=counts,
                       timestamps_ms=np.rint(pairs[:, 0] * 1000).astype(np.int64), values=pairs[:, 1].copy(),
                       warnings=warnings)


def _chunk_from_lists(result: list[dict], warnings: tuple[str, ...], error: Callable[[str], SourceError]
                      ) -> MatrixChunk:
    """The plain path for an answer already decoded by json (a layout the text cut does not recognise)."""
    try:
        counts = np.array([len(series["values"]) for series in result], dtype=np.int64)
        flat = [item for series in result for pair in series["values"] for item in pair]
        pairs = np.array(flat, dtype=object).reshape(-1, 2)
        timestamps = pairs[:, 0].astype(np.float64)
        values = pairs[:, 1].astype(str).astype(np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise error(f"malformed matrix samples ({exc})") from None
    return MatrixChunk(metrics=[series.get("metric", {}) for series in result], counts=counts,
                       timestamps_ms=np.rint(timestamps * 1000).astype(np.int64), values=values,
                       warnings=warnings)


def series_of_chunks(chunks: list[MatrixChunk]) -> tuple[list[dict[str, str]], list[np.ndarray]]:
    """The distinct label sets of some chunks (first seen first), and per chunk each sample's index among them:
    the same label set in two chunks is the same series."""
    column_of: dict[tuple, int] = {}
    metrics: list[dict[str, str]] = []
    chunk_columns = []
    for chunk in chunks:
        ids = np.empty(len(chunk.metrics), dtype=np.int64)
        for i, metric in enumerate(chunk.metrics):
            key = tuple(sorted(metric.items()))
            if key not in column_of:
                column_of[key] = len(metrics)
                metrics.append(metric)
            ids[i] = column_of[key]
        chunk_columns.append(np.repeat(ids, chunk.counts))
    return metrics, chunk_columns


def frame_from_chunks(query: str, chunks: list[MatrixChunk], grid: pd.DatetimeIndex) -> RangeFrame:
    """Join chunk answers into one frame on `grid`: the same label set in two chunks is the same series.

    Series are ordered by label set the way Prometheus orders a range result, so a split query yields the same
    frame as an unsplit one. A warning repeated by several chunks is kept once: it is the query's.
    """
    metrics, chunk_columns = series_of_chunks(chunks)
    order = sorted(range(len(metrics)), key=lambda i: tuple(sorted(metrics[i].items())))
    rank = np.empty(len(metrics), dtype=np.int64)
    rank[order] = np.arange(len(metrics))

    values = np.full((len(grid), len(metrics)), np.nan)
    if chunks and metrics:
        columns = rank[np.concatenate(chunk_columns)]
        timestamps_ns = np.concatenate([chunk.timestamps_ms for chunk in chunks]) * _NS_PER_MS
        samples = np.concatenate([chunk.values for chunk in chunks])
        start_ns = grid[0].value
        step_ns = grid[1].value - start_ns if len(grid) > 1 else 1
        rows = np.rint((timestamps_ns - start_ns) / step_ns).astype(np.int64)
        # Prometheus answers at whole milliseconds; a grid with a sub-millisecond start still matches within 1ms.
        on_grid = (np.abs(timestamps_ns - (start_ns + rows * step_ns)) < _NS_PER_MS) & (rows >= 0) & (rows < len(grid))
        values[rows[on_grid], columns[on_grid]] = samples[on_grid]
    labels = pd.DataFrame([metrics[i] for i in order]).fillna("")
    labels.index = pd.RangeIndex(len(metrics))
    frame = pd.DataFrame(values, index=grid, columns=pd.RangeIndex(len(metrics)))
    warnings = tuple(dict.fromkeys(warning for chunk in chunks for warning in chunk.warnings))
    return RangeFrame(query=query, values=frame, labels=labels, warnings=warnings)
