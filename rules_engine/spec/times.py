"""RFC 3339 text for times, in UTC with `Z`, at a precision the caller names.

One formatter for every stage (exports, snapshots, SLO results, the workflow store, Alertmanager timestamps), so a
time reads the same wherever it appears. The precision is part of each output's contract: the export prints whole
seconds, the store microseconds, Alertmanager episode keys nanoseconds. Digits are truncated, never rounded, so a
time is never printed later than it happened (and a second never rolls over into the next one).
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Literal, Union

import pandas as pd

# "auto": as many digits as the time needs -- none, microseconds or nanoseconds (what isoformat() prints).
Precision = Literal["s", "us", "ns", "auto"]
Moment = Union[pd.Timestamp, datetime, float, int]  # naive times are UTC; numbers are unix seconds
_DIGITS = {"s": 0, "us": 6, "ns": 9}


def rfc3339(moment: Moment | None, precision: Precision = "s") -> str | None:
    """`2024-05-01T12:00:00Z` (precision "s"), `...00.123456Z` ("us"), ...; None stays None (an open end)."""
    if moment is None:
        return None
    if isinstance(moment, (int, float)):
        second = math.floor(moment)
        fraction = moment - second  # exact for a float: the digits below are the float's own, truncated
        if precision == "auto":
            nanoseconds = int(fraction * 1e9)
            return rfc3339_parts(int(second), nanoseconds, _auto(nanoseconds))
        digits = _DIGITS[precision]
        return _text(int(second), int(fraction * 10 ** digits), digits)
    if isinstance(moment, pd.Timestamp):
        stamp = moment.tz_localize("UTC") if moment.tzinfo is None else moment
        second, nanoseconds = divmod(int(stamp.value), 10 ** 9)
    else:
        aware = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment
        whole = aware.replace(microsecond=0)
        second, nanoseconds = int(whole.timestamp()), aware.microsecond * 1000
    return rfc3339_parts(second, nanoseconds, _auto(nanoseconds) if precision == "auto" else precision)


def rfc3339_parts(second: int, nanoseconds: int, precision: Precision) -> str:
    """The time `second` (unix seconds) plus `nanoseconds` (0..999999999), for callers that hold a time as those
    two integers, e.g. one parsed from nanosecond text that Python's datetime cannot hold."""
    digits = _DIGITS[precision]
    return _text(second, nanoseconds // 10 ** (9 - digits), digits)


def _auto(nanoseconds: int) -> Precision:
    return "s" if nanoseconds == 0 else "us" if nanoseconds % 1000 == 0 else "ns"


def _text(second: int, fraction: int, digits: int) -> str:
    # isoformat, not strftime: strftime prints year 1 as "1", and Alertmanager's zero time is year 1
    clock = datetime.fromtimestamp(second, timezone.utc).replace(tzinfo=None).isoformat()
    return f"{clock}.{fraction:0{digits}d}Z" if digits else f"{clock}Z"
