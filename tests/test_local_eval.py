"""The local evaluator (rules_engine.evaluate.local) judged by a real Prometheus: every function computed locally
must give what Prometheus' query_range gives on the same grid, to float precision.

History is written into a fresh Prometheus through its remote-write receiver, so it holds what backfilled
OpenMetrics cannot: staleness markers. The series have counter resets, scrape jitter and gaps, series that
appear and vanish (with and without a staleness marker), NaN samples, odd histogram buckets (the same bound
spelt twice, non-monotonic counts, a histogram without +Inf, a bucket that comes and goes) and a metric renamed
half-way (old/new names joined with `or`). Seeds vary the series; the expressions are the shapes the shipped
packs and the compiler write.
"""
from __future__ import annotations

from pathlib import Path

import cramjam
import numpy as np
import pandas as pd
import pytest
import requests

from rules_engine.evaluate.local import LocalSource, Unsupported, check
from rules_engine.source.prometheus import PrometheusSource
from rules_engine.source.raw import STALE_NAN_BITS, WriteRequest, probe_remote_read
from tests import processes
from tests.conftest import require_binary

pytestmark = pytest.mark.integration

T0 = int(pd.Timestamp("2026-11-19T00:00:00Z").value // 1_000_000)
HOURS = 3
STALE = float(np.array([STALE_NAN_BITS], dtype=np.uint64).view(np.float64)[0])


def _scrapes(rng, start_ms: int, end_ms: int, interval_ms: int = 15_000) -> np.ndarray:
    """Scrape times with jitter and a few gaps of missed scrapes."""
    grid = np.arange(start_ms, end_ms, interval_ms)
    times = grid + rng.integers(-2000, 2000, size=len(grid))
    missed = rng.random(len(times)) < 0.04
    gap = rng.integers(0, len(times))
    missed[gap:gap + 30] = True  # a 7.5-minute outage: longer than the lookback
    return np.unique(times[~missed])


def _counter(rng, times: np.ndarray, resets: int) -> np.ndarray:
    increments = rng.gamma(2.0, 3.0, size=len(times)) * (rng.random(len(times)) > 0.1)
    values = np.cumsum(increments) + rng.integers(0, 1000)
    for at in rng.integers(1, len(times), size=resets):
        values[at:] -= values[at - 1] - rng.random() * 3  # the process restarted: counting from ~0 again
    return np.round(values, 3)


def history_series(seed: int) -> list[tuple[dict[str, str], np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    end = T0 + HOURS * 3600_000
    series = []
    for instance in range(4):
        base = {"instance": f"vllm-{instance}:8000", "model_name": "m" if instance < 3 else "n", "job": "vllm"}
        times = _scrapes(rng, T0, end)
        for code in ("200", "500"):
            labels = {"__name__": "t_requests_total", **base, "code": code}
            series.append((labels, times, _counter(rng, times, resets=instance)))
        # A gauge with NaNs that goes stale for a while and comes back.
        gauge = np.round(rng.gamma(2.0, 4.0, size=len(times)), 2)
        gauge[rng.random(len(times)) < 0.01] = np.nan
        stop = len(times) // 2 + instance * 40
        gauge_times = np.concatenate([times[:stop], [times[stop - 1] + 1000], times[stop + 60:]])
        gauge_values = np.concatenate([gauge[:stop], [STALE], gauge[stop + 60:]])
        series.append(({"__name__": "t_queue", **base}, gauge_times, gauge_values))
        # Renamed half-way: the old name until the middle, the new one after, overlapping a few minutes.
        middle = len(times) // 2
        cache = np.round(rng.random(len(times)), 4)
        series.append(({"__name__": "t_cache_old", **base}, times[:middle + 10], cache[:middle + 10]))
        series.append(({"__name__": "t_cache_new", **base}, times[middle:], cache[middle:] * 0.9))
        # Histograms: bounds spelt twice, an +Inf-less one, a bucket that vanishes, non-monotonic buckets.
        bounds = ["0.1", "0.25", "0.5", "1", "2.5", "+Inf"]
        if instance == 1:
            bounds = ["0.1", "0.25", "0.50", "0.5", "1.0", "2.5", "+Inf"]
        if instance == 3:
            bounds = bounds[:-1]
        observations = rng.gamma(1.5, 0.3, size=(len(times), 1))
        counts = np.cumsum(rng.poisson(3, size=(len(times), 1)) * (observations <= 1e9), axis=0).astype(float)
        for k, bound in enumerate(bounds):
            share = min(1.0, (k + 1) / (len(bounds) - 0.5))
            values = np.floor(counts[:, 0] * share)
            if instance == 2 and bound == "0.5":
                values = values * 1.02  # a bucket counting more than the next one: forced monotonic
            bucket_times = times
            if instance == 0 and bound == "0.25":
                keep = (np.arange(len(times)) % 200) < 150  # a bucket missing for minutes at a time
                bucket_times, values = times[keep], values[keep]
            labels = {"__name__": "t_latency_seconds_bucket", **base, "le": bound}
            series.append((labels, bucket_times, values))
        series.append(({"__name__": "t_latency_seconds_count", **base}, times, np.floor(counts[:, 0])))
        series.append(({"__name__": "t_latency_seconds_sum", **base}, times, np.round(counts[:, 0] * 0.4, 3)))
    # A series that appears late and vanishes early without a staleness marker (a short-lived pod).
    times = _scrapes(rng, T0 + 3600_000, T0 + 7200_000)
    labels = {"__name__": "t_requests_total", "instance": "vllm-9:8000", "model_name": "m", "job": "vllm",
              "code": "200"}
    series.append((labels, times, _counter(rng, times, resets=1)))
    return series


def remote_write(url: str, series) -> None:
    request = WriteRequest()
    for labels, times, values in series:
        one = request.timeseries.add()
        for name in sorted(labels):
            one.labels.add(name=name, value=labels[name])
        for stamp, value in zip(times.tolist(), values.tolist()):
            one.samples.add(timestamp=int(stamp), value=value)
    body = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
    answer = requests.post(f"{url}/api/v1/write", data=body, timeout=60,
                           headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
                                    "X-Prometheus-Remote-Write-Version": "0.1.0"})
    assert answer.status_code == 204, answer.text


@pytest.fixture(scope="module", params=[3, 17])
def prometheus(request):
    require_binary(processes.PROMETHEUS)
    with processes.running_prometheus(extra_args=["--web.enable-remote-write-receiver"]) as running:
        remote_write(running.url, history_series(request.param))
        yield running


SEL = '{job="vllm"}'
QUERIES = [
    # selectors, lookback and staleness
    f't_queue{SEL}',
    't_queue{instance=~"vllm-[12].*"} offset 2m',
    # range functions: extrapolation, counter resets, gaps, short-lived series
    f'rate(t_requests_total{SEL}[5m])',
    f'increase(t_requests_total{SEL}[15m])',
    f'delta(t_queue{SEL}[5m])',
    f'irate(t_requests_total{SEL}[2m])',
    f'rate(t_requests_total{{code!="200"}}[1m] offset 5m)',
    # *_over_time over ranges and subqueries
    f'avg_over_time(t_queue{SEL}[5m])',
    f'max_over_time(t_queue{SEL}[3m])',
    f'min_over_time(t_queue{SEL}[10m])',
    f'sum_over_time(t_queue{SEL}[5m])',
    f'count_over_time(t_queue{SEL}[5m])',
    f'last_over_time(t_queue{SEL}[2m])',
    f'avg_over_time((sum by (instance, model_name)(rate(t_requests_total{SEL}[5m])))[10m:30s])',
    f'max_over_time(sum by (instance)(t_queue{SEL})[15m:1m])',
    # aggregations
    f'sum by (instance, model_name)(rate(t_requests_total{SEL}[5m]))',
    f'sum(rate(t_requests_total{SEL}[5m]))',
    f'max by (model_name)(t_queue{SEL})',
    f'min without (instance)(t_queue{SEL})',
    f'avg by (model_name)(t_queue{SEL})',
    f'count by (model_name)(t_requests_total{SEL})',
    # histogram_quantile
    f'histogram_quantile(0.95, sum by (le, instance, model_name)(rate(t_latency_seconds_bucket{SEL}[5m])))',
    f'histogram_quantile(0.5, rate(t_latency_seconds_bucket{SEL}[5m]))',
    f'histogram_quantile(0.99, sum by (le, model_name)(rate(t_latency_seconds_bucket{SEL}[5m])))',
    f'histogram_quantile(0, sum by (le, instance)(rate(t_latency_seconds_bucket{SEL}[10m])))',
    f'histogram_quantile(1, sum by (le, instance)(rate(t_latency_seconds_bucket{SEL}[10m])))',
    # binary operators, matching, comparisons, fallbacks between names
    f'sum by (instance, model_name)(rate(t_latency_seconds_sum{SEL}[5m])) / sum by (instance, model_name)(rate(t_latency_seconds_count{SEL}[5m]))',
    f'rate(t_requests_total{{code="500"}}[5m]) / ignoring(code) rate(t_requests_total{{code="200"}}[5m])',
    f'sum by (instance)(rate(t_requests_total{{code="500"}}[5m])) / on(instance) sum by (instance, model_name)(rate(t_requests_total[5m]))',
    f'1 - sum by (instance, model_name)(rate(t_latency_seconds_bucket{{le="0.5"}}[5m])) / sum by (instance, model_name)(rate(t_latency_seconds_count[5m]))',
    f'max by (instance, model_name)(t_cache_new{SEL} or t_cache_old{SEL})',
    f't_cache_new{SEL} or t_cache_old{SEL}',
    f'sum by (instance, model_name)(rate(t_requests_total{SEL}[5m])) > 0.5',
    f'2 < sum by (instance, model_name)(t_queue{SEL})',
    f't_queue{SEL} > bool 8',
    f'-t_queue{SEL} * 2 + 1',
    f'(avg_over_time((sum by (instance, model_name)(t_queue{SEL}))[10m:30s])) > 6 and on (instance, model_name) (sum by (instance, model_name)(rate(t_requests_total{SEL}[5m])) > 0.5)',
    f'sum by (instance)(t_queue{SEL}) unless on(instance) t_cache_new{SEL}',
    f't_queue{SEL} - t_queue{SEL} offset 1m',
]


def _compare(expected, actual, query):
    key = lambda frame: [tuple(sorted(frame.series_labels(c).items())) for c in range(frame.series_count)]
    assert key(actual) == key(expected), query
    want, got = expected.values.to_numpy(), actual.values.to_numpy()
    assert want.shape == got.shape, query
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=query)


@pytest.mark.parametrize("step", ["30s", "1m"])
def test_local_results_equal_prometheus(prometheus, step):
    start = pd.Timestamp(T0 * 1_000_000, tz="UTC") + pd.Timedelta("7m")
    end = pd.Timestamp(T0 * 1_000_000, tz="UTC") + pd.Timedelta(hours=HOURS, minutes=5)
    step = pd.Timedelta(step)
    with PrometheusSource(prometheus.url) as source:
        local = LocalSource(source, reader="auto")
        assert local.reader_name == "remote-read"
        for query in QUERIES:
            expected = source.query_range(query, start, end, step)
            actual = local.query_range(query, start, end, step)
            assert local.paths[query] == "local (remote-read, STREAMED_XOR_CHUNKS)", (query, local.paths[query])
            assert expected.series_count > 0, query
            _compare(expected, actual, query)


def test_range_vector_reader_agrees_and_keeps_instant_selectors_on_the_query_path(prometheus, monkeypatch):
    # Small blocks: range functions are evaluated a few series at a time, as they are on large fleets.
    monkeypatch.setattr("rules_engine.evaluate.local.BLOCK_CELLS", 500)
    start = pd.Timestamp(T0 * 1_000_000, tz="UTC") + pd.Timedelta("20m")
    end = start + pd.Timedelta(hours=2)
    step = pd.Timedelta("30s")
    with PrometheusSource(prometheus.url) as source:
        local = LocalSource(source, reader="range-vector")
        for query in QUERIES:
            expected = source.query_range(query, start, end, step)
            actual = local.query_range(query, start, end, step)
            _compare(expected, actual, query)
        assert local.paths[f't_queue{SEL}'].startswith("query (an instant selector needs staleness markers")
        assert local.paths[f'rate(t_requests_total{SEL}[5m])'] == "local (range-vector)"


def test_unsupported_expressions_take_the_query_path(prometheus):
    start = pd.Timestamp(T0 * 1_000_000, tz="UTC") + pd.Timedelta("20m")
    end = start + pd.Timedelta(hours=1)
    step = pd.Timedelta("1m")
    queries = [f'quantile_over_time(0.9, t_queue{SEL}[5m])', f'topk(2, t_queue{SEL})',
               f'label_replace(t_queue{SEL}, "x", "$1", "instance", "(.*)")',
               f'rate(t_requests_total{SEL}[5m]) / on(instance) group_left t_queue{SEL}',
               # several left series per right one: Prometheus' error, which the query path reports
               ]
    with PrometheusSource(prometheus.url) as source:
        local = LocalSource(source, reader="remote-read")
        for query in queries:
            expected = source.query_range(query, start, end, step)
            actual = local.query_range(query, start, end, step)
            assert local.paths[query].startswith("query ("), query
            _compare(expected, actual, query)
        with pytest.raises(Exception) as refused:
            source.query_range(f't_requests_total{SEL} / ignoring(code) t_queue{SEL}', start, end, step)
        with pytest.raises(type(refused.value)):
            local.query_range(f't_requests_total{SEL} / ignoring(code) t_queue{SEL}', start, end, step)
        assert local.paths[f't_requests_total{SEL} / ignoring(code) t_queue{SEL}'].startswith("query (several left")


def test_query_reader_and_a_server_without_remote_read():
    import promql_parser
    with pytest.raises(Unsupported, match="function abs"):
        check(promql_parser.parse("abs(x)"))
    # A port that speaks HTTP but not remote read: the probe says no, and "auto" keeps the query path.
    with processes.running_prometheus() as running, PrometheusSource(running.url) as source:
        assert probe_remote_read(source.client)  # Prometheus serves remote read by default
        assert LocalSource(source, reader="query").plan("rate(x[5m])").startswith("query (")
    with pytest.raises(Exception, match="reader must be one of"):
        LocalSource(PrometheusSource("http://127.0.0.1:9"), reader="bogus")


# -- the vectorized Sample decoder against protobuf's own -----------------------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from rules_engine.source.raw import decode_samples  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, STALE]),
                          st.integers(-2**63, 2**63 - 1) | st.integers(0, 2**42)), max_size=40))
