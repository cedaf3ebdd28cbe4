"""Recorded range-query results: record once from a live source, replay offline (demos, tests, reproducible reports).

A snapshot is one ZIP archive (LZMA-compressed members):

- `snapshot.json`: format name and version, the range (start, end, step), creation time, the source URL without
  credentials, free-form `meta`, and per query its labels and the name of its values member;
- `values/<n>.bin`: that query's samples as a (series × points) little-endian float array, bytes shuffled so
  each byte position of all floats is contiguous (sign/exponent bytes sit together and compress well);
- version 2, recorded through a source that computes queries from raw samples (rules_engine.evaluate.local): a
  query answered that way is marked `local` and has no values member; instead `raw` lists each selector's stored
  samples (`raw/<n>.bin`: per-series counts, time deltas and values, shuffled the same way), so a long SLO period
  costs its samples once rather than every evaluated point of every query. Replay recomputes those queries.

Queries are matched as exact strings: the evaluator generates them canonically.
"""
from __future__ import annotations

import json
import lzma
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from rules_engine.source.base import Source, SourceError
from rules_engine.source.frame import RangeFrame, evaluation_grid
from rules_engine.source.raw import MATCH_TYPES, Matcher, RawSamples, selector_text
from rules_engine.spec.times import rfc3339

FORMAT = "rules-engine-snapshot"
VERSION = 2
READABLE_VERSIONS = (1, 2)
HEADER = "snapshot.json"


def record_snapshot(source: Source, queries: Iterable[str], start: pd.Timestamp, end: pd.Timestamp,
                    step: pd.Timedelta, path: str | os.PathLike, meta: Mapping[str, Any] | None = None,
                    single_precision: bool = False) -> Path:
    """Evaluate every query once over start..end at `step` and save all results to one file at `path`.

    `meta` is kept as-is (JSON-serialisable); a `record_command` entry there is what a replay names when asked
    for a query the snapshot lacks. `single_precision` stores float32 (about 7 significant digits), halving the
    file for snapshots committed to git; replay then differs from the live query below that precision.

    A source that says how it answered each query (`paths`, "local ..." for computed from raw samples) and hands
    out the raw samples it read (`raw_samples()`: (matchers, start ms, end ms, RawSamples)) has those queries
    stored as raw samples (always float64: the local evaluator recomputes from them).
    """
    unique_queries = list(dict.fromkeys(queries))
    grid = evaluation_grid(start, end, step)
    if len(grid) == 0:
        raise SourceError(f"cannot record snapshot {path}: range end {end} is before its start {start}")
    dtype = np.dtype("<f4" if single_precision else "<f8")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed: a failed recording never leaves half a snapshot under the real name.
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(handle)
    try:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_LZMA) as archive:
            entries = []
            for number, query in enumerate(unique_queries):
                frame = source.query_range(query, start, end, step)
                if str(getattr(source, "paths", {}).get(query, "")).startswith("local"):
                    entries.append({"query": query, "local": True})
                    continue
                if not frame.values.index.equals(grid):
                    raise SourceError(f"cannot record snapshot {path}: the source answered query {query} on a "
                                      f"different grid")
                member = f"values/{number}.bin"
                # Each result goes to the archive as it arrives, so memory holds one query's samples at a time.
                archive.writestr(member, _shuffled(frame.values.to_numpy(dtype=np.float64).T.astype(dtype)))
                entries.append({"query": query, "member": member, "series": frame.series_count,
                                "label_names": [str(name) for name in frame.labels.columns],
                                "label_values": frame.labels.astype(str).to_numpy().tolist()})
            raw_entries = []
            for number, (matchers, low, high, raw) in enumerate(getattr(source, "raw_samples", lambda: [])()):
                member = f"raw/{number}.bin"
                archive.writestr(member, _raw_bytes(raw))
                names = sorted({name for metric in raw.metrics for name in metric})
                raw_entries.append({"matchers": [[m.name, m.op, m.value] for m in matchers], "start_ms": low,
                                    "end_ms": high, "member": member, "series": len(raw.metrics),
                                    "samples": int(len(raw.values)), "has_staleness": raw.has_staleness,
                                    "label_names": names,
                                    "label_values": [[metric.get(name, "") for name in names] for metric in raw.metrics]})
            header = {
                "format": FORMAT, "version": VERSION,
                "created": _text(pd.Timestamp.now(tz="UTC")),
                "source": getattr(source, "url", None),  # PrometheusSource.url carries no credentials
                "start": _text(start), "end": _text(end), "step": _duration(step),
                "start_ns": int(start.value), "end_ns": int(end.value), "step_ns": int(step.value),
                "points": len(grid), "dtype": dtype.str,
                "meta": dict(meta or {}),
                "queries": entries,
                "raw": raw_entries,
            }
            archive.writestr(HEADER, json.dumps(header, indent=1, default=str))  # default: meta may hold timestamps
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would surprise whoever commits or shares the file
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


