"""Raw samples of series selectors: each stored sample once, for the local evaluator (rules_engine.evaluate.local).

Two ways to read them, both through the shared `PrometheusClient` (auth, TLS, tenant header, retries):
- remote read (`POST /api/v1/read`), which Prometheus, Thanos, Mimir and VictoriaMetrics serve, in either
  response type: STREAMED_XOR_CHUNKS (asked for first: the stored chunks streamed in CRC-checked frames, decoded
  in numpy by rules_engine.source.xor while they arrive) or SAMPLES (one snappy block of `ReadResponse` per
  request, decoded whole). Both keep staleness markers, so an instant selector can end a series where Prometheus
  does.
- range-vector instant queries (`selector[Δ]` at t, t+Δ, ...) over the query API where remote read is not
  served. Prometheus drops staleness markers from range vectors: this reader says so (`has_staleness=False`) and
  the evaluator keeps bare instant selectors on the query path then.

The prompb messages (Prometheus' prompb/types.proto and remote.proto, the fields the read path needs) are
declared here with protobuf's descriptor API: no protoc step, one schema in one place.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from itertools import chain
from typing import Callable, Iterable, Iterator, Sequence

import cramjam
import google_crc32c
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from rules_engine.source.base import SourceError
from rules_engine.source.client import PrometheusClient
from rules_engine.source.failures import text_excerpt
from rules_engine.source.prometheus import MatrixChunk, decode_matrix, series_of_chunks
from rules_engine.source.xor import ChunkError, decode_chunks

# Prometheus' staleness marker: a NaN with this bit pattern (pkg/value.StaleNaN).
STALE_NAN_BITS = np.uint64(0x7FF0000000000002)

# Remote read pieces of SAMPLES answers: bounded answers (Prometheus' read sample limit is 5e7 per query by
# default, and the SAMPLES answer is decoded whole in memory).
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
    # STREAMED_XOR_CHUNKS: one ChunkedReadResponse per frame; a series may continue in the next frame.
    chunk = message("Chunk", ("min_time_ms", 1, F.TYPE_INT64, one, None), ("max_time_ms", 2, F.TYPE_INT64, one, None),
                    ("type", 3, F.TYPE_ENUM, one, ".prometheus.Chunk.Encoding"), ("data", 4, F.TYPE_BYTES, one, None))
    encodings = chunk.enum_type.add(name="Encoding")
    for number, name in enumerate(("UNKNOWN", "XOR", "HISTOGRAM", "FLOAT_HISTOGRAM")):
        encodings.value.add(name=name, number=number)
    message("ChunkedSeries", ("labels", 1, F.TYPE_MESSAGE, many, ".prometheus.Label"),
            ("chunks", 2, F.TYPE_MESSAGE, many, ".prometheus.Chunk"))
    message("ChunkedReadResponse", ("chunked_series", 1, F.TYPE_MESSAGE, many, ".prometheus.ChunkedSeries"),
            ("query_index", 2, F.TYPE_INT64, one, None))

    pool = descriptor_pool.DescriptorPool()
    pool.Add(spec)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"prometheus.{name}"))
            for name in ("ReadRequest", "ReadResponse", "PackedReadResponse", "WriteRequest", "ChunkedReadResponse")}


_PROMPB = _prompb_messages()
ReadRequest, ReadResponse, WriteRequest = _PROMPB["ReadRequest"], _PROMPB["ReadResponse"], _PROMPB["WriteRequest"]
PackedReadResponse, ChunkedReadResponse = _PROMPB["PackedReadResponse"], _PROMPB["ChunkedReadResponse"]

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


# Remote read's response types (ReadRequest.ResponseType), asked for in order: the server answers with the first it
# serves. Streamed XOR chunks are what the TSDB stores, sent series by series in frames: Prometheus neither decodes
# them nor holds the whole answer, and its read sample limit does not apply (Prometheus >= 2.13, Thanos, Mimir).
RESPONSE_TYPES = {"SAMPLES": 0, "STREAMED_XOR_CHUNKS": 1}
DEFAULT_RESPONSE_TYPES = ("STREAMED_XOR_CHUNKS", "SAMPLES")
STREAMED_PROTO = "prometheus.ChunkedReadResponse"
MAX_FRAME_BYTES = 50_000_000  # the frame size Prometheus' own remote-read client refuses beyond
DECODE_BATCH_BYTES = 4 << 20  # chunk bytes decoded at once (about half a million samples): bounds temporaries
_XOR_ENCODING = 1
PROBE_METRIC = "rules_engine_remote_read_probe"


class RemoteReader(_PieceReader):
    """Raw samples through remote read, asking for `response_types` in order (default: streamed XOR chunks, then
    SAMPLES) and decoding whichever the server answers with (the answer's Content-Type says which).

    `response_type` is the type the server chose, learnt from its first answer (or, when `name` or `read` needs it
    before then, from an empty read); `name` says it ("remote-read, STREAMED_XOR_CHUNKS"), so reports of how a
    query was answered name it. Streamed chunks are read for the whole range in one request and decoded while
    they arrive; SAMPLES answers are bounded by Prometheus' read sample limit and read in pieces of `piece_ms`.
    `wire_bytes` counts the answer bytes received."""

    has_staleness = True

    def __init__(self, client: PrometheusClient, piece_ms: int = DEFAULT_PIECE_MS,
                 response_types: Sequence[str] = DEFAULT_RESPONSE_TYPES) -> None:
        super().__init__(client, piece_ms)
        unknown = [kind for kind in response_types if kind not in RESPONSE_TYPES]
        if unknown or not response_types:
            raise SourceError(f"remote read response types must be some of {', '.join(RESPONSE_TYPES)}, "
                              f"got {list(response_types)}")
        self.response_types = tuple(response_types)
        self.response_type: str | None = None
        self.wire_bytes = 0
        self._count = threading.Lock()

    @property
    def name(self) -> str:
        return f"remote-read, {self.negotiated()}"

    def negotiated(self) -> str:
        """The response type the server answers with; until an answer said it, an empty read asks."""
        if self.response_type is None:
            self._read_piece([Matcher("__name__", "Equal", PROBE_METRIC)], 0, 1)
        return self.response_type

    def read(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> RawSamples:
        if self.negotiated() != "STREAMED_XOR_CHUNKS":
            return super().read(matchers, start_ms, end_ms)
        piece = self._read_piece(matchers, start_ms, end_ms)  # grouped by series, in time order
        return RawSamples(piece.metrics, piece.counts, piece.timestamps_ms, piece.values, self.has_staleness)

    def _read_piece(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> MatrixChunk:
        request = ReadRequest()
        query = request.queries.add(start_timestamp_ms=start_ms, end_timestamp_ms=end_ms)
        for matcher in matchers:
            query.matchers.add(type=MATCH_TYPES[matcher.op][0], name=matcher.name, value=matcher.value)
        query.hints.start_ms, query.hints.end_ms = start_ms, end_ms
        request.accepted_response_types.extend(RESPONSE_TYPES[kind] for kind in self.response_types)
        what = f"remote read {selector_text(matchers)}"
        error = self.client.unusable_answer(what)
        with self.client.post_streamed("/api/v1/read", bytes(cramjam.snappy.compress_raw(request.SerializeToString())),
                                       {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
                                        "X-Prometheus-Remote-Read-Version": "0.1.0"}, what) as (content_type, blocks):
            media, _, parameters = content_type.partition(";")
            blocks = self._counted(blocks)
            if media.strip() == "application/x-streamed-protobuf":
                if f"proto={STREAMED_PROTO}" not in parameters.replace(" ", ""):
                    raise error(f"a stream of {parameters.strip() or 'unnamed messages'}, not {STREAMED_PROTO}")
                self.response_type = "STREAMED_XOR_CHUNKS"
                return decode_streamed_chunks(blocks, start_ms, end_ms, error)
            if media.strip() in ("application/x-protobuf", ""):
                self.response_type = "SAMPLES"
                return decode_read_response(b"".join(blocks), error)
            raise error(f"Content-Type {content_type!r}, neither a remote-read answer nor a stream of chunks: "
                        f"does the server serve remote read?")

    def _counted(self, blocks: Iterable[bytes]) -> Iterator[bytes]:
        for block in blocks:
            with self._count:
                self.wire_bytes += len(block)
            yield block


def streamed_frames(blocks: Iterable[bytes], error: Callable[[str], SourceError]) -> Iterator[bytes]:
    """The messages of a streamed remote-read answer, each checked as it completes. A frame is the message's size
    as a uvarint, the CRC32-Castagnoli of the message (4 bytes, big-endian), then the message. Prometheus reports
    a failure after the first frame by writing its error text into the stream, so a bad frame quotes what it saw."""
    pending = bytearray()
    number = offset = 0  # frames read, and the answer's byte where `pending` starts

    def broken(reason: str, at: int = 0) -> SourceError:
        return error(f"streamed chunks, frame {number} at byte {offset + at}: {reason} "
                     f"(the bytes there: {text_excerpt(bytes(pending[at:at + 200]), '')})")

    for block in chain(blocks, [None]):
        if block is not None:
            pending += block
        while pending:
            size, header = 0, 0
            for header in range(min(len(pending), 10)):
                size |= (pending[header] & 0x7F) << (7 * header)
                if pending[header] < 0x80:
                    break
            else:
                if len(pending) < 10 and block is not None:
                    break  # the size continues in the next block
                raise broken("the frame size is not a varint" if len(pending) >= 10 else "the answer ends in a frame size")
            header += 1
            if size > MAX_FRAME_BYTES:
                raise broken(f"a frame of {size} bytes, more than the {MAX_FRAME_BYTES} a frame may have")
            if len(pending) < header + 4 + size:
                if block is None:
                    raise broken(f"the answer ends {header + 4 + size - len(pending)} bytes into a frame of {size}")
                break
            message = bytes(pending[header + 4:header + 4 + size])
            expected = int.from_bytes(pending[header:header + 4], "big")
            if google_crc32c.value(message) != expected:
                raise broken(f"CRC32C of the message {google_crc32c.value(message):#010x}, the frame says "
                             f"{expected:#010x}: corrupted in transit")
            yield message
            del pending[:header + 4 + size]
            number, offset = number + 1, offset + header + 4 + size


@dataclass
class _ChunkBatch:
    """XOR chunks waiting to be decoded together, with the series each belongs to."""

    data: list[bytes] = field(default_factory=list)
    series: list[int] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)  # (min, max) time, for error messages
    size: int = 0


def decode_streamed_chunks(blocks: Iterable[bytes], start_ms: int, end_ms: int,
                           error: Callable[[str], SourceError]) -> MatrixChunk:
    """A STREAMED_XOR_CHUNKS answer of one query as flat arrays: its samples in [start_ms, end_ms] (Prometheus cuts
    chunks to the range, a server may not) grouped by series in time order. Frames are parsed as the blocks
    arrive and their XOR chunks decoded in numpy a batch at a time (rules_engine.source.xor), so temporaries stay
    within a batch and the answer is held as its samples once. Chunks of other encodings (native histograms) are
    skipped: the SAMPLES answer carries no float samples for them either."""
    column_of: dict[tuple, int] = {}
    metrics: list[dict[str, str]] = []
    # Per decoded chunk: its series and how many of its samples are in the range; the samples themselves.
    chunk_series: list[np.ndarray] = []
    chunk_counts: list[np.ndarray] = []
    stamp_parts: list[np.ndarray] = []
    value_parts: list[np.ndarray] = []
    batch = _ChunkBatch()

    def flush() -> None:
        if not batch.data:
            return
        lengths = np.fromiter(map(len, batch.data), dtype=np.int64, count=len(batch.data))
        ends = np.cumsum(lengths)
        try:
            counts, stamps, values = decode_chunks(b"".join(batch.data), ends - lengths, ends)
        except ChunkError as bad:
            low, high = batch.spans[bad.chunk]
            raise error(f"series {metrics[batch.series[bad.chunk]]}: XOR chunk {low}..{high} ms does not decode: "
                        f"{bad}") from None
        keep = (stamps >= start_ms) & (stamps <= end_ms)
        if not keep.all():
            counts = np.bincount(np.repeat(np.arange(len(counts)), counts)[keep], minlength=len(counts))
            stamps, values = stamps[keep], values[keep]
        chunk_series.append(np.asarray(batch.series, dtype=np.int64))
        chunk_counts.append(counts)
        stamp_parts.append(stamps)
        value_parts.append(values)
        batch.data, batch.series, batch.spans, batch.size = [], [], [], 0

    for message in streamed_frames(blocks, error):
        try:
            answer = ChunkedReadResponse.FromString(message)
        except DecodeError as exc:
            raise error(f"a streamed frame that is not a ChunkedReadResponse ({exc})") from None
        if answer.query_index != 0:
            raise error(f"chunks for query {answer.query_index}; one query was asked")
        for one in answer.chunked_series:
            labels = {label.name: label.value for label in one.labels}
            column = column_of.setdefault(tuple(sorted(labels.items())), len(metrics))
            if column == len(metrics):
                metrics.append(labels)
            for chunk in one.chunks:
                if chunk.type != _XOR_ENCODING or chunk.max_time_ms < start_ms or chunk.min_time_ms > end_ms:
                    continue
                batch.data.append(chunk.data)
                batch.series.append(column)
                batch.spans.append((chunk.min_time_ms, chunk.max_time_ms))
                batch.size += len(chunk.data)
        if batch.size >= DECODE_BATCH_BYTES:
            flush()
    flush()
    if not stamp_parts:
        empty = np.empty(0, dtype=np.int64)
        return MatrixChunk([], empty, empty, np.empty(0))
    series, counts = np.concatenate(chunk_series), np.concatenate(chunk_counts)
    # One array at a time, each freed once joined: the answer is held about once over.
    stamps = np.concatenate(stamp_parts)
    stamp_parts.clear()
    values = np.concatenate(value_parts)
    value_parts.clear()
    per_series = np.bincount(series, weights=counts, minlength=len(metrics)).astype(np.int64)
    later = stamps[1:] > stamps[:-1]
    starts = np.cumsum(per_series)[:-1]
    later[starts[(starts > 0) & (starts < len(stamps))] - 1] = True  # a new series may start earlier
    if (np.diff(series) < 0).any() or not later.all():
        # Series are streamed one after another and chunks in time order, but the protocol lets chunks overlap:
        # sort and keep one sample per timestamp.
        ids = np.repeat(series, counts)
        order = np.lexsort((stamps, ids))
        ids, stamps, values = ids[order], stamps[order], values[order]
        keep = np.ones(len(ids), dtype=bool)
        keep[1:] = (ids[1:] != ids[:-1]) | (stamps[1:] != stamps[:-1])
        ids, stamps, values = ids[keep], stamps[keep], values[keep]
        per_series = np.bincount(ids, minlength=len(metrics)).astype(np.int64)
    return with_samples(MatrixChunk(metrics, per_series, stamps, values))


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
    return with_samples(MatrixChunk(metrics=metrics, counts=counts, timestamps_ms=decoded[0], values=decoded[1]))


def with_samples(answer: MatrixChunk) -> MatrixChunk:
    """The answer without its series that have no sample in the range. Prometheus' SAMPLES answer lists a series
    whose stored chunk overlaps the range even when none of its samples falls inside; its streamed chunks are cut
    to the range and leave such a series out. Both response types give the same series this way."""
    if answer.counts.all():
        return answer
    kept = np.flatnonzero(answer.counts)
    return MatrixChunk([answer.metrics[i] for i in kept], answer.counts[kept], answer.timestamps_ms, answer.values,
                       answer.warnings)


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


def probe_remote_read(client: PrometheusClient) -> RemoteReader | None:
    """A reader of the server's remote read, its response type already negotiated (an empty read of a selector that
    matches nothing), or None where the server does not answer remote read."""
    reader = RemoteReader(client)
    try:
        reader.negotiated()
    except SourceError:
        return None
    return reader
