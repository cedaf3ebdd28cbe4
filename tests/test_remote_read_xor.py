"""Remote read's STREAMED_XOR_CHUNKS path (rules_engine.source.raw, rules_engine.source.xor) judged against the
SAMPLES path of the same real Prometheus, and the bit reader and frame parser on their edge cases.

History: a day backfilled with promtool (chunks of persisted blocks) with counter resets, scrape jitter, gaps,
missed scrapes, a series that appears and one that vanishes, timestamp delta-of-deltas on each side of every
width boundary of the encoding, and values that are integers, floats, NaN, ±Inf, ±0 and 1e±300 in turn; then
an hour written through the remote-write receiver (chunks of the head) carrying staleness markers, which only
a scraping Prometheus (or remote write) stores. Every selector and range must give the same samples, bit for
bit, through both response types, and the samples written.
"""
from __future__ import annotations

import random
from pathlib import Path

import cramjam
import google_crc32c
import numpy as np
import pytest
import requests

from rules_engine.source.base import SourceError
from rules_engine.source.client import PrometheusClient
from rules_engine.source.raw import (STALE_NAN_BITS, ChunkedReadResponse, Matcher, RawSamples, ReadRequest,
                                     RemoteReader, decode_streamed_chunks, probe_remote_read, streamed_frames)
from rules_engine.source.xor import ChunkError, decode_chunks, peek, read_bits, read_varints, top_bits, words_of
from tests import processes
from tests.conftest import require_binary
from tests.test_local_eval import remote_write

T0 = 1_794_787_200_000  # 2026-11-16T00:00:00Z, ms
DAY = 24 * 3600_000
HEAD_END = T0 + DAY + 3600_000
NEGATIVE_ZERO = np.uint64(1 << 63)
STALE = float(np.array([STALE_NAN_BITS], dtype=np.uint64).view(np.float64)[0])
ODD_VALUES = [0.0, -0.0, 1.0, 3.0, 1e300, -1e-300, float("nan"), float("inf"), float("-inf"), 0.1, 2.0 ** 53,
              -7.25, 5e-324, 1.7976931348623157e308]
# Delta-of-deltas on each side of the 14/17/20-bit ranges (-(2^(n-1)-1) .. 2^(n-1)) and beyond (64 bits).
DODS = [0, 1, -1, 8191, 8192, 8193, -8191, -8192, -8193, 65535, 65536, 65537, -65535, -65536, -65537,
        524287, 524288, 524289, -524287, -524288, -524289, 3_600_000, -3_600_000, 0, 0, 17, -17]


def _scrapes(rng: np.random.Generator, start: int, end: int, interval: int = 30_000, outage: int = 150) -> np.ndarray:
    grid = np.arange(start, end, interval)
    times = grid + rng.integers(-2500, 2500, size=len(grid))  # jitter, in ms
    missed = rng.random(len(times)) < 0.03
    gap = int(rng.integers(0, len(times) - outage))
    missed[gap:gap + outage] = True  # scrapes missed in a row (150: 75 minutes)
    return np.unique(times[~missed])