@dataclass(frozen=True)
class _Entry:
    query: str
    member: str
    series: int
    labels: pd.DataFrame


@dataclass(frozen=True)
class _RawEntry:
    matchers: tuple[Matcher, ...]
    start_ms: int
    end_ms: int
    member: str
    samples: int
    has_staleness: bool
    metrics: list[dict[str, str]]


class SnapshotSource:
    """A `Source` that replays a snapshot file: the recorded frame, or a slice of it on the recorded grid."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        header = _read_header(self.path)
        try:
            self.start = pd.Timestamp(int(header["start_ns"]), unit="ns", tz="UTC")
            self.end = pd.Timestamp(int(header["end_ns"]), unit="ns", tz="UTC")
            self.step = pd.Timedelta(int(header["step_ns"]), unit="ns")
            self.points = int(header["points"])
            self.dtype = np.dtype(header["dtype"])
            self.created = str(header["created"])
            self.source_url = header.get("source")
            self.meta = dict(header.get("meta") or {})
            entries = [_Entry(query=str(item["query"]), member=str(item["member"]), series=int(item["series"]),
                              labels=_labels_frame(item["label_names"], item["label_values"]))
                       for item in header["queries"] if not item.get("local")]
            self.local_queries = frozenset(str(item["query"]) for item in header["queries"] if item.get("local"))
            raw_entries = [_RawEntry(matchers=tuple(Matcher(str(n), str(op), str(v)) for n, op, v in item["matchers"]),
                                     start_ms=int(item["start_ms"]), end_ms=int(item["end_ms"]),
                                     member=str(item["member"]), samples=int(item["samples"]),
                                     has_staleness=bool(item["has_staleness"]),
                                     metrics=[{n: v for n, v in zip(item["label_names"], row) if v != ""}
                                              for row in item["label_values"]])
                           for item in header.get("raw", [])]
            if any(m.op not in MATCH_TYPES for entry in raw_entries for m in entry.matchers):
                raise ValueError("unknown matcher type")
        except (KeyError, TypeError, ValueError) as exc:
            raise SourceError(f"snapshot {self.path} has a malformed header ({type(exc).__name__}: {exc}); "
                              f"re-record it") from None
        if len(evaluation_grid(self.start, self.end, self.step)) != self.points or self.dtype.kind != "f":
            raise SourceError(f"snapshot {self.path} has an inconsistent header (range, points or dtype); re-record it")
        self._entries = {entry.query: entry for entry in entries}
        self._frames: dict[str, RangeFrame] = {}
        self._raw_entries = {entry.matchers: entry for entry in raw_entries}
        self._raw: dict[tuple[Matcher, ...], RawSamples] = {}
        # Replays the recorded raw samples to the local evaluator (rules_engine.evaluate.local.LocalSource).
        self.raw_reader = _RecordedRaw(self) if raw_entries else None

    @property
    def queries(self) -> tuple[str, ...]:
        return tuple(self._entries) + tuple(sorted(self.local_queries))

    def has_result(self, query: str) -> bool:
        """Whether the query's result was recorded (rather than the raw samples it is computed from)."""
        return query in self._entries

    def __repr__(self) -> str:
        return f"SnapshotSource({str(self.path)!r})"

    def query_range(self, query: str, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> RangeFrame:
        entry = self._entries.get(query)
        if entry is None and query in self.local_queries:
            raise SourceError(f"snapshot {self.path} holds query {query} as raw samples: replay it through "
                              f"rules_engine.api.backtest (or LocalSource), which recomputes it")
        if entry is None:
            raise SourceError(self._missing_query_message(query))
        if step != self.step:
            raise SourceError(f"snapshot {self.path} was recorded at step {_duration(self.step)}, not "
                              f"{_duration(step)} (query {query}); evaluate at step {_duration(self.step)} or re-record")
        grid = evaluation_grid(start, end, step)
        offset = start - self.start
        first = offset // self.step if offset >= pd.Timedelta(0) else -1
        if first < 0 or len(grid) == 0 or first + len(grid) > self.points or offset % self.step != pd.Timedelta(0):
            raise SourceError(f"snapshot {self.path} covers {_text(self.start)} .. {_text(self.end)} at step "
                              f"{_duration(self.step)}; the range {_text(start)} .. {_text(end)} is not on that "
                              f"grid (query {query}); evaluate within it or re-record")
        recorded = self._recorded_frame(entry)
        # The index is built from the request (not reused from the file) so it is exactly evaluation_grid(...).
        if first == 0 and len(grid) == self.points:
            values = pd.DataFrame(recorded.values.to_numpy(), index=grid, columns=recorded.values.columns)
            return RangeFrame(query=query, values=values, labels=recorded.labels)
        samples = recorded.values.to_numpy()[first:first + len(grid)]
        # Like Prometheus over the shorter range: series without a sample in it are not part of the answer.
        present = ~np.isnan(samples).all(axis=0)
        labels = recorded.labels.loc[present]
        labels = labels.loc[:, (labels != "").any(axis=0)] if len(labels) else labels.iloc[:, :0]
        values = pd.DataFrame(samples[:, present], index=grid, columns=pd.RangeIndex(int(present.sum())))
        return RangeFrame(query=query, values=values, labels=labels.reset_index(drop=True))

    def _recorded_frame(self, entry: _Entry) -> RangeFrame:
        if entry.query not in self._frames:
            raw = self._member(entry.member, f"the values of query {entry.query}")
            expected = entry.series * self.points * self.dtype.itemsize
            if len(raw) != expected:
                raise SourceError(f"snapshot {self.path} is damaged: values of query {entry.query} hold {len(raw)} "
                                  f"bytes, expected {expected}; re-record it")
            samples = _unshuffled(raw, self.dtype).reshape(entry.series, self.points).T.astype(np.float64)
            grid = evaluation_grid(self.start, self.end, self.step)
            values = pd.DataFrame(samples, index=grid, columns=pd.RangeIndex(entry.series))
            self._frames[entry.query] = RangeFrame(query=entry.query, values=values, labels=entry.labels)
        return self._frames[entry.query]

    def read_raw(self, matchers: tuple[Matcher, ...], start_ms: int, end_ms: int) -> RawSamples:
        entry = self._raw_entries.get(tuple(matchers))
        if entry is None or entry.start_ms > start_ms or entry.end_ms < end_ms:
            raise SourceError(f"snapshot {self.path} holds no raw samples of {selector_text(matchers)} over "
                              f"{start_ms} .. {end_ms} ms; re-record it")
        if entry.matchers not in self._raw:
            data = self._member(entry.member, f"the raw samples of {selector_text(matchers)}")
            self._raw[entry.matchers] = _raw_samples(data, entry, self.path)
        return self._raw[entry.matchers]

    def _member(self, member: str, what: str) -> bytes:
        try:
            with zipfile.ZipFile(self.path) as archive:
                return archive.read(member)
        except (OSError, zipfile.BadZipFile, KeyError, lzma.LZMAError, zlib.error, EOFError) as exc:
            raise SourceError(f"snapshot {self.path} is damaged: cannot read {what} ({exc}); re-record it") from None

    def _missing_query_message(self, query: str) -> str:
        how = self.meta.get("record_command") or (
            f"rules-engine record --rules RULES --prometheus URL --start {_text(self.start)} "
            f"--end {_text(self.end)} --step {_duration(self.step)} --out {self.path}")
        return (f"query not in snapshot {self.path}: {query}\n"
                f"  the snapshot holds {len(self._entries)} queries recorded {self.created} from "
                f"{self.source_url or 'an unnamed source'}; rules that need other queries need a new recording:\n"
                f"  {how}")


# -- file format -------------------------------------------------------------------------------------------------

def _read_header(path: Path) -> dict:
    if not path.is_file():
        raise SourceError(f"snapshot file {path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            if HEADER not in archive.namelist():
                raise SourceError(f"{path} is a ZIP archive but not a rules-engine snapshot (no {HEADER} in it)")
            header = json.loads(archive.read(HEADER))
    except zipfile.BadZipFile:
        raise SourceError(f"{path} is not a rules-engine snapshot: not a ZIP archive (truncated or another "
                          f"format); re-record it") from None
    except (OSError, ValueError, lzma.LZMAError, zlib.error, EOFError) as exc:
        raise SourceError(f"snapshot {path} is damaged: cannot read {HEADER} ({exc}); re-record it") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SourceError(f"{path} is not a rules-engine snapshot ({HEADER} does not say format {FORMAT!r})")
    if header.get("version") not in READABLE_VERSIONS:
        raise SourceError(f"snapshot {path} is format version {header.get('version')}; this rules-engine reads "
                          f"versions {', '.join(map(str, READABLE_VERSIONS))}; re-record it")
    return header


class _RecordedRaw:
    """A raw-sample reader over a snapshot's recorded samples (the interface of rules_engine.source.raw's)."""

    name = "snapshot"

    def __init__(self, snapshot: "SnapshotSource") -> None:
        self.snapshot = snapshot
        self.has_staleness = all(entry.has_staleness for entry in snapshot._raw_entries.values())

    def read(self, matchers, start_ms: int, end_ms: int) -> RawSamples:
        return self.snapshot.read_raw(tuple(matchers), start_ms, end_ms)


def _raw_bytes(raw: RawSamples) -> bytes:
    """counts (int64), then timestamps as deltas from the previous sample (int64; small, so they compress), then
    values (float64), each shuffled by byte position."""
    deltas = np.diff(raw.timestamps_ms, prepend=np.int64(0)).astype("<i8")
    return b"".join([_shuffled(raw.counts.astype("<i8")), _shuffled(deltas), _shuffled(raw.values.astype("<f8"))])


def _raw_samples(data: bytes, entry: _RawEntry, path: Path) -> RawSamples:
    series, samples = len(entry.metrics), entry.samples
    if len(data) != 8 * (series + 2 * samples):
        raise SourceError(f"snapshot {path} is damaged: raw samples of {selector_text(entry.matchers)} hold "
                          f"{len(data)} bytes, expected {8 * (series + 2 * samples)}; re-record it")
    counts = _unshuffled(data[:8 * series], np.dtype("<i8")).astype(np.int64)
    stamps = np.cumsum(_unshuffled(data[8 * series:8 * (series + samples)], np.dtype("<i8"))).astype(np.int64)
    values = _unshuffled(data[8 * (series + samples):], np.dtype("<f8")).astype(np.float64)
    if counts.sum() != samples:
        raise SourceError(f"snapshot {path} is damaged: raw sample counts of {selector_text(entry.matchers)} do not "
                          f"add up; re-record it")
    return RawSamples(entry.metrics, counts, stamps, values, entry.has_staleness)


def _shuffled(samples: np.ndarray) -> bytes:
    """Bytes regrouped by position within each float (all first bytes, then all second bytes, ...)."""
    width = samples.dtype.itemsize
    return np.ascontiguousarray(samples).view(np.uint8).reshape(-1, width).T.tobytes()


def _unshuffled(raw: bytes, dtype: np.dtype) -> np.ndarray:
    width = dtype.itemsize
    return np.frombuffer(raw, dtype=np.uint8).reshape(width, -1).T.copy().view(dtype).reshape(-1)


def _labels_frame(names: list[str], rows: list[list[str]]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame(index=pd.RangeIndex(0))
    labels = pd.DataFrame(rows, columns=[str(name) for name in names])
    labels.index = pd.RangeIndex(len(rows))
    return labels


def _text(timestamp: pd.Timestamp) -> str:
    """As many fractional digits as the time has: a snapshot's range may start at any nanosecond."""
    return rfc3339(timestamp, "auto")


def _duration(step: pd.Timedelta) -> str:
    """Prometheus-style duration text (30s, 5m, 1h, 1500ms)."""
    ms = int(step / pd.Timedelta(milliseconds=1))
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
