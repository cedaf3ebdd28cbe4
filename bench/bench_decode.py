"""Decode + frame build of a large range result: the vectorized path against the naive ones, in one process.

    python bench/bench_decode.py [--series 50] [--points 20000]       generated answer, no server
    python bench/bench_decode.py --start-prometheus                   the same series backfilled into a Prometheus
                                                                      this script starts (tests/processes.py)
    python bench/bench_decode.py --prometheus URL --query Q --start T --end T [--step 30s]   any live server

Prints the best-of-N time of each way over the same answer bodies and the ratio to the vectorized one:
- decode_matrix: the values arrays cut out of the body and parsed by one numpy call (PrometheusSource's path);
- naive: json.loads, then a float() and a dict insert per sample, then a DataFrame.
Against a server it also prints Prometheus' own time to compute and send the answers (split at 11,000 points
per request like PrometheusSource), the floor for any client; and the raw samples of `--metric` over the range
read by remote read in each response type (rules_engine.source.raw.RemoteReader): SAMPLES (snappy protobuf in
2-hour pieces, each decoded whole) and STREAMED_XOR_CHUNKS (the stored chunks streamed, decoded in numpy while
they arrive): best-of-N wall time, bytes on the wire and tracemalloc's peak per sample read (a separate run), and
their ratios; both must give the same samples.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import requests

from rules_engine.source.base import SourceError
from rules_engine.source.client import PrometheusClient
from rules_engine.source.frame import evaluation_grid
from rules_engine.source.prometheus import MAX_POINTS_PER_QUERY, decode_matrix, frame_from_chunks
from rules_engine.source.raw import Matcher, RawSamples, RemoteReader

Answers = list[tuple[bytes, pd.DatetimeIndex]]  # one body per request, with the grid it covers
METRIC = "bench_latency_seconds"


def generated_answer(series: int, points: int, step_seconds: int = 30) -> tuple[bytes, pd.DatetimeIndex]:
    """A query_range answer body as Prometheus writes it: compact JSON, values as shortest round-trip strings."""
    rng = np.random.default_rng(0)
    start = 1_790_812_800
    timestamps = start + np.arange(points) * step_seconds
    result = []
    for i in range(series):
        values = rng.gamma(2.0, 0.1, points)
        result.append({"metric": {"__name__": METRIC, "instance": f"10.0.{i // 250}.{i % 250}:8000", "job": "vllm"},
                       "values": [[int(t), repr(float(v))] for t, v in zip(timestamps, values)]})
    result.sort(key=lambda s: tuple(sorted(s["metric"].items())))
    body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}},
                      separators=(",", ":")).encode()
    grid = evaluation_grid(pd.Timestamp(start, unit="s", tz="UTC"),
                           pd.Timestamp(int(timestamps[-1]), unit="s", tz="UTC"), pd.Timedelta(seconds=step_seconds))
    return body, grid


def live_answers(url: str, query: str, grid: pd.DatetimeIndex) -> tuple[Answers, float]:
    """The raw answer bodies of `query` over `grid`, and the wall time Prometheus took to produce and send them."""
    answers: Answers = []
    started = time.perf_counter()
    for first in range(0, len(grid), MAX_POINTS_PER_QUERY):
        chunk = grid[first:first + MAX_POINTS_PER_QUERY]
        response = requests.post(f"{url.rstrip('/')}/api/v1/query_range", timeout=600, data={
            "query": query, "start": chunk[0].timestamp(), "end": chunk[-1].timestamp(),
            "step": (grid[1] - grid[0]).total_seconds()})
        response.raise_for_status()
        answers.append((response.content, chunk))
    return answers, time.perf_counter() - started


@contextlib.contextmanager
def backfilled_prometheus(body: bytes):
    """Prometheus over the generated series: written as OpenMetrics, loaded with promtool (tests/processes.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for tests/processes.py
    from tests import processes

    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        directory = Path(tmp)
        with open(directory / "history.om", "w") as out:
            out.write(f"# TYPE {METRIC} gauge\n")
            for item in json.loads(body)["data"]["result"]:
                labels = ",".join(f'{k}="{v}"' for k, v in item["metric"].items() if k != "__name__")
                out.writelines(f"{METRIC}{{{labels}}} {v} {t}\n" for t, v in item["values"])
            out.write("# EOF\n")
        processes.backfill(directory / "history.om", directory / "data")
        with processes.running_prometheus(directory / "data") as prometheus:
            yield prometheus.url


def vectorized(answers: Answers) -> pd.DataFrame:
    return pd.concat([frame_from_chunks("q", [decode_matrix(body, SourceError)], grid).values
                      for body, grid in answers])


def naive(answers: Answers) -> pd.DataFrame:
    frames = []
    for body, grid in answers:
        columns = {}
        for i, series in enumerate(json.loads(body)["data"]["result"]):
            samples = {}
            for timestamp, value in series["values"]:
                samples[pd.Timestamp(timestamp, unit="s", tz="UTC")] = float(value)
            columns[i] = samples
        frames.append(pd.DataFrame(columns).reindex(grid))
    return pd.concat(frames)


def best_of(repeat: int, run: Callable[[], pd.DataFrame]) -> tuple[float, pd.DataFrame]:
    best, out = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - started)
    return best, out