def backfilled_series() -> list[tuple[dict[str, str], np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(11)
    series = []
    for instance in range(3):
        labels = {"instance": f"vllm-{instance}:8000", "job": "vllm"}
        times = _scrapes(rng, T0, T0 + DAY)
        counter = np.cumsum(rng.poisson(40, size=len(times))).astype(float)
        for at in rng.integers(1, len(times), size=instance + 1):
            counter[at:] -= counter[at - 1] - rng.integers(0, 5)  # a restart: counting from ~0 again
        series.append(({"__name__": "x_requests_total", **labels}, times, counter))
        gauge = np.round(rng.gamma(2.0, 0.3, size=len(times)), 6)
        odd = rng.random(len(times)) < 0.05
        gauge[odd] = rng.choice(ODD_VALUES, size=int(odd.sum()))
        series.append(({"__name__": "x_latency_seconds", **labels}, times, gauge))
    # One that appears in the afternoon, one that vanishes at noon.
    late = _scrapes(rng, T0 + 15 * 3600_000, T0 + DAY)
    series.append(({"__name__": "x_requests_total", "instance": "vllm-late:8000", "job": "vllm"}, late,
                   np.cumsum(rng.poisson(5, size=len(late))).astype(float)))
    early = _scrapes(rng, T0, T0 + 12 * 3600_000)
    series.append(({"__name__": "x_requests_total", "instance": "vllm-early:8000", "job": "vllm"}, early,
                   np.cumsum(rng.poisson(5, size=len(early))).astype(float)))
    deltas = 1_200_000 + np.cumsum(DODS)  # 20 minutes apart and more: 11.5 hours
    assert (deltas > 0).all()
    times = T0 + 60_000 + np.concatenate([[0], np.cumsum(deltas)])
    values = np.array((ODD_VALUES * 10)[:len(times)])
    series.append(({"__name__": "x_odd", "job": "vllm"}, times, values))
    return series


def head_series() -> list[tuple[dict[str, str], np.ndarray, np.ndarray]]:
    """After the backfilled day, into the head: staleness markers inside and at the end of series."""
    rng = np.random.default_rng(5)
    series = []
    for instance in range(2):
        times = _scrapes(rng, T0 + DAY + 60_000, HEAD_END, outage=10)
        values = np.round(rng.gamma(2.0, 4.0, size=len(times)), 2)
        cut = len(times) // 3 + 7 * instance
        times = np.concatenate([times[:cut], [times[cut - 1] + 1000], times[cut + 20:]])
        values = np.concatenate([values[:cut], [STALE], values[cut + 20:]])
        if instance == 1:  # the target went away: the last sample is the marker
            times, values = np.append(times, times[-1] + 15_000), np.append(values, STALE)
        series.append(({"__name__": "x_queue", "instance": f"vllm-{instance}:8000", "job": "vllm"}, times, values))
    return series


def _openmetrics(series, path: Path) -> None:
    families: dict[str, list] = {}
    for labels, times, values in series:
        families.setdefault(labels["__name__"], []).append((labels, times, values))
    with open(path, "w") as out:
        for name, members in families.items():
            out.write(f"# TYPE {name} gauge\n")
            for labels, times, values in members:
                text = ",".join(f'{k}="{v}"' for k, v in labels.items() if k != "__name__")
                for stamp, value in zip(times.tolist(), values.tolist()):
                    number = ("NaN" if value != value else "+Inf" if value == float("inf")
                              else "-Inf" if value == float("-inf") else repr(value))
                    out.write(f"{name}{{{text}}} {number} {stamp // 1000}.{stamp % 1000:03d}\n")
        out.write("# EOF\n")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    require_binary(processes.PROMETHEUS)
    require_binary(processes.PROMTOOL)
    root = tmp_path_factory.mktemp("xor")
    _openmetrics(backfilled_series(), root / "history.om")
    processes.backfill(root / "history.om", root / "data")
    with processes.running_prometheus(root / "data", extra_args=["--web.enable-remote-write-receiver"],
                                      retention="100y") as running:
        remote_write(running.url, head_series())
        yield running


def _by_labels(raw: RawSamples) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    offsets = np.concatenate([[0], np.cumsum(raw.counts)])
    return {tuple(sorted(metric.items())): (raw.timestamps_ms[offsets[i]:offsets[i + 1]],
                                            raw.values[offsets[i]:offsets[i + 1]].view(np.uint64))
            for i, metric in enumerate(raw.metrics)}


SELECTORS = [
    [Matcher("__name__", "Equal", "x_requests_total")],
    [Matcher("__name__", "Equal", "x_latency_seconds"), Matcher("instance", "NotEqual", "vllm-1:8000")],
    [Matcher("__name__", "Equal", "x_odd")],
    [Matcher("__name__", "Equal", "x_queue")],
    [Matcher("__name__", "Re", "x_.*"), Matcher("job", "Equal", "vllm")],
    [Matcher("__name__", "Equal", "x_nothing")],
]
RANGES = [
    (T0 - 3600_000, HEAD_END + 3600_000),  # everything
    (T0 + 37 * 60_000 + 123, T0 + 5 * 3600_000 + 17),  # cutting through chunks
    (T0 + 12 * 3600_000 + 1, T0 + 15 * 3600_000 - 1),  # between the early series' end and the late one's start
    (T0 + DAY + 20 * 60_000, HEAD_END),  # the head, staleness markers
    (T0 + 600_000, T0 + 600_000),  # one millisecond
]


@pytest.mark.integration
def test_streamed_chunks_equal_samples_bit_for_bit(prometheus):
    with PrometheusClient(prometheus.url) as client:
        streamed, samples = RemoteReader(client), RemoteReader(client, response_types=("SAMPLES",))
        assert (streamed.name, samples.name) == ("remote-read, STREAMED_XOR_CHUNKS", "remote-read, SAMPLES")
        negative_zeros = 0
        for matchers in SELECTORS:
            for low, high in RANGES:
                got, want = _by_labels(streamed.read(matchers, low, high)), _by_labels(samples.read(matchers, low, high))
                assert got.keys() == want.keys(), (matchers, low, high)
                for key in want:
                    np.testing.assert_array_equal(got[key][0], want[key][0], err_msg=str((key, low, high)))
                    # The one difference: the SAMPLES answer loses the sign of -0.0 (proto3 leaves a value that
                    # equals 0 out), the chunks keep the stored bits (as the sample comparison below shows).
                    signed_zero = (got[key][1] == NEGATIVE_ZERO) & (want[key][1] == 0)
                    negative_zeros += int(signed_zero.sum())
                    np.testing.assert_array_equal(np.where(signed_zero, 0, got[key][1]), want[key][1],
                                                  err_msg=str((key, low, high)))
        assert negative_zeros > 0
        assert streamed.wire_bytes < samples.wire_bytes


@pytest.mark.integration
def test_streamed_chunks_give_the_samples_written(prometheus):
    with PrometheusClient(prometheus.url) as client:
        read = _by_labels(RemoteReader(client).read([Matcher("job", "Equal", "vllm")], T0 - 3600_000, HEAD_END + 1))
    written = backfilled_series() + head_series()
    assert len(read) == len(written)
    stale = 0
    for labels, times, values in written:
        stamps, bits = read[tuple(sorted(labels.items()))]
        np.testing.assert_array_equal(stamps, times, err_msg=str(labels))
        got = bits.view(np.float64)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(values), err_msg=str(labels))
        np.testing.assert_array_equal(got[~np.isnan(got)].view(np.uint64), values[~np.isnan(values)].view(np.uint64))
        marked = values.view(np.uint64) == STALE_NAN_BITS
        np.testing.assert_array_equal(bits == STALE_NAN_BITS, marked, err_msg=str(labels))
        stale += int(marked.sum())
    assert stale == 3
    # -0.0 keeps its sign, as in Prometheus' own evaluation (1 / -0 is -Inf there): the SAMPLES answer loses it.
    labels, times, values = written[1]
    at = times[np.flatnonzero((values == 0) & np.signbit(values))[0]]
    selector = "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    assert prometheus.query(f"1 / {selector}", time=at / 1000)[0]["value"][1] == "-Inf"


def _stream(url: str, matchers, low: int, high: int) -> requests.Response:
    """The raw STREAMED_XOR_CHUNKS answer of Prometheus, bytes as they came."""
    request = ReadRequest()
    query = request.queries.add(start_timestamp_ms=low, end_timestamp_ms=high)
    for matcher in matchers:
        query.matchers.add(type={"Equal": 0, "Re": 2}[matcher.op], name=matcher.name, value=matcher.value)
    request.accepted_response_types.append(1)
    answer = requests.post(f"{url}/api/v1/read", data=cramjam.snappy.compress_raw(request.SerializeToString()),
                           headers={"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}, timeout=60)
    answer.raise_for_status()
    return answer


def _frame(message: bytes) -> bytes:
    size, header = len(message), bytearray()
    while size >= 0x80:
        header.append(size & 0x7F | 0x80)
        size >>= 7
    header.append(size)
    return bytes(header) + google_crc32c.value(message).to_bytes(4, "big") + message


def _error(reason: str) -> SourceError:
    return SourceError(reason)


@pytest.mark.integration
def test_frames_split_anywhere_and_damage_named(prometheus):
    matchers = [Matcher("__name__", "Re", "x_.*")]
    body = _stream(prometheus.url, matchers, T0, HEAD_END).content
    whole = decode_streamed_chunks([body], T0, HEAD_END, _error)
    assert whole.counts.sum() > 10_000
    cuts = sorted(random.Random(3).sample(range(1, len(body)), 40)) + [1, 2, 3]
    pieces = [body[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(body)])]
    split = decode_streamed_chunks(pieces, T0, HEAD_END, _error)
    np.testing.assert_array_equal(split.timestamps_ms, whole.timestamps_ms)
    np.testing.assert_array_equal(split.values.view(np.uint64), whole.values.view(np.uint64))

    damaged = bytearray(body)
    damaged[len(body) // 2] ^= 0x10
    with pytest.raises(SourceError, match=r"frame \d+ at byte \d+: CRC32C of the message 0x[0-9a-f]{8}, the frame "
                                          r"says 0x[0-9a-f]{8}: corrupted in transit"):
        decode_streamed_chunks([bytes(damaged)], T0, HEAD_END, _error)
    with pytest.raises(SourceError, match=r"the answer ends \d+ bytes into a frame of \d+"):
        decode_streamed_chunks([body[:-5]], T0, HEAD_END, _error)
    # Prometheus reports a failure after the first frame by writing its error text into the stream.
    with pytest.raises(SourceError, match="the bytes there: text: 'expanding series: query timed out"):
        list(streamed_frames([body, b"expanding series: query timed out\n"], _error))
    with pytest.raises(SourceError, match="a frame of 1000000000000 bytes, more than the 50000000"):
        list(streamed_frames([bytes([0x80, 0xA0, 0x94, 0xA5, 0x8D, 0x1D])], _error))  # 10**12
    with pytest.raises(SourceError, match="the frame size is not a varint"):
        list(streamed_frames([b"\xff" * 12], _error))


@pytest.mark.integration
def test_a_chunk_that_does_not_decode_names_its_series(prometheus):
    matchers = [Matcher("__name__", "Equal", "x_odd")]
    body = _stream(prometheus.url, matchers, T0, HEAD_END).content
    message = next(streamed_frames([body], _error))
    for change, reason in [(lambda data: data[:-3], r"its \d+ samples run past its \d+ bytes"),
                           (lambda data: data + b"\0\0", r"its \d+ samples end at byte \d+ of its \d+"),
                           (lambda data: data[:1], "1 bytes: no sample count")]:
        answer = ChunkedReadResponse.FromString(message)
        chunk = answer.chunked_series[0].chunks[0]
        chunk.data = change(chunk.data)
        with pytest.raises(SourceError, match=r"series \{'__name__': 'x_odd', 'job': 'vllm'\}: XOR chunk \d+\.\.\d+ "
                                              rf"ms does not decode: {reason}"):
            decode_streamed_chunks([_frame(answer.SerializeToString())], T0, HEAD_END, _error)


@pytest.mark.integration
def test_overlapping_and_unordered_chunks_give_each_sample_once(prometheus):
    """The protocol lets a series' chunks overlap (Thanos, Mimir: replicas): each timestamp is kept once."""
    matchers = [Matcher("__name__", "Re", "x_(odd|latency_seconds)")]
    body = _stream(prometheus.url, matchers, T0, HEAD_END).content
    want = decode_streamed_chunks([body], T0, HEAD_END, _error)
    frames = []
    for message in streamed_frames([body], _error):
        answer = ChunkedReadResponse.FromString(message)
        for series in answer.chunked_series:
            chunks = list(series.chunks)
            del series.chunks[:]
            series.chunks.extend(chunks[::-1] + chunks[len(chunks) // 2:])  # backwards, then half of them again
        frames.append(_frame(answer.SerializeToString()))
    got = decode_streamed_chunks(frames, T0, HEAD_END, _error)
    assert got.metrics == want.metrics
    np.testing.assert_array_equal(got.counts, want.counts)
    np.testing.assert_array_equal(got.timestamps_ms, want.timestamps_ms)
    np.testing.assert_array_equal(got.values.view(np.uint64), want.values.view(np.uint64))
    # Chunks reaching past the range asked (a server that does not cut them as Prometheus does) are cut here.
    low, high = T0 + 5 * 3600_000 + 17, T0 + 7 * 3600_000
    cut = decode_streamed_chunks(frames, low, high, _error)
    with PrometheusClient(prometheus.url) as client:
        asked = RemoteReader(client).read(matchers, low, high)
    assert cut.metrics == asked.metrics
    np.testing.assert_array_equal(cut.timestamps_ms, asked.timestamps_ms)
    np.testing.assert_array_equal(cut.values.view(np.uint64), asked.values.view(np.uint64))


@pytest.mark.integration
def test_decoder_on_real_chunks_keeps_staleness_markers(prometheus):
    """The chunks of the head (written with staleness markers) decoded straight from Prometheus' bytes."""
    body = _stream(prometheus.url, [Matcher("__name__", "Equal", "x_queue")], T0 + DAY, HEAD_END).content
    chunks = [(chunk.data, series) for message in streamed_frames([body], _error)
              for series in ChunkedReadResponse.FromString(message).chunked_series for chunk in series.chunks]
    data = b"".join(chunk for chunk, _ in chunks)
    ends = np.cumsum([len(chunk) for chunk, _ in chunks])
    counts, stamps, values = decode_chunks(data, ends - [len(chunk) for chunk, _ in chunks], ends)
    assert counts.sum() == sum(len(times) for _, times, _ in head_series())
    expected = np.concatenate([values for _, _, values in head_series()])
    np.testing.assert_array_equal(values.view(np.uint64), expected.view(np.uint64))
    assert (values.view(np.uint64) == STALE_NAN_BITS).sum() == 3


class _Replay:
    """An HTTP server that answers every remote read with a fixed Content-Type and body (`promised` bytes said in
    Content-Length, then the connection closed: a body cut off in transit)."""

    def __init__(self, content_type: str, body: bytes, promised: int | None = None) -> None:
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(promised or len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.handler = Handler


@pytest.mark.integration
def test_answers_of_other_kinds_are_named(prometheus):
    body = _stream(prometheus.url, [Matcher("__name__", "Equal", "x_odd")], T0, HEAD_END).content
    cases = [("text/html", b"<html><title>Sign in</title></html>", "Content-Type 'text/html', neither"),
             ("application/x-streamed-protobuf; proto=prometheus.Other", body, "a stream of proto=prometheus.Other"),
             ("application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse", body[:-1],
              "the answer ends 1 bytes into a frame")]
    streamed = "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"
    broke = r"the answer of Prometheus at .* to remote read .* broke off part-way: IncompleteRead"
    cases.append((streamed, body[:len(body) // 2], broke))
    for content_type, answer, message in cases:
        promised = len(body) if message == broke else None
        with processes.serving(_Replay(content_type, answer, promised).handler) as url, \
                PrometheusClient(url, retries=0) as client:
            with pytest.raises(SourceError, match=message):
                RemoteReader(client).read([Matcher("__name__", "Equal", "x_odd")], T0, HEAD_END)
            assert not probe_remote_read(client)
    # A server that serves only SAMPLES (as before Prometheus 2.13): the same reader falls back to it.
    low, high = T0 + 3600_000, T0 + 2 * 3600_000 - 1  # one piece
    with PrometheusClient(prometheus.url) as client:
        samples = RemoteReader(client, response_types=("SAMPLES",)).read([Matcher("job", "Equal", "vllm")], low, high)
    answer = bytes(cramjam.snappy.compress_raw(_samples_body(prometheus.url, low, high)))
    with processes.serving(_Replay("application/x-protobuf", answer).handler) as url, PrometheusClient(url) as client:
        reader = RemoteReader(client)
        assert reader.name == "remote-read, SAMPLES"
        assert reader.read([Matcher("job", "Equal", "vllm")], low, high).counts.sum() == samples.counts.sum() > 0


def _samples_body(url: str, low: int, high: int) -> bytes:
    request = ReadRequest()
    query = request.queries.add(start_timestamp_ms=low, end_timestamp_ms=high)
    query.matchers.add(type=0, name="job", value="vllm")
    answer = requests.post(f"{url}/api/v1/read", data=cramjam.snappy.compress_raw(request.SerializeToString()),
                           headers={"Content-Encoding": "snappy"}, timeout=60)
    return bytes(cramjam.snappy.decompress_raw(answer.content))


def test_unknown_response_type_is_refused():
    with pytest.raises(SourceError, match="response types must be some of SAMPLES, STREAMED_XOR_CHUNKS, got"):
        RemoteReader(PrometheusClient("http://127.0.0.1:1"), response_types=("CHUNKS",))


# -- the bit reader -----------------------------------------------------------------------------------------------

def _bits(data: bytes) -> str:
    return "".join(f"{byte:08b}" for byte in data)


def test_peek_and_read_bits_at_every_offset_and_width():
    data = bytes(np.random.default_rng(1).integers(0, 256, size=40, dtype=np.uint8)) + b"\xff" * 9 + b"\0" * 9
    words, text = words_of(data), _bits(data)
    cursors = np.arange(len(text) - 64, dtype=np.int64)  # crossing every word boundary at every offset
    windows = peek(words, cursors)
    assert windows.tolist() == [int(text[c:c + 64], 2) for c in cursors.tolist()]
    for width in (0, 1, 2, 5, 6, 13, 14, 17, 20, 31, 32, 33, 63, 64):
        got = read_bits(words, cursors, np.full(len(cursors), width, dtype=np.uint64))
        assert got.tolist() == [int(text[c:c + width] or "0", 2) for c in cursors.tolist()], width
    # Mixed widths in one call; the last bits of the buffer; past it reads zeros (padding).
    widths = np.array([0, 64, 1, 63, 7], dtype=np.uint64)
    at = np.array([0, 3, len(text) - 1, len(text) - 63, len(text) - 2], dtype=np.int64)
    assert read_bits(words, at, widths).tolist() == [0, int(text[3:67], 2), int(text[-1]), int(text[-63:], 2),
                                                     int(text[-2:] + "00000", 2)]
    assert top_bits(np.array([2 ** 64 - 1], dtype=np.uint64), np.array([64], dtype=np.uint64)).tolist() == [2 ** 64 - 1]


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def test_varints_at_unaligned_cursors():
    values = [0, 1, 127, 128, 300, 2 ** 35 + 7, 2 ** 63, 2 ** 64 - 1]
    for shift in (0, 3, 7):
        text = "1" * shift + "".join(_bits(_uvarint(v)) for v in values)
        text += "0" * (-len(text) % 8)
        data = int(text, 2).to_bytes(len(text) // 8, "big")
        lengths = [8 * len(_uvarint(v)) for v in values]
        cursors = shift + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        got, used = read_varints(words_of(data), cursors.astype(np.int64))
        assert got.tolist() == values
        assert used.tolist() == lengths
    # Eleven continuation bytes: not a varint; reported as 80 bits, past which the caller's bounds stop it.
    assert read_varints(words_of(b"\xff" * 11), np.zeros(1, dtype=np.int64))[1].tolist() == [80]


def test_decode_chunks_bounds():
    counts, stamps, values = decode_chunks(b"\0\0", np.array([0]), np.array([2]))
    assert counts.tolist() == [0] and len(stamps) == len(values) == 0
    with pytest.raises(ChunkError, match="its 1 samples run past its 2 bytes") as caught:
        decode_chunks(b"\0\0\0\x01", np.array([0, 2]), np.array([2, 4]))
    assert caught.value.chunk == 1
