"""Prometheus' XOR (Gorilla) chunks decoded in numpy, all chunks of an answer at once.

Remote read's STREAMED_XOR_CHUNKS answer carries series as the TSDB stores them: chunks of up to a few hundred
samples, each a bit stream (Prometheus' tsdb/chunkenc/xor.go and bstream.go):

    2 bytes   sample count, big-endian
    sample 0  timestamp as a signed varint, value as its 64 raw bits
    sample 1  timestamp delta as an unsigned varint, value XOR-coded against sample 0
    sample k  delta of the timestamp delta: `0` (no change), `10`+14 bits, `110`+17 bits, `1110`+20 bits (two's
              complement in that width) or `1111`+64 bits; then the value XOR-coded against the previous one:
              `0` same bits; `10` + the XOR's meaningful bits, keeping the previous leading/trailing zero counts;
              `11` + 5 bits of leading zeros + 6 bits of meaningful-bit count (0 means 64) + those bits.

The decoder walks sample positions (0, 1, 2, ... up to the longest chunk), and every step works on every chunk
that still has a sample at that position: one bit cursor per chunk, fields read at those cursors by gathering
two 64-bit words of one buffer. Chunks are ordered longest first, so the chunks still decoding at a position are
a prefix of the arrays (views, no masks). Values are kept as their raw bits: staleness markers (a NaN with one
bit pattern) and NaN payloads come out exactly as stored.
"""
from __future__ import annotations

import numpy as np

_U = np.uint64
# Timestamp delta-of-delta prefix, indexed by the 4 bits at the cursor: prefix length, value width, and for the
# narrow widths the value above which the field is negative (two's complement in `width` bits) and 2**width.
_ONES = np.array([min(4, 4 - len(f"{t:04b}".lstrip("1"))) for t in range(16)])  # leading one bits, at most 4
_PREFIX_BITS = np.minimum(_ONES + 1, 4).astype(_U)
_WIDTH = np.array([0, 14, 17, 20, 64])[_ONES].astype(_U)
_HALF = np.array([0, 1 << 13, 1 << 16, 1 << 19, 0], dtype=_U)[_ONES]
_FULL = np.array([0, 1 << 14, 1 << 17, 1 << 20, 0], dtype=_U)[_ONES]
PAD_BYTES = 64  # readable past the last chunk: a malformed chunk is caught within one sample (<= 145 bits) of its end


class ChunkError(ValueError):
    """A chunk whose bits do not decode: `chunk` is its index in the batch."""

    def __init__(self, chunk: int, reason: str) -> None:
        super().__init__(reason)
        self.chunk = chunk


