"""Vectorized OpenMetrics text with timestamps, for `promtool tsdb create-blocks-from openmetrics`.

A series is written as all its samples in time order: one constant byte prefix (`name{labels} `) plus a value
and a timestamp per line. Lines are assembled as a uint8 matrix (rows = samples) and written with one call per
run of rows whose value has the same number of digits, so no Python code runs per sample. Counters and bucket
counts grow monotonically, so a series has only a handful of such runs; gauges that jitter get more, still
each vectorized.

Timestamps are whole seconds with 10 digits (2001-09-09 .. 2286-11-20), which keeps the timestamp columns a
fixed-width block shared by every series of an instance.
"""
from __future__ import annotations

from typing import BinaryIO, Mapping

import numpy as np

_POWERS_OF_TEN = 10 ** np.arange(19, dtype=np.int64)
_SPACE, _NEWLINE, _DOT, _ZERO = 32, 10, 46, 48
TIMESTAMP_DIGITS = 10


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def series_prefix(name: str, labels: Mapping[str, str]) -> bytes:
    """`name{a="x",b="y"} ` with label values escaped as the exposition formats require."""
    if not labels:
        return f"{name} ".encode()
    body = ",".join(f'{key}="{_label_value(str(value))}"' for key, value in labels.items())
    return f"{name}{{{body}}} ".encode()


def family_header(family: str, metric_type: str, help_text: str = "") -> bytes:
    """`# TYPE` (and `# HELP`) for a metric family; counters are named without their `_total` suffix."""
    header = f"# HELP {family} {help_text}\n" if help_text else ""
    return (header + f"# TYPE {family} {metric_type}\n").encode()


def digit_count(values: np.ndarray) -> np.ndarray:
    """Decimal digits of non-negative int64 values (0 has one digit)."""
    return np.maximum(1, np.searchsorted(_POWERS_OF_TEN, values, side="right"))


def digit_matrix(values: np.ndarray, width: int) -> np.ndarray:
    """ASCII digits of non-negative int64 values, right-aligned and zero-padded to `width` columns."""
    out = np.empty((values.shape[0], width), np.uint8)
    rest = values.copy()
    for column in range(width - 1, -1, -1):
        np.remainder(rest, 10, out=out[:, column], casting="unsafe")
        rest //= 10
    out += _ZERO
    return out


def timestamp_chars(seconds: np.ndarray) -> np.ndarray:
    """The fixed-width timestamp column block for sample times given in whole unix seconds."""
    seconds = np.asarray(seconds, dtype=np.int64)
    if seconds.size and (seconds.min() < 10 ** (TIMESTAMP_DIGITS - 1) or seconds.max() >= 10 ** TIMESTAMP_DIGITS):
        raise ValueError("sample timestamps must lie between 2001-09-09 and 2286-11-20 (10-digit unix seconds)")
    return digit_matrix(seconds, TIMESTAMP_DIGITS)


def write_series(out: BinaryIO, prefix: bytes, values: np.ndarray, timestamps: np.ndarray,
                 decimals: int = 0) -> int:
    """Write one series' samples (`values[i]` at `timestamps[i]`, a `timestamp_chars` block) as text lines.

    Values must be finite and >= 0; they are written with `decimals` digits after the point (0: integers).
    Returns the number of bytes written.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return 0
    if not np.isfinite(values).all() or values.min() < 0:
        raise ValueError(f"{prefix.decode().strip()}: values must be finite and non-negative")
    scaled = np.rint(values * 10.0 ** decimals).astype(np.int64)
    # At least decimals+1 digits so fractions get their leading "0.".
    widths = np.maximum(digit_count(scaled), decimals + 1)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(widths)) + 1))
    ends = np.append(starts[1:], len(scaled))
    pre = np.frombuffer(prefix, np.uint8)
    p = len(pre)
    written = 0
    for start, end in zip(starts.tolist(), ends.tolist()):
        width = int(widths[start])
        field = width + (1 if decimals else 0)
        line = np.empty((end - start, p + field + 2 + TIMESTAMP_DIGITS), np.uint8)
        line[:, :p] = pre
        digits = digit_matrix(scaled[start:end], width)
        if decimals:
            whole = width - decimals
            line[:, p:p + whole] = digits[:, :whole]
            line[:, p + whole] = _DOT
            line[:, p + whole + 1:p + field] = digits[:, whole:]
        else:
            line[:, p:p + field] = digits
        line[:, p + field] = _SPACE
        line[:, p + field + 1:-1] = timestamps[start:end]
        line[:, -1] = _NEWLINE
        out.write(line.data)
        written += line.size
    return written
