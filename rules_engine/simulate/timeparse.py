"""Durations (`30s`, `45m`, `2h`, `1d`, `1h30m`, Prometheus style) and times (RFC 3339 or unix seconds)."""
from __future__ import annotations

import re
from datetime import datetime, timezone

_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y))+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def parse_duration(text: str | int | float) -> float:
    """Seconds in a duration such as `45m` or `1h30m`; a bare number is seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    value = str(text).strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    if not _DURATION.match(value):
        raise ValueError(f"invalid duration {text!r} (expected e.g. 30s, 45m, 2h, 1d, 1h30m)")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(value))


def parse_time(text: str | int | float | datetime) -> float:
    """Unix seconds from RFC 3339 text, a datetime, or unix seconds (number or numeric text)."""
    if isinstance(text, datetime):
        moment = text if text.tzinfo else text.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    value = str(text).strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"invalid time {text!r} (expected RFC 3339 such as 2024-05-01T12:00:00Z "
                         f"or unix seconds)") from None
    return parse_time(moment)


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat().replace("+00:00", "Z")