def words_of(data: bytes | np.ndarray) -> np.ndarray:
    """The bytes as big-endian 64-bit words in native order, zero-padded by PAD_BYTES and to a whole word."""
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    padded = np.zeros((len(raw) + PAD_BYTES + 7) // 8 * 8, dtype=np.uint8)
    padded[:len(raw)] = raw
    return padded.view(">u8").astype(_U)


def peek(words: np.ndarray, cursors: np.ndarray) -> np.ndarray:
    """The 64 bits starting at each bit cursor (int64), first bit the highest."""
    index = cursors >> 6
    offset = (cursors & 63).astype(_U)
    # The low part is shifted in two steps: one shift by 64 (offset 0) is undefined, >> 1 >> 63 is 0.
    return (words[index] << offset) | ((words[index + 1] >> _U(1)) >> (_U(63) - offset))


def top_bits(window: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The first `widths` bits (0..64, uint64) of each 64-bit window, as unsigned integers."""
    narrow = (window >> _U(1)) >> (_U(63) - np.minimum(widths, _U(63)))
    return np.where(widths == _U(64), window, narrow)


def read_bits(words: np.ndarray, cursors: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """`widths` bits (0..64) at each cursor, as unsigned integers."""
    return top_bits(peek(words, cursors), widths)


def read_varints(words: np.ndarray, cursors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unsigned LEB128 varints (7 bits a byte, low group first; at most 10 bytes) at the cursors: (values, bits
    read). A varint still open after 10 bytes is returned with 80 bits read and caught by the caller's bounds."""
    total = np.zeros(len(cursors), dtype=_U)
    used = np.zeros(len(cursors), dtype=np.int64)
    open_ = np.ones(len(cursors), dtype=bool)
    for k in range(10):
        byte = peek(words, cursors + 8 * k) >> _U(56)
        total |= np.where(open_, (byte & _U(0x7F)) << _U(7 * k), _U(0))
        used += 8 * open_
        open_ &= byte >= _U(0x80)
        if not open_.any():
            break
    return total, used


def decode_chunks(data: bytes, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """XOR chunks data[starts[i]:ends[i]] decoded: (samples per chunk, timestamps in ms, values as float64), the
    samples of chunk i after those of chunk i-1. Raises ChunkError for a chunk that is too short for its sample
    count, or too long for it."""
    starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    too_short = np.flatnonzero(ends - starts < 2)
    if len(too_short):
        raise ChunkError(int(too_short[0]), f"{ends[too_short[0]] - starts[too_short[0]]} bytes: no sample count")
    raw = np.frombuffer(data, dtype=np.uint8)
    counts = (raw[starts].astype(np.int64) << 8) | raw[starts + 1]
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    timestamps = np.empty(offsets[-1], dtype=np.int64)
    bits = np.empty(offsets[-1], dtype=_U)
    if offsets[-1] == 0:
        return counts, timestamps, bits.view(np.float64)
    words = words_of(raw)

    # Longest chunk first: the chunks with a sample at position j are the first `active[j]` of these arrays.
    order = np.argsort(-counts, kind="stable")
    sorted_counts, out = counts[order], offsets[:-1][order]
    limit = ends[order] * 8
    active = np.searchsorted(-sorted_counts, -np.arange(sorted_counts[0]), side="left")
    n = with_samples = int(active[0])
    cursor = (starts[order][:n] + 2) * 8
    time = np.zeros(n, dtype=np.int64)
    delta = np.zeros(n, dtype=np.int64)
    value = np.zeros(n, dtype=_U)
    leading = np.zeros(n, dtype=_U)
    trailing = np.zeros(n, dtype=_U)

    final = np.empty(len(counts), dtype=np.int64)  # where each chunk's last sample ends (bits)
    positions = active.tolist()
    for j, n in enumerate(positions):
        cursor, time, delta, value, leading, trailing = (
            cursor[:n], time[:n], delta[:n], value[:n], leading[:n], trailing[:n])
        if j == 0:
            zigzag, used = read_varints(words, cursor)
            time[:] = ((zigzag >> _U(1)) ^ (_U(0) - (zigzag & _U(1)))).view(np.int64)
            cursor += used
            value[:] = peek(words, cursor)
            cursor += 64
        else:
            if j == 1:
                first_delta, used = read_varints(words, cursor)
                delta[:] = first_delta.view(np.int64)
                cursor += used
                window = None
            else:
                window = peek(words, cursor)
                top4 = (window >> _U(60)).astype(np.intp)
                prefix, width = _PREFIX_BITS[top4], _WIDTH[top4]
                field = top_bits(window << prefix, width)
                field = np.where(field > _HALF[top4], field - _FULL[top4], field)  # negative narrow fields
                used = prefix + width
                window <<= np.minimum(used, _U(63))  # a narrow field leaves the value's control bits in view
                wide = np.flatnonzero(width == _U(64))
                if len(wide):  # 4 + 64 bits: not within one window
                    field[wide] = peek(words, cursor[wide] + 4)
                    window[wide] = peek(words, cursor[wide] + 68)
                delta += field.view(np.int64)
                cursor += used.view(np.int64)
            time += delta
            invalid = _read_values(words, cursor, value, leading, trailing, window)
            if invalid.any():
                bad = int(order[np.flatnonzero(invalid)[0]])
                raise ChunkError(bad, f"sample {j} has more than 64 leading zeros and meaningful bits")
        if (cursor > limit[:n]).any():
            bad = int(order[np.flatnonzero(cursor > limit[:n])[0]])
            raise ChunkError(bad, f"its {counts[bad]} samples run past its {ends[bad] - starts[bad]} bytes")
        timestamps[out[:n] + j] = time
        bits[out[:n] + j] = value
        ending = positions[j + 1] if j + 1 < len(positions) else 0  # the chunks whose last sample this was
        final[ending:n] = cursor[ending:n]
    # The samples end in the chunk's last or last but one byte: Prometheus' bit stream writes a byte at a byte
    # boundary by appending two (the second empty). More unread bytes mean a wrong sample count.
    final[with_samples:] = (starts[order][with_samples:] + 2) * 8  # chunks without samples
    unread = ends[order] * 8 - final
    short = np.flatnonzero(unread >= 16)
    if len(short):
        bad = int(order[short[0]])
        raise ChunkError(bad, f"its {counts[bad]} samples end at byte {(final[short[0]] + 7) // 8 - starts[bad]} "
                              f"of its {ends[bad] - starts[bad]}")
    return counts, timestamps, bits.view(np.float64)


def _read_values(words: np.ndarray, cursor: np.ndarray, value: np.ndarray, leading: np.ndarray,
                 trailing: np.ndarray, window: np.ndarray | None = None) -> np.ndarray:
    """One XOR-coded value per cursor, applied to `value` in place; cursors, leading and trailing updated.
    `window`: the 64 bits at the cursors when the caller has them. Returns where the zero counts are impossible
    (leading + meaningful > 64)."""
    if window is None:
        window = peek(words, cursor)
    changed = window >> _U(63)
    fresh = changed & (window >> _U(62))  # control bits 11: new zero counts follow
    new_leading = (window >> _U(57)) & _U(31)
    new_meaningful = (window >> _U(51)) & _U(63)
    new_meaningful[new_meaningful == _U(0)] = _U(64)  # 6 bits cannot say 64; 0 meaningful bits never occurs
    invalid = (fresh == _U(1)) & (new_leading + new_meaningful > _U(64))
    take = (fresh == _U(1)) & ~invalid
    np.copyto(leading, new_leading, where=take)
    np.copyto(trailing, _U(64) - new_leading - new_meaningful, where=take)
    meaningful = changed * (_U(64) - leading - trailing)
    cursor += (_U(1) + changed + _U(11) * fresh).view(np.int64)  # control bits, and 5 + 6 bits when fresh
    value ^= read_bits(words, cursor, meaningful) << np.minimum(trailing, _U(63))
    cursor += meaningful.view(np.int64)
    return invalid
