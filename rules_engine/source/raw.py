"""Raw samples of series selectors: each stored sample once, for the local evaluator (rules_engine.evaluate.local).

Two ways to read them, both through the shared `PrometheusClient` (auth, TLS, tenant header, retries):
- remote read (`POST /api/v1/read`, protobuf + snappy), which Prometheus, Thanos, Mimir and VictoriaMetrics
  serve. The SAMPLES response type: one snappy block of `ReadResponse` per request. Its samples keep staleness
  markers, so an instant selector can end a series where Prometheus does.
- range-vector instant queries (`selector[Δ]` at t, t+Δ, ...) over the query API where remote read is not
  served. Prometheus drops staleness markers from range vectors: this reader says so (`has_staleness=False`) and
  the evaluator keeps bare instant selectors on the query path then.

The prompb messages (Prometheus' prompb/types.proto and remote.proto, the fields the read path needs) are
declared here with protobuf's descriptor API: no protoc step, one schema in one place.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Callable, Iterable, Sequence

import cramjam
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from rules_engine.source.base import SourceError
from rules_engine.source.client import PrometheusClient
from rules_engine.source.prometheus import MatrixChunk, decode_matrix, series_of_chunks

# Prometheus' staleness marker: a NaN with this bit pattern (pkg/value.StaleNaN).
STALE_NAN_BITS = np.uint64(0x7FF0000000000002)

# Remote read pieces: bounded answers (Prometheus' read sample limit is 5e7 per query by default, and the SAMPLES
# answer is decoded whole in memory).
DEFAULT_PIECE_MS = 2 * 3600 * 1000


def _prompb_messages() -> dict[str, type]:
    F = descriptor_pb2.FieldDescriptorProto
    spec = descriptor_pb2.FileDescriptorProto(name="rules_engine_prompb.proto", package="prometheus", syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str | None]):
        proto = spec.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = proto.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
        return proto

    one, many = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("Sample", ("value", 1, F.TYPE_DOUBLE, one, None), ("timestamp", 2, F.TYPE_INT64, one, None))
    message("Label", ("name", 1, F.TYPE_STRING, one, None), ("value", 2, F.TYPE_STRING, one, None))
    message("TimeSeries", ("labels", 1, F.TYPE_MESSAGE, many, ".prometheus.Label"),
            ("samples", 2, F.TYPE_MESSAGE, many, ".prometheus.Sample"))
    matcher = message("LabelMatcher", ("type", 1, F.TYPE_ENUM, one, ".prometheus.LabelMatcher.Type"),
                      ("name", 2, F.TYPE_STRING, one, None), ("value", 3, F.TYPE_STRING, one, None))
    kinds = matcher.enum_type.add(name="Type")
    for number, name in enumerate(("EQ", "NEQ", "RE", "NRE")):
        kinds.value.add(name=name, number=number)
    message("ReadHints", ("step_ms", 1, F.TYPE_INT64, one, None), ("func", 2, F.TYPE_STRING, one, None),
            ("start_ms", 3, F.TYPE_INT64, one, None), ("end_ms", 4, F.TYPE_INT64, one, None))
    message("Query", ("start_timestamp_ms", 1, F.TYPE_INT64, one, None), ("end_timestamp_ms", 2, F.TYPE_INT64, one, None),
            ("matchers", 3, F.TYPE_MESSAGE, many, ".prometheus.LabelMatcher"),
            ("hints", 4, F.TYPE_MESSAGE, one, ".prometheus.ReadHints"))
    request = message("ReadRequest", ("queries", 1, F.TYPE_MESSAGE, many, ".prometheus.Query"),
                      ("accepted_response_types", 2, F.TYPE_ENUM, many, ".prometheus.ReadRequest.ResponseType"))
    types = request.enum_type.add(name="ResponseType")
    types.value.add(name="SAMPLES", number=0)
    types.value.add(name="STREAMED_XOR_CHUNKS", number=1)
    message("WriteRequest", ("timeseries", 1, F.TYPE_MESSAGE, many, ".prometheus.TimeSeries"))
    message("QueryResult", ("timeseries", 1, F.TYPE_MESSAGE, many, ".prometheus.TimeSeries"))
    message("ReadResponse", ("results", 1, F.TYPE_MESSAGE, many, ".prometheus.QueryResult"))
    # The same answer read with each Sample left as its encoded bytes (the wire format is the same: a
    # length-delimited field), so that samples are decoded by `decode_samples` in numpy rather than one Python
    # message object each (~2.5 µs per sample).
    message("PackedTimeSeries", ("labels", 1, F.TYPE_MESSAGE, many, ".prometheus.Label"),
            ("samples", 2, F.TYPE_BYTES, many, None))
    message("PackedQueryResult", ("timeseries", 1, F.TYPE_MESSAGE, many, ".prometheus.PackedTimeSeries"))
    message("PackedReadResponse", ("results", 1, F.TYPE_MESSAGE, many, ".prometheus.PackedQueryResult"))

    pool = descriptor_pool.DescriptorPool()
    pool.Add(spec)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"prometheus.{name}"))
            for name in ("ReadRequest", "ReadResponse", "PackedReadResponse", "WriteRequest")}


_PROMPB = _prompb_messages()
ReadRequest, ReadResponse, WriteRequest = _PROMPB["ReadRequest"], _PROMPB["ReadResponse"], _PROMPB["WriteRequest"]
PackedReadResponse = _PROMPB["PackedReadResponse"]

# promql_parser's MatchOp names -> (remote read's matcher type, PromQL's operator text)
MATCH_TYPES = {"Equal": (0, "="), "NotEqual": (1, "!="), "Re": (2, "=~"), "NotRe": (3, "!~")}


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str  # one of MATCH_TYPES
    value: str


def selector_text(matchers: Sequence[Matcher]) -> str:
    """The matchers as a PromQL series selector: `{__name__="x", a!=""}` (values escaped as PromQL strings)."""
    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return "{" + ", ".join(f"{m.name}{MATCH_TYPES[m.op][1]}{quoted(m.value)}" for m in matchers) + "}"


@dataclass(frozen=True)
class RawSamples:
    """Every stored sample of the series one selector matched in [start_ms, end_ms]: series i owns counts[i]
    consecutive samples, in time order. Staleness markers are kept (see `stale`) when `has_staleness`."""

    metrics: list[dict[str, str]]
    counts: np.ndarray  # int64
    timestamps_ms: np.ndarray  # int64
    values: np.ndarray  # float64
    has_staleness: bool

    @property
    def stale(self) -> np.ndarray:
        return self.values.view(np.uint64) == STALE_NAN_BITS

    @property
    def nbytes(self) -> int:
        return self.counts.nbytes + self.timestamps_ms.nbytes + self.values.nbytes


def join_pieces(pieces: Iterable[MatrixChunk], has_staleness: bool) -> RawSamples:
    """Consecutive time pieces of one selector joined per label set (a series may be missing from some pieces)."""
    pieces = list(pieces)
    metrics, ids = series_of_chunks(pieces)
    timestamps, values = [piece.timestamps_ms for piece in pieces], [piece.values for piece in pieces]
    if not metrics:
        empty = np.empty(0, dtype=np.int64)
        return RawSamples([], empty, empty, np.empty(0), has_staleness)
    series = np.concatenate(ids).astype(np.int32)
    # Pieces come in time order and each is in time order per series: a stable sort by series keeps time order.
    order = np.argsort(series, kind="stable")
    series, stamps, samples = series[order], np.concatenate(timestamps)[order], np.concatenate(values)[order]
    del order
    keep = np.ones(len(series), dtype=bool)  # a sample on a piece boundary may come twice
    keep[1:] = (series[1:] != series[:-1]) | (stamps[1:] != stamps[:-1])
    series, stamps, samples = series[keep], stamps[keep], samples[keep]
    return RawSamples(metrics, np.bincount(series, minlength=len(metrics)).astype(np.int64), stamps, samples,
                      has_staleness)


def _pieces(start_ms: int, end_ms: int, piece_ms: int) -> list[tuple[int, int]]:
    """[start, end] cut into consecutive closed intervals that share no millisecond."""
    bounds = list(range(start_ms, end_ms + 1, piece_ms)) + [end_ms + 1]
    return [(low, high - 1) for low, high in zip(bounds[:-1], bounds[1:]) if high > low]


class _PieceReader:
    """Raw samples of a selector read in consecutive time pieces of `piece_ms` (bounded answers) and joined."""

    has_staleness: bool
    name: str

    def __init__(self, client: PrometheusClient, piece_ms: int = DEFAULT_PIECE_MS) -> None:
        self.client = client
        self.piece_ms = piece_ms

    def read(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> RawSamples:
        return join_pieces((self._read_piece(matchers, low, high) for low, high in _pieces(start_ms, end_ms, self.piece_ms)),
                           self.has_staleness)

    def _read_piece(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> MatrixChunk:
        raise NotImplementedError


class RemoteReader(_PieceReader):
    """Raw samples through remote read (SAMPLES response type)."""

    has_staleness = True
    name = "remote-read"

    def _read_piece(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> MatrixChunk:
        request = ReadRequest()
        query = request.queries.add(start_timestamp_ms=start_ms, end_timestamp_ms=end_ms)
        for matcher in matchers:
            query.matchers.add(type=MATCH_TYPES[matcher.op][0], name=matcher.name, value=matcher.value)
        query.hints.start_ms, query.hints.end_ms = start_ms, end_ms
        request.accepted_response_types.append(0)  # SAMPLES
        what = f"remote read {selector_text(matchers)}"
        body = self.client.post_bytes("/api/v1/read", bytes(cramjam.snappy.compress_raw(request.SerializeToString())),
                                      {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
                                       "X-Prometheus-Remote-Read-Version": "0.1.0"}, what)
        return decode_read_response(body, self.client.unusable_answer(what))


def decode_read_response(body: bytes, error: Callable[[str], SourceError]) -> MatrixChunk:
    """A snappy-compressed SAMPLES ReadResponse of one query as flat arrays. Samples are decoded in numpy from
    their encoded bytes; an encoding `decode_samples` does not recognise takes protobuf's own message path."""
    try:
        raw = bytes(cramjam.snappy.decompress_raw(body))
        answer = PackedReadResponse.FromString(raw)
    except (DecodeError, cramjam.DecompressionError, ValueError) as exc:
        raise error(f"not a snappy-compressed ReadResponse ({exc}): does the server serve remote read?") from None
    if len(answer.results) != 1:
        raise error(f"expected 1 query result, got {len(answer.results)}")
    series = answer.results[0].timeseries
    counts = np.fromiter((len(one.samples) for one in series), dtype=np.int64, count=len(series))
    metrics = [{label.name: label.value for label in one.labels} for one in series]
    encoded = list(chain.from_iterable(one.samples for one in series))
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    decoded = decode_samples(b"".join(encoded), lengths)
    del encoded
    if decoded is None:
        full = ReadResponse.FromString(raw).results[0].timeseries
        total = int(counts.sum())
        decoded = (np.fromiter((s.timestamp for one in full for s in one.samples), dtype=np.int64, count=total),
                   np.fromiter((s.value for one in full for s in one.samples), dtype=np.float64, count=total))
    return MatrixChunk(metrics=metrics, counts=counts, timestamps_ms=decoded[0], values=decoded[1])


