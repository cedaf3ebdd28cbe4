"""The one RFC 3339 formatter: each precision, each kind of moment, and the outputs other tools depend on."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd

from rules_engine.playbooks.payload import canonical_time
from rules_engine.spec.times import rfc3339, rfc3339_parts


def test_precisions_truncate_and_end_in_z():
    stamp = pd.Timestamp("2024-05-01T12:00:00.123456789Z")
    assert rfc3339(stamp) == "2024-05-01T12:00:00Z"  # the export's contract: whole seconds
    assert rfc3339(stamp, "us") == "2024-05-01T12:00:00.123456Z"
    assert rfc3339(stamp, "ns") == "2024-05-01T12:00:00.123456789Z"
    assert rfc3339(stamp.tz_convert("America/Los_Angeles"), "ns") == "2024-05-01T12:00:00.123456789Z"
    assert rfc3339(None) is None


def test_auto_prints_the_digits_the_time_has():
    assert rfc3339(pd.Timestamp("2024-05-01T12:00:00Z"), "auto") == "2024-05-01T12:00:00Z"
    assert rfc3339(pd.Timestamp("2024-05-01T12:00:00.5Z"), "auto") == "2024-05-01T12:00:00.500000Z"
    assert rfc3339(pd.Timestamp("2024-05-01T12:00:00.000000001Z"), "auto") == "2024-05-01T12:00:00.000000001Z"


def test_epoch_seconds_and_datetimes():
    assert rfc3339(1714564800.25, "us") == "2024-05-01T12:00:00.250000Z"
    assert rfc3339(1714564800, "ns") == "2024-05-01T12:00:00.000000000Z"
    local = datetime(2024, 5, 1, 14, 0, 0, 7, tzinfo=timezone(timedelta(hours=2)))
    assert rfc3339(local, "us") == "2024-05-01T12:00:00.000007Z"
    assert rfc3339(datetime(2024, 5, 1, 12), "s") == "2024-05-01T12:00:00Z"  # naive is UTC


def test_alertmanager_times_keep_their_canonical_nanosecond_form():
    assert rfc3339_parts(-62135596800, 0, "ns") == "0001-01-01T00:00:00.000000000Z"  # Alertmanager's zero time
    assert canonical_time("2024-05-01T05:00:00.123456789-07:00") == "2024-05-01T12:00:00.123456789Z"
    assert canonical_time("2024-05-01T12:00:00Z") == "2024-05-01T12:00:00.000000000Z"