def test_decode_samples_equals_protobuf(samples):
    series = WriteRequest().timeseries.add()
    for value, stamp in samples:
        series.samples.add(value=value, timestamp=stamp)
    encoded = [sample.SerializeToString() for sample in series.samples]
    decoded = decode_samples(b"".join(encoded), np.array([len(e) for e in encoded], dtype=np.int64))
    assert decoded is not None
    assert decoded[0].tolist() == [stamp for _, stamp in samples]
    # bit for bit: NaN payloads (the staleness marker) and -0.0 survive
    assert decoded[1].view(np.uint64).tolist() == np.array([v for v, _ in samples], dtype=np.float64).view(np.uint64).tolist()


def test_decode_samples_refuses_layouts_it_does_not_know():
    assert decode_samples(b"\x18\x01", np.array([2])) is None  # an unknown field
    assert decode_samples(b"\x10\x01\x09" + bytes(8), np.array([11])) is None  # fields reordered


# -- snapshots: raw samples recorded once, replayed through the local evaluator ------------------------------------

def test_snapshot_records_raw_samples_and_replays_them(prometheus, tmp_path):
    from rules_engine.source.snapshot import SnapshotSource, record_snapshot

    start = pd.Timestamp(T0 * 1_000_000, tz="UTC") + pd.Timedelta("20m")
    end = start + pd.Timedelta(hours=2)
    step = pd.Timedelta("30s")
    unsupported = f'quantile_over_time(0.9, t_queue{SEL}[5m])'
    queries = QUERIES + [unsupported]
    with PrometheusSource(prometheus.url) as source:
        path = record_snapshot(LocalSource(source, "remote-read", cache_margin=pd.Timedelta(0)), queries, start, end, step, tmp_path / "raw.snapshot")
        frames_only = record_snapshot(source, queries, start, end, step, tmp_path / "frames.snapshot")
        snapshot = SnapshotSource(path)
        assert snapshot.local_queries == frozenset(QUERIES) and snapshot.has_result(unsupported)
        replay = LocalSource(snapshot, snapshot.raw_reader)
        for query in queries:
            _compare(source.query_range(query, start, end, step), replay.query_range(query, start, end, step), query)
        assert replay.paths[unsupported] == "query (recorded result)"
        assert replay.paths[QUERIES[0]] == "local (snapshot)"
    # Each selector's samples once instead of every evaluated point of every query (the file sizes depend on how
    # well jittered timestamps compress against evaluated points; the counts do not).
    import json
    import zipfile
    stored = json.loads(zipfile.ZipFile(path).read("snapshot.json"))
    points = json.loads(zipfile.ZipFile(frames_only).read("snapshot.json"))
    raw_samples = sum(entry["samples"] for entry in stored["raw"])
    evaluated = sum(entry["series"] for entry in points["queries"] if entry["query"] in QUERIES) * points["points"]
    assert raw_samples < evaluated
    with pytest.raises(Exception, match="holds query .* as raw samples"):
        snapshot.query_range(QUERIES[0], start, end, step)