_VALUE_TAG, _TIMESTAMP_TAG = 0x09, 0x10  # Sample: field 1 double (wire type 1), field 2 int64 varint (wire type 0)


def decode_samples(payload: bytes, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Timestamps and values of consecutive encoded `Sample` messages of the given lengths, vectorized.

    The layout every Prometheus-compatible server writes: an optional value field (absent when 0.0, as proto3
    leaves defaults out) then an optional timestamp varint. Anything else (fields repeated or reordered, unknown
    fields) returns None, and the caller decodes with protobuf instead: each record must be consumed exactly.
    """
    count = len(lengths)
    if count == 0:
        return np.empty(0, dtype=np.int64), np.empty(0)
    data = np.frombuffer(payload + bytes(20), dtype=np.uint8)  # padding: gathers past a record stay in bounds
    starts = np.zeros(count, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    ends = starts + lengths
    has_value = (lengths > 0) & (data[starts] == _VALUE_TAG)
    values = np.zeros(count)
    at = starts[has_value] + 1
    if len(at):
        # Gather the 8 bytes of each double column by column: no (samples x 8) index matrix.
        octets = np.empty((len(at), 8), dtype=np.uint8)
        for k in range(8):
            octets[:, k] = data[at + k]
        values[has_value] = octets.view("<f8")[:, 0]
        del octets
    position = starts + 9 * has_value
    has_time = (position < ends) & (data[position] == _TIMESTAMP_TAG)
    timestamps = np.zeros(count, dtype=np.uint64)
    consumed = position.copy()
    at = position[has_time] + 1
    if len(at):
        # A varint: 7 bits a byte, low first, the high bit set on all but its last byte (at most 10 bytes).
        total = np.zeros(len(at), dtype=np.uint64)
        size = np.zeros(len(at), dtype=np.int64)
        open_ = np.ones(len(at), dtype=bool)
        for j in range(10):
            byte = data[at + j]
            total |= np.where(open_, (byte & 0x7F).astype(np.uint64) << np.uint64(7 * j), np.uint64(0))
            size += open_
            open_ &= byte >= 0x80
            if not open_.any():
                break
        if open_.any():
            return None
        timestamps[has_time] = total
        consumed[has_time] = at + size
    if not np.array_equal(consumed, ends):
        return None
    return timestamps.view(np.int64), values


class RangeVectorReader(_PieceReader):
    """Raw samples through instant queries of `selector[Δ]` over the query API, one piece per query. Prometheus
    leaves staleness markers out of range vectors, so these samples carry none."""

    has_staleness = False
    name = "range-vector"

    def _read_piece(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> MatrixChunk:
        # A range [t - Δ, t] closed at both ends (Prometheus 2.x; 3.x opens it on the left): Δ = end - start.
        selector = f"{selector_text(matchers)}[{max(end_ms - start_ms, 1)}ms]"
        form = {"query": selector, "time": f"{end_ms // 1000}.{end_ms % 1000:03d}", "timeout": f"{self.client.timeout:g}s"}
        what = f"query {selector}"
        chunk = decode_matrix(self.client.post("/api/v1/query", form, what), self.client.unusable_answer(what))
        keep = chunk.timestamps_ms >= start_ms  # a server whose range is left-closed still gives each sample once
        if keep.all():
            return chunk
        series = np.repeat(np.arange(len(chunk.counts)), chunk.counts)[keep]
        return MatrixChunk(chunk.metrics, np.bincount(series, minlength=len(chunk.counts)).astype(np.int64),
                           chunk.timestamps_ms[keep], chunk.values[keep], chunk.warnings)


def probe_remote_read(client: PrometheusClient) -> bool:
    """Whether the server answers remote read: an empty read of a selector that matches nothing."""
    try:
        RemoteReader(client).read([Matcher("__name__", "Equal", "rules_engine_remote_read_probe")], 0, 1)
    except SourceError:
        return False
    return True
