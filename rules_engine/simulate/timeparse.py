"""The simulator's times and durations as unix seconds, parsed by the engine's own parsers.

Durations are Prometheus durations (`30s`, `45m`, `1h30m`, `7d`) or plain seconds; times are RFC 3339 (a time
without a zone is taken as UTC here, since incident files are written by hand) or unix seconds.
"""
from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd

from rules_engine.spec.timerange import parse_time as parse_timestamp
from rules_engine.spec.models import parse_duration as parse_timedelta


def parse_duration(text: str | int | float) -> float:
    """Seconds in a duration such as `45m` or `1h30m`; a bare number (or numeric text) is seconds."""
    if isinstance(text, str) and text.strip().replace(".", "", 1).isdigit():
        return float(text)
    return parse_timedelta(text).total_seconds()


def parse_time(text: str | int | float | datetime) -> float:
    """Unix seconds from RFC 3339 text, a datetime, or unix seconds (number or numeric text)."""
    if isinstance(text, datetime):
        return (text if text.tzinfo else text.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(text, str) and "T" in text and _without_zone(text):
        text = text + "Z"
    return parse_timestamp(text).timestamp()


def _without_zone(text: str) -> bool:
    try:
        return pd.Timestamp(text).tzinfo is None
    except ValueError:
        return False  # not a time at all: the engine's parser says so
