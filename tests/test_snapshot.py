"""Snapshots: record from a real Prometheus, replay offline, and refuse missing queries and damaged files clearly."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rules_engine.source import PrometheusSource, RangeFrame, SourceError, evaluation_grid
from rules_engine.source.snapshot import SnapshotSource, record_snapshot
from tests.test_source_prometheus import (HISTORY_END, HISTORY_START, METRIC,  # noqa: F401 (fixtures)
                                          history, history_blocks, history_prometheus)

STEP = pd.Timedelta(minutes=1)
QUERIES = [
    METRIC,
    f"sum by (job) (rate({METRIC}[5m]))",
    f"{METRIC} > 15",  # sparse: only the points above the threshold come back
    "no_such_metric_total",  # no series at all
]


@pytest.fixture(scope="module")
def recorded(history_prometheus, tmp_path_factory) -> Path:
    # Credentials in the URL must not end up in the file.
    url = history_prometheus.url.replace("http://", "http://someone:secret@")
    path = tmp_path_factory.mktemp("snapshot") / "fleet.snapshot"
    with PrometheusSource(url) as source:
        record_snapshot(source, QUERIES + [METRIC], HISTORY_START, HISTORY_END, STEP, path, meta={"note": "test"})
    return path


def assert_same_frame(replayed: RangeFrame, live: RangeFrame) -> None:
    assert replayed.query == live.query
    pd.testing.assert_frame_equal(replayed.values, live.values)
    pd.testing.assert_frame_equal(replayed.labels, live.labels)


@pytest.mark.integration
def test_replay_gives_the_recorded_frames(recorded, history_prometheus):
    snapshot = SnapshotSource(recorded)
    assert snapshot.queries == tuple(QUERIES)  # each query recorded once
    assert (snapshot.start, snapshot.end, snapshot.step) == (HISTORY_START, HISTORY_END, STEP)
    assert snapshot.source_url == history_prometheus.url
    assert snapshot.meta == {"note": "test"}
    assert "secret" not in zipfile.ZipFile(recorded).read("snapshot.json").decode()
    live = PrometheusSource(history_prometheus.url)
    for query in QUERIES:
        replayed = snapshot.query_range(query, HISTORY_START, HISTORY_END, STEP)
        assert replayed.values.index.equals(evaluation_grid(HISTORY_START, HISTORY_END, STEP))
        assert_same_frame(replayed, live.query_range(query, HISTORY_START, HISTORY_END, STEP))
    assert snapshot.query_range(METRIC, HISTORY_START, HISTORY_END, STEP).series_count == 3
    assert snapshot.query_range("no_such_metric_total", HISTORY_START, HISTORY_END, STEP).series_count == 0


@pytest.mark.integration
@pytest.mark.parametrize("minutes", [(60, 180), (20 * 60 + 10, 20 * 60 + 50), (47 * 60, 48 * 60)])
def test_a_sub_range_replays_like_the_live_query_over_it(recorded, history_prometheus, minutes):
    # 20h10m .. 20h50m lies inside instance c's hole: live Prometheus leaves c out, and so must the replay.
    start, end = (HISTORY_START + pd.Timedelta(minutes=m) for m in minutes)
    snapshot = SnapshotSource(recorded)
    live = PrometheusSource(history_prometheus.url)
    for query in QUERIES:
        assert_same_frame(snapshot.query_range(query, start, end, STEP), live.query_range(query, start, end, STEP))


@pytest.mark.integration
def test_a_query_not_recorded_names_the_file_and_how_to_re_record(recorded):
    with pytest.raises(SourceError) as error:
        SnapshotSource(recorded).query_range("up", HISTORY_START, HISTORY_END, STEP)
    message = str(error.value)
    assert message.startswith(f"query not in snapshot {recorded}: up\n")
    assert "holds 4 queries" in message
    assert f"rules-engine record --rules RULES --prometheus URL --start 2026-10-01T00:00:00Z" in message
    assert f"--step 1m --out {recorded}" in message


@pytest.mark.integration
def test_the_recorder_can_name_its_own_re_record_command(history_prometheus, tmp_path):
    path = tmp_path / "s.snapshot"
    record_snapshot(PrometheusSource(history_prometheus.url), [METRIC], HISTORY_START,
                    HISTORY_START + pd.Timedelta(hours=1), STEP, path,
                    meta={"record_command": "rules-engine record --rules rules/vllm.yaml --out s.snapshot"})
    with pytest.raises(SourceError, match="rules-engine record --rules rules/vllm.yaml --out s.snapshot"):
        SnapshotSource(path).query_range("up", HISTORY_START, HISTORY_START + pd.Timedelta(hours=1), STEP)


@pytest.mark.integration
def test_a_failed_recording_leaves_no_file(history_prometheus, tmp_path):
    path = tmp_path / "s.snapshot"
    with pytest.raises(SourceError, match="bad_data"):
        record_snapshot(PrometheusSource(history_prometheus.url), [METRIC, f"rate({METRIC}[5m]"], HISTORY_START,
                        HISTORY_START + pd.Timedelta(hours=1), STEP, path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
@pytest.mark.parametrize("start, end, step, expected", [
    (HISTORY_START, HISTORY_END, pd.Timedelta(seconds=30), "recorded at step 1m, not 30s"),
    (HISTORY_START - STEP, HISTORY_END, STEP, "is not on that grid"),
    (HISTORY_START, HISTORY_END + STEP, STEP, "is not on that grid"),
    (HISTORY_START + pd.Timedelta(seconds=10), HISTORY_END, STEP, "is not on that grid"),
])
def test_range_or_step_mismatch_is_said(recorded, start, end, step, expected):
    with pytest.raises(SourceError) as error:
        SnapshotSource(recorded).query_range(METRIC, start, end, step)
    assert expected in str(error.value) and str(recorded) in str(error.value)


def _damaged(recorded: Path, tmp_path: Path, change) -> Path:
    path = tmp_path / "damaged.snapshot"
    path.write_bytes(change(recorded.read_bytes()))
    return path


@pytest.mark.integration
def test_a_truncated_file_is_not_a_snapshot(recorded, tmp_path):
    path = _damaged(recorded, tmp_path, lambda content: content[: len(content) // 2])
    with pytest.raises(SourceError, match=f"{path} is not a rules-engine snapshot: not a ZIP archive"):
        SnapshotSource(path)


@pytest.mark.integration
def test_flipped_bytes_in_the_values_are_caught(recorded, tmp_path):
    with zipfile.ZipFile(recorded) as archive:
        member = archive.getinfo("values/0.bin")
    # Past the member's local header (30 bytes + name), inside its compressed data.
    offset = member.header_offset + 30 + len(member.filename) + member.compress_size // 2

    def flip(content: bytes) -> bytes:
        return content[:offset] + bytes(b ^ 0xFF for b in content[offset:offset + 16]) + content[offset + 16:]

    snapshot = SnapshotSource(_damaged(recorded, tmp_path, flip))
    with pytest.raises(SourceError, match=f"snapshot {snapshot.path} is damaged: cannot read the values of query {METRIC}"):
        snapshot.query_range(METRIC, HISTORY_START, HISTORY_END, STEP)


def test_other_files_are_refused_by_name(tmp_path):
    json_file = tmp_path / "results.json"
    json_file.write_text('{"status": "success"}')
    with pytest.raises(SourceError, match=f"{json_file} is not a rules-engine snapshot: not a ZIP archive"):
        SnapshotSource(json_file)

    other_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(SourceError, match=f"{other_zip} is a ZIP archive but not a rules-engine snapshot"):
        SnapshotSource(other_zip)

    newer = tmp_path / "newer.snapshot"
    with zipfile.ZipFile(newer, "w") as archive:
        archive.writestr("snapshot.json", json.dumps({"format": "rules-engine-snapshot", "version": 3}))
    with pytest.raises(SourceError, match=f"snapshot {newer} is format version 3; this rules-engine reads versions 1, 2"):
        SnapshotSource(newer)

    with pytest.raises(SourceError, match=f"snapshot file {tmp_path / 'absent'} does not exist"):
        SnapshotSource(tmp_path / "absent")


# -- size: a fleet-sized recording must stay small enough to commit ------------------------------------------

class GeneratedFleet:
    """A Source computing noisy per-instance signals with numpy: the format's size and fidelity need no server."""

    def __init__(self, instances: int, seed: int = 3) -> None:
        self.instances = instances
        self.seed = seed

    def query_range(self, query: str, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> RangeFrame:
        grid = evaluation_grid(start, end, step)
        rng = np.random.default_rng([self.seed, len(query)])
        phase = np.arange(len(grid))[:, None] / 480 + rng.random(self.instances)
        daily = 1 + 0.4 * np.sin(phase)
        if "queue" in query:  # small integer gauges
            values = np.round(daily * 4 + rng.poisson(1.5, daily.shape))
        else:  # full-precision ratios, like rate(x_sum) / rate(x_count)
            values = daily * 0.25 * rng.lognormal(0, 0.1, daily.shape)
        values[rng.random(daily.shape) < 0.01] = np.nan
        labels = pd.DataFrame({"instance": [f"10.0.0.{i}:8000" for i in range(self.instances)],
                               "job": "vllm"})
        return RangeFrame(query=query, values=pd.DataFrame(values, index=grid, columns=pd.RangeIndex(self.instances)),
                          labels=labels)


def test_eight_instances_over_two_days_stay_a_few_megabytes(tmp_path):
    queries = [f"signal_{i}" for i in range(12)] + [f"queue_{i}" for i in range(4)]
    start, end, step = HISTORY_START, HISTORY_START + pd.Timedelta(days=2), pd.Timedelta(seconds=30)
    fleet = GeneratedFleet(instances=8)
    exact = record_snapshot(fleet, queries, start, end, step, tmp_path / "exact.snapshot")
    small = record_snapshot(fleet, queries, start, end, step, tmp_path / "small.snapshot", single_precision=True)
    raw_bytes = len(queries) * 8 * len(evaluation_grid(start, end, step)) * 8
    assert exact.stat().st_size < 0.75 * raw_bytes and exact.stat().st_size < 5e6
    assert small.stat().st_size < 0.45 * raw_bytes and small.stat().st_size < 2.5e6

    replay_exact, replay_small = SnapshotSource(exact), SnapshotSource(small)
    for query in queries:
        live = fleet.query_range(query, start, end, step)
        pd.testing.assert_frame_equal(replay_exact.query_range(query, start, end, step).values, live.values)
        pd.testing.assert_frame_equal(replay_exact.query_range(query, start, end, step).labels, live.labels)
        pd.testing.assert_frame_equal(replay_small.query_range(query, start, end, step).values,
                                      live.values.astype(np.float32).astype(np.float64))