def test_version_1_snapshots_still_replay():
    import json
    import zipfile

    from rules_engine.source.snapshot import SnapshotSource

    # Two queries of the demo snapshot as the version 1 writer recorded them (results only, no raw samples).
    old = SnapshotSource(Path(__file__).resolve().parent / "fixtures" / "snapshot-v1.snapshot")
    header = json.loads(zipfile.ZipFile(old.path).read("snapshot.json"))
    assert header["version"] == 1 and old.raw_reader is None and len(old.queries) == 2
    frames = [old.query_range(query, old.start, old.end, old.step) for query in old.queries]
    assert [frame.series_count for frame in frames] == [1, 2]
    assert all(np.isfinite(frame.values.to_numpy()).any() for frame in frames)


def test_cli_reports_how_each_query_was_read(prometheus, tmp_path):
    import json
    import subprocess
    import sys

    (tmp_path / "pack.yaml").write_text("""\
kind: RulePack
name: local
selector: '{job="vllm"}'
keep_labels: [instance]
rules:
  - {name: ErrorRate, category: error_rate, above: 0.1, for: 2m,
     signal: 'sum by (instance) (rate(t_requests_total{code="500"}[5m]))'}
  - {name: QueueP90, category: queue_buildup, above: 100,
     signal: 'quantile_over_time(0.9, max by (instance) (t_queue)[10m:1m])'}
""")
    start = pd.Timestamp(T0 * 1_000_000, tz="UTC") + pd.Timedelta("30m")
    exports = {}
    for reader in ("auto", "query"):
        out = tmp_path / f"{reader}.json"
        done = subprocess.run([sys.executable, "-m", "rules_engine.cli", "evaluate", "--rules", str(tmp_path / "pack.yaml"),
                               "--prometheus", prometheus.url, "--start", start.isoformat(),
                               "--end", (start + pd.Timedelta(hours=2)).isoformat(), "--reader", reader,
                               "--export", str(out), "--no-progress"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        exports[reader] = json.loads(out.read_text())
    reads = {rule["rule"]: rule["reads"] for rule in exports["auto"]["rules"]}
    assert set(reads["ErrorRate"].values()) == {"local (remote-read, STREAMED_XOR_CHUNKS)"}
    assert all(path.startswith("query (function quantile_over_time") for path in reads["QueueP90"].values())
    assert all(path.startswith("query (raw samples not read")
               for rule in exports["query"]["rules"] for path in rule["reads"].values())
    # The same findings; peaks equal to float precision (sums of rates add in another order than Prometheus').
    local, queried = exports["auto"]["findings"], exports["query"]["findings"]
    assert [{**f, "value": None} for f in local] == [{**f, "value": None} for f in queried]
    np.testing.assert_allclose([f["value"] for f in local], [f["value"] for f in queried], rtol=1e-9)


def test_a_later_range_reads_only_the_new_samples(prometheus):
    """A monitor's rounds: the same LocalSource over a range moved forward reads the new end (and a few minutes
    before it again), not the whole range, and still agrees with Prometheus."""
    query = f'sum by (instance)(rate(t_requests_total{SEL}[5m]))'
    step = pd.Timedelta("30s")
    first = pd.Timestamp(T0 * 1_000_000, tz="UTC") + pd.Timedelta("1h")
    with PrometheusSource(prometheus.url) as source:
        local = LocalSource(source, "remote-read", cache_margin=pd.Timedelta(0))
        local.query_range(query, first, first + pd.Timedelta("1h"), step)
        before = local.samples_read
        for shift in ("10m", "20m", "30m"):
            start, end = first + pd.Timedelta(shift), first + pd.Timedelta("1h") + pd.Timedelta(shift)
            _compare(source.query_range(query, start, end, step), local.query_range(query, start, end, step), query)
        # 30 more minutes plus a 5-minute re-read per round, against 1h05m for the first read.
        assert local.samples_read - before < before * (30 + 3 * 5) / 60


def test_a_planned_backtest_reads_each_selector_once_and_lets_its_samples_go(prometheus, monkeypatch):
    """`prepare` (what the engine calls before fetching a backtest's queries): each selector is read once over the
    union of its queries' ranges, a narrower selector is filtered from a wider one read anyway, results still
    equal Prometheus', and nothing is held once every planned query is computed (unless keep_samples)."""
    start = pd.Timestamp(T0 * 1_000_000, tz="UTC") + pd.Timedelta("20m")
    end = start + pd.Timedelta(hours=2)
    step = pd.Timedelta("30s")
    with PrometheusSource(prometheus.url) as source:
        local = LocalSource(source, "remote-read")
        reads = []
        read = local.reader.read
        monkeypatch.setattr(local.reader, "read", lambda matchers, low, high: reads.append(matchers) or
                            read(matchers, low, high))
        local.prepare(QUERIES, start, end, step)
        for query in QUERIES:
            _compare(source.query_range(query, start, end, step), local.query_range(query, start, end, step), query)
        assert local.raw_samples() == []
        kept = LocalSource(source, "remote-read", keep_samples=True)
        kept.prepare(QUERIES[:3], start, end, step)
        for query in QUERIES[:3]:
            kept.query_range(query, start, end, step)
        held = {tuple((m.name, m.value) for m in matchers) for matchers, *_ in kept.raw_samples()}
        assert {(("__name__", "t_queue"), ("job", "vllm")), (("__name__", "t_requests_total"), ("job", "vllm"))} < held
    assert len(reads) == len(set(reads))
    # t_requests_total{code="500"}, {code="200"} and {job="vllm"} come from the samples of t_requests_total (all
    # of them), read with the other metrics selected by name alone; metrics with the same other matchers are
    # read together, histogram buckets alone; a regex matcher is left to Prometheus.
    assert {tuple((m.name, m.op, m.value) for m in matchers) for matchers in reads} == {
        (("__name__", "Re", "t_latency_seconds_count|t_requests_total"),),
        (("__name__", "Re", "t_cache_new|t_cache_old|t_latency_seconds_sum|t_queue"), ("job", "Equal", "vllm")),
        (("__name__", "Equal", "t_latency_seconds_bucket"), ("job", "Equal", "vllm")),
        (("__name__", "Equal", "t_latency_seconds_bucket"), ("le", "Equal", "0.5")),
        (("__name__", "Equal", "t_queue"), ("instance", "Re", "vllm-[12].*"))}


def test_a_backtests_queries_computed_at_once_read_a_bounded_number_of_selectors_at_once(prometheus, monkeypatch):
    import threading
    import time

    from rules_engine.evaluate import local as local_module
    from rules_engine.evaluate.engine import fetch_all

    start = pd.Timestamp(T0 * 1_000_000, tz="UTC") + pd.Timedelta("20m")
    end = start + pd.Timedelta(hours=1)
    step = pd.Timedelta("1m")
    with PrometheusSource(prometheus.url) as source:
        local = LocalSource(source, "remote-read")
        read, lock, flight = local.reader.read, threading.Lock(), {"now": 0, "most": 0}

        def counted(matchers, low, high):
            with lock:
                flight["now"] += 1
                flight["most"] = max(flight["most"], flight["now"])
            time.sleep(0.05)  # long enough for the other workers to try reading meanwhile
            try:
                return read(matchers, low, high)
            finally:
                with lock:
                    flight["now"] -= 1

        monkeypatch.setattr(local.reader, "read", counted)
        frames, errors = fetch_all(local, QUERIES, start, end, step, concurrency=8)
        assert not errors
        assert flight["most"] == local_module.READS_AT_ONCE
        for query in QUERIES[:6]:
            _compare(source.query_range(query, start, end, step), frames[query], query)


def test_plan_reads_filters_a_narrower_selector_only_where_that_is_exact():
    from rules_engine.evaluate.local import matching_series, plan_reads
    from rules_engine.source.raw import Matcher

    name = Matcher("__name__", "Equal", "x")
    error, not_ok = Matcher("reason", "Equal", "error"), Matcher("code", "NotEqual", "200")
    regex = Matcher("pod", "Re", "a.*")
    hour = 3_600_000
    plan = plan_reads({(name,): (0, 10 * hour), (name, error): (hour, 10 * hour), (name, not_ok): (0, 11 * hour),
                       (name, regex): (0, 10 * hour), (name, error, not_ok): (0, 12 * hour)}, widen_ms=hour)
    assert plan[(name,)].parent is None and (plan[(name,)].start_ms, plan[(name,)].end_ms) == (0, 11 * hour)
    assert plan[(name, error)].parent == (name,) and plan[(name, error)].extra == (error,)
    assert plan[(name, not_ok)].parent == (name,)
    assert plan[(name, regex)].parent is None  # RE2 is not Python's re: read as Prometheus matches it
    assert plan[(name, error, not_ok)].parent is None  # beyond the widening: its own read
    metrics = [{"reason": "error", "code": "500"}, {"reason": "abort"}, {"code": "200", "reason": "error"}]
    assert matching_series(metrics, [error, not_ok]).tolist() == [True, False, False]


def test_group_reads_reads_metrics_with_the_same_other_matchers_together():
    from rules_engine.evaluate.local import group_reads, plan_reads
    from rules_engine.source.raw import Matcher

    def named(name):
        return (Matcher("__name__", "Equal", name), Matcher("model_name", "NotEqual", ""))

    hour = 3_600_000
    needs = {named("a_total"): (0, 10 * hour), named("b"): (hour // 2, 10 * hour), named("c_bucket"): (0, 10 * hour),
             named("d"): (5 * hour, 10 * hour), (Matcher("__name__", "Equal", "e"),): (0, 10 * hour),
             named("a_total") + (Matcher("reason", "Equal", "x"),): (0, 10 * hour)}
    plan = group_reads(plan_reads(needs, hour), hour)
    group = (Matcher("__name__", "Re", "a_total|b"), Matcher("model_name", "NotEqual", ""))
    assert (plan[group].start_ms, plan[group].end_ms, plan[group].parent) == (0, 10 * hour, None)
    assert plan[named("a_total")].parent == group and plan[named("b")].parent == group
    assert plan[named("b")].extra == (Matcher("__name__", "Equal", "b"),)
    assert plan[named("a_total") + (Matcher("reason", "Equal", "x"),)].parent == named("a_total")
    # buckets (one histogram per read), a range far from the group's, other matchers: read on their own
    assert plan[named("c_bucket")].parent is None and plan[named("d")].parent is None
    assert plan[(Matcher("__name__", "Equal", "e"),)].parent is None


# -- random series, property style: whatever the series look like, local == Prometheus ------------------------------

from hypothesis import HealthCheck  # noqa: E402

P0 = T0 + 86_400_000  # a day after the fixture's history; each example writes 3 hours after the one before, as
SPAN_MS = 3 * 3600_000  # Prometheus' head refuses samples older than its newest minus an hour
PROPERTY_QUERIES = [
    "rate({m}_total[2m])", "increase({m}_total[5m])", "irate({m}_total[1m])", "delta({m}_gauge[3m])",
    "{m}_gauge", "max_over_time({m}_gauge[2m])", "avg_over_time({m}_gauge[4m])", "count_over_time({m}_gauge[1m])",
    "sum by (pod)(rate({m}_total[3m]))", "sum_over_time(sum({m}_gauge)[5m:1m])",
    "histogram_quantile(0.9, sum by (le)(rate({m}_bucket[5m])))", "histogram_quantile(0.3, rate({m}_bucket[2m]))",
    "{m}_gauge > 5 or {m}_gauge < 1", "rate({m}_total[2m]) / ignoring(kind) {m}_gauge",
]


@st.composite
def random_history(draw):
    """A few pods' counters, gauges and histograms: scrape interval, jitter, gaps, resets, staleness, NaN."""
    series = []
    for pod in range(draw(st.integers(1, 3))):
        interval = draw(st.sampled_from([5_000, 10_000, 15_000, 30_000, 60_000]))
        begin = P0 + draw(st.integers(0, 20)) * 60_000
        length = draw(st.integers(2, 120))
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        times = begin + np.arange(length) * interval + rng.integers(0, max(1, interval // 4), size=length)
        times = np.unique(times[rng.random(length) > draw(st.sampled_from([0.0, 0.1, 0.4]))])
        if len(times) == 0:
            continue
        counter = np.cumsum(rng.integers(0, 50, size=len(times))).astype(float)
        for _ in range(draw(st.integers(0, 3))):
            at = rng.integers(0, len(times))
            counter[at:] -= counter[at] - rng.integers(0, 5)  # a reset
        # + 0.0: no -0.0. Remote read cannot carry it (Prometheus leaves a zero value out of the Sample, sign and
        # all), so x / -0.0 is +Inf locally where Prometheus says -Inf: the one known difference.
        gauge = rng.normal(3, 3, size=len(times)).round(2) + 0.0
        if draw(st.booleans()):
            gauge[rng.integers(0, len(times))] = np.nan
        gauge_times, gauge_values = times, gauge
        if draw(st.booleans()):  # goes stale at some point
            cut = rng.integers(0, len(times))
            gauge_times = np.concatenate([times[:cut + 1], [times[cut] + 1]]) if cut + 1 >= len(times) or \
                times[cut + 1] > times[cut] + 1 else times[:cut + 1]
            gauge_values = np.concatenate([gauge[:cut + 1], [STALE]])[:len(gauge_times)]
        labels = {"pod": f"p{pod}", "kind": "x"}
        series.append(({"__name__": "{m}_total", **labels}, times, counter))
        series.append(({"__name__": "{m}_gauge", **labels}, gauge_times, gauge_values))
        bounds = draw(st.lists(st.sampled_from(["0.1", "0.5", "1", "1.0", "5", "+Inf"]), min_size=1, max_size=5,
                               unique=True))
        total = np.cumsum(rng.integers(0, 9, size=len(times))).astype(float)
        for bound in sorted(bounds, key=float):
            share = 1.0 if bound == "+Inf" else min(1.0, float(bound) / 5 + rng.random() * 0.3)
            series.append(({"__name__": "{m}_bucket", **labels, "le": bound}, times, np.floor(total * share)))
    return series


@pytest.fixture(scope="module")
def empty_prometheus():
    require_binary(processes.PROMETHEUS)
    with processes.running_prometheus(extra_args=["--web.enable-remote-write-receiver"]) as running:
        yield running


_example = iter(range(10**6))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=random_history(), step=st.sampled_from(["15s", "30s", "1m"]))
def test_random_series_agree_with_prometheus(empty_prometheus, history, step):
    number = next(_example)
    name, shift = f"prop{number}", number * SPAN_MS
    remote_write(empty_prometheus.url, [({**labels, "__name__": labels["__name__"].format(m=name)}, times + shift,
                                         values) for labels, times, values in history])
    start = pd.Timestamp((P0 + shift) * 1_000_000, tz="UTC") + pd.Timedelta("3m")
    end = start + pd.Timedelta("2h")
    with PrometheusSource(empty_prometheus.url) as source:
        local = LocalSource(source, "remote-read")
        for template in PROPERTY_QUERIES:
            query = template.format(m=name)
            expected = source.query_range(query, start, end, pd.Timedelta(step))
            actual = local.query_range(query, start, end, pd.Timedelta(step))
            assert local.paths[query] == "local (remote-read, STREAMED_XOR_CHUNKS)", (query, local.paths[query])
            _compare(expected, actual, query)
