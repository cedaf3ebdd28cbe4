"""Recorded range-query results: record once from a live source, replay offline (demos, tests, reproducible reports).

A snapshot is one ZIP archive (LZMA-compressed members):

- `snapshot.json`: format name and version, the range (start, end, step), creation time, the source URL without
  credentials, free-form `meta`, and per query its labels and the name of its values member;
- `values/<n>.bin`: that query's samples as a (series × points) little-endian float array, bytes shuffled so
  each byte position of all floats is contiguous (sign/exponent bytes sit together and compress well).

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
from rules_engine.spec.times import rfc3339

FORMAT = "rules-engine-snapshot"
VERSION = 1
HEADER = "snapshot.json"


def record_snapshot(source: Source, queries: Iterable[str], start: pd.Timestamp, end: pd.Timestamp,
                    step: pd.Timedelta, path: str | os.PathLike, meta: Mapping[str, Any] | None = None,
                    single_precision: bool = False) -> Path:
    """Evaluate every query once over start..end at `step` and save all results to one file at `path`.

    `meta` is kept as-is (JSON-serialisable); a `record_command` entry there is what a replay names when asked
    for a query the snapshot lacks. `single_precision` stores float32 (about 7 significant digits), halving the
    file for snapshots committed to git; replay then differs from the live query below that precision.
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
                if not frame.values.index.equals(grid):
                    raise SourceError(f"cannot record snapshot {path}: the source answered query {query} on a "
                                      f"different grid")
                member = f"values/{number}.bin"
                # Each result goes to the archive as it arrives, so memory holds one query's samples at a time.
                archive.writestr(member, _shuffled(frame.values.to_numpy(dtype=np.float64).T.astype(dtype)))
                entries.append({"query": query, "member": member, "series": frame.series_count,
                                "label_names": [str(name) for name in frame.labels.columns],
                                "label_values": frame.labels.astype(str).to_numpy().tolist()})
            header = {
                "format": FORMAT, "version": VERSION,
                "created": _text(pd.Timestamp.now(tz="UTC")),
                "source": getattr(source, "url", None),  # PrometheusSource.url carries no credentials
                "start": _text(start), "end": _text(end), "step": _duration(step),
                "start_ns": int(start.value), "end_ns": int(end.value), "step_ns": int(step.value),
                "points": len(grid), "dtype": dtype.str,
                "meta": dict(meta or {}),
                "queries": entries,
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
                       for item in header["queries"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise SourceError(f"snapshot {self.path} has a malformed header ({type(exc).__name__}: {exc}); "
                              f"re-record it") from None
        if len(evaluation_grid(self.start, self.end, self.step)) != self.points or self.dtype.kind != "f":
            raise SourceError(f"snapshot {self.path} has an inconsistent header (range, points or dtype); re-record it")
        self._entries = {entry.query: entry for entry in entries}
        self._frames: dict[str, RangeFrame] = {}

    @property
    def queries(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __repr__(self) -> str:
        return f"SnapshotSource({str(self.path)!r})"

    def query_range(self, query: str, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> RangeFrame:
        entry = self._entries.get(query)
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
            try:
                with zipfile.ZipFile(self.path) as archive:
                    raw = archive.read(entry.member)
            except (OSError, zipfile.BadZipFile, KeyError, lzma.LZMAError, zlib.error, EOFError) as exc:
                raise SourceError(f"snapshot {self.path} is damaged: cannot read the values of query {entry.query} "
                                  f"({exc}); re-record it") from None
            expected = entry.series * self.points * self.dtype.itemsize
            if len(raw) != expected:
                raise SourceError(f"snapshot {self.path} is damaged: values of query {entry.query} hold {len(raw)} "
                                  f"bytes, expected {expected}; re-record it")
            samples = _unshuffled(raw, self.dtype).reshape(entry.series, self.points).T.astype(np.float64)
            grid = evaluation_grid(self.start, self.end, self.step)
            values = pd.DataFrame(samples, index=grid, columns=pd.RangeIndex(entry.series))
            self._frames[entry.query] = RangeFrame(query=entry.query, values=values, labels=entry.labels)
        return self._frames[entry.query]

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
    if header.get("version") != VERSION:
        raise SourceError(f"snapshot {path} is format version {header.get('version')}; this rules-engine reads "
                          f"version {VERSION}; re-record it")
    return header


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