def remote_read(url: str, metric: str, grid: pd.DatetimeIndex, repeat: int) -> None:
    """Raw samples of `metric` over the grid's range through remote read, in each response type."""
    matchers = [Matcher("__name__", "Equal", metric)]
    start_ms, end_ms = int(grid[0].timestamp() * 1000), int(grid[-1].timestamp() * 1000)
    read: dict[str, RawSamples] = {}
    for kind in ("SAMPLES", "STREAMED_XOR_CHUNKS"):
        with PrometheusClient(url, timeout=600) as client:
            reader = RemoteReader(client, response_types=(kind,))
            reader.negotiated()
            seconds, wire = float("inf"), 0
            for _ in range(repeat):
                before = reader.wire_bytes
                started = time.perf_counter()
                read[kind] = reader.read(matchers, start_ms, end_ms)
                seconds, wire = min(seconds, time.perf_counter() - started), reader.wire_bytes - before
            samples = len(read[kind].values)
            gc.collect()
            tracemalloc.start()
            reader.read(matchers, start_ms, end_ms)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        print(f"remote read {kind:<19}   : {seconds:.3f} s  {wire / 1e6:6.1f} MB on the wire = "
              f"{wire / samples:5.2f} bytes per sample, peak {peak / samples:5.1f} bytes per sample "
              f"({samples / 1e6:.2f} M samples)")
        read[kind + " figures"] = (seconds, wire, peak)
    _same_samples(read["SAMPLES"], read["STREAMED_XOR_CHUNKS"])
    (t0, w0, p0), (t1, w1, p1) = read["SAMPLES figures"], read["STREAMED_XOR_CHUNKS figures"]
    print(f"STREAMED_XOR_CHUNKS / SAMPLES     : time {t1 / t0:.2f}x, wire {w1 / w0:.2f}x, peak memory {p1 / p0:.2f}x")


def _same_samples(one: RawSamples, other: RawSamples) -> None:
    def by_series(raw: RawSamples) -> dict:
        ends = np.cumsum(raw.counts)
        return {tuple(sorted(m.items())): (raw.timestamps_ms[e - c:e], raw.values[e - c:e].view(np.uint64))
                for m, c, e in zip(raw.metrics, raw.counts, ends)}
    first, second = by_series(one), by_series(other)
    assert first.keys() == second.keys()
    for key, (stamps, bits) in first.items():
        np.testing.assert_array_equal(stamps, second[key][0])
        np.testing.assert_array_equal(bits & np.uint64(2 ** 63 - 1), second[key][1] & np.uint64(2 ** 63 - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=50)
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--start-prometheus", action="store_true")
    parser.add_argument("--prometheus", metavar="URL")
    parser.add_argument("--query", default=METRIC)
    parser.add_argument("--metric", default=METRIC, help="the metric read by remote read (with a server)")
    parser.add_argument("--start", help="RFC 3339 (with --prometheus)")
    parser.add_argument("--end", help="RFC 3339 (with --prometheus)")
    parser.add_argument("--step", default="30s", help="pandas duration (with --prometheus)")
    parser.add_argument("--skip-naive", action="store_true", help="the per-sample loop takes several seconds")
    args = parser.parse_args()

    server_seconds = None
    with contextlib.ExitStack() as stack:
        if args.prometheus:
            grid = evaluation_grid(pd.Timestamp(args.start), pd.Timestamp(args.end), pd.Timedelta(args.step))
            answers, server_seconds = live_answers(args.prometheus, args.query, grid)
            remote_read(args.prometheus, args.metric, grid, args.repeat)
        elif args.start_prometheus:
            body, grid = generated_answer(args.series, args.points)
            url = stack.enter_context(backfilled_prometheus(body))
            live_answers(url, METRIC, grid)  # warm-up: the measured run is not the first touch of the blocks
            answers, server_seconds = live_answers(url, METRIC, grid)
            remote_read(url, METRIC, grid, args.repeat)
        else:
            answers = [generated_answer(args.series, args.points)]

    size = sum(len(body) for body, _ in answers)
    print(f"answer: {size / 1e6:.1f} MB in {len(answers)} request(s), {sum(len(g) for _, g in answers)} grid points")
    if server_seconds is not None:
        print(f"Prometheus query + transfer       : {server_seconds:.3f} s")
    fast_seconds, fast = best_of(args.repeat, lambda: vectorized(answers))
    print(f"decode_matrix + frame_from_chunks : {fast_seconds:.3f} s"
          + (f"  ({fast_seconds / server_seconds:.2f} of Prometheus' own time)" if server_seconds else ""))
    if not args.skip_naive:
        naive_seconds, slow = best_of(1, lambda: naive(answers))
        np.testing.assert_array_equal(slow.to_numpy(), fast.to_numpy())
        print(f"json.loads + per-sample loop      : {naive_seconds:.3f} s  ({naive_seconds / fast_seconds:.1f}x slower)")


if __name__ == "__main__":
    main()
