"""Time arguments as SREs type them: RFC 3339, unix seconds, `now`, and ranges like `24h`."""
from __future__ import annotations

import pandas as pd

from rules_engine.spec.models import parse_duration


def parse_time(text: str | float | int, now: pd.Timestamp | None = None) -> pd.Timestamp:
    """RFC 3339 (`2026-11-20T00:00:00Z`), unix seconds (`1763596800`), or `now` / `now-1h`; always UTC."""
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    if isinstance(text, (int, float)):
        return pd.Timestamp(float(text), unit="s", tz="UTC")
    raw = text.strip()
    if raw == "now":
        return now
    if raw.startswith("now-"):
        return now - parse_duration(raw[4:])
    try:
        return pd.Timestamp(float(raw), unit="s", tz="UTC")
    except ValueError:
        pass
    try:
        stamp = pd.Timestamp(raw)
    except ValueError:
        raise ValueError(f"invalid time {text!r}: use RFC 3339 (2026-11-20T00:00:00Z), unix seconds, or now-1h") from None
    if stamp.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone: add Z or an offset, as RFC 3339 requires")
    return stamp.tz_convert("UTC")


def resolve_range(start: str | None, end: str | None, time_range: str | None,
                  now: pd.Timestamp | None = None) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The range from --start/--end or --time-range (which ends at --end, or now)."""
    end_at = parse_time(end, now) if end else parse_time("now", now)
    if time_range:
        if start:
            raise ValueError("give --start or --time-range, not both")
        return end_at - parse_duration(time_range), end_at
    if not start:
        raise ValueError("give --start (with --end, default now) or --time-range")
    return parse_time(start, now), end_at
