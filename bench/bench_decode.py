"""Decode + frame build of a large range result: the vectorized path against the naive ones, in one process.

    python bench/bench_decode.py [--series 50] [--points 20000] [--repeat 3]
    python bench/bench_decode.py --prometheus URL --query Q --start T --end T --step 30s   (a live answer)

Prints the best-of-N time of each way from the same answer body and the ratio naive / vectorized:
- naive: json.loads, then a float() and a dict insert per sample, then a DataFrame;
- frame_from_matrix: json.loads, then the contract's helper (numpy, but a Python object per sample from json);
- decode_matrix: the values arrays cut out of the body and parsed by one numpy call (PrometheusSource's path).
With --prometheus it also prints Prometheus' own time to compute and send the answer, the floor for any client.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import numpy as np
import pandas as pd
import requests

from rules_engine.source.base import SourceError
from rules_engine.source.frame import evaluation_grid, frame_from_matrix
from rules_engine.source.prometheus import decode_matrix, frame_from_chunks


def generated_answer(series: int, points: int, step_seconds: int = 30) -> tuple[bytes, pd.DatetimeIndex]:
    """A query_range answer body as Prometheus writes it: compact JSON, values as shortest round-trip strings."""
    rng = np.random.default_rng(0)
    start = 1_790_812_800
    timestamps = start + np.arange(points) * step_seconds
    result = []
    for i in range(series):
        values = rng.gamma(2.0, 0.1, points)
        result.append({"metric": {"__name__": "vllm:e2e_request_latency_seconds", "instance": f"10.0.{i // 250}.{i % 250}:8000",
                                   "job": "vllm"},
                       "values": [[int(t), repr(float(v))] for t, v in zip(timestamps, values)]})
    result.sort(key=lambda s: tuple(sorted(s["metric"].items())))
    body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}},
                      separators=(",", ":")).encode()
    grid = evaluation_grid(pd.Timestamp(start, unit="s", tz="UTC"),
                           pd.Timestamp(int(timestamps[-1]), unit="s", tz="UTC"), pd.Timedelta(seconds=step_seconds))
    return body, grid


def naive(body: bytes, grid: pd.DatetimeIndex) -> pd.DataFrame:
    result = json.loads(body)["data"]["result"]
    columns = {}
    for i, series in enumerate(result):
        samples = {}
        for timestamp, value in series["values"]:
            samples[pd.Timestamp(timestamp, unit="s", tz="UTC")] = float(value)
        columns[i] = samples
    return pd.DataFrame(columns).reindex(grid)


def with_frame_from_matrix(body: bytes, grid: pd.DatetimeIndex) -> pd.DataFrame:
    return frame_from_matrix("q", json.loads(body)["data"]["result"], grid).values


def vectorized(body: bytes, grid: pd.DatetimeIndex) -> pd.DataFrame:
    return frame_from_chunks("q", [decode_matrix(body, SourceError)], grid).values


def best_of(repeat: int, run: Callable[[], object]) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - started)
    return best, out


def live_answer(url: str, query: str, start: str, end: str, step: str) -> tuple[bytes, pd.DatetimeIndex, float]:
    from rules_engine.evaluate.timerange import parse_time
    from rules_engine.spec import parse_duration
    start_at, end_at, step_at = parse_time(start), parse_time(end), parse_duration(step)
    started = time.perf_counter()
    response = requests.post(f"{url.rstrip('/')}/api/v1/query_range", timeout=600, data={
        "query": query, "start": start_at.timestamp(), "end": end_at.timestamp(), "step": step_at.total_seconds()})
    response.raise_for_status()
    return response.content, evaluation_grid(start_at, end_at, step_at), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=50)
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--prometheus")
    parser.add_argument("--query")
    parser.add_argument("--start")
    parser.add_argument("--end")
    parser.add_argument("--step", default="30s")
    parser.add_argument("--skip-naive", action="store_true", help="the per-sample loop takes several seconds")
    args = parser.parse_args()

    if args.prometheus:
        body, grid, server_seconds = live_answer(args.prometheus, args.query, args.start, args.end, args.step)
        print(f"Prometheus query + transfer: {server_seconds:.3f} s")
    else:
        body, grid = generated_answer(args.series, args.points)
    print(f"answer: {len(body) / 1e6:.1f} MB, {len(grid)} grid points")

    fast_seconds, fast = best_of(args.repeat, lambda: vectorized(body, grid))
    helper_seconds, helper = best_of(args.repeat, lambda: with_frame_from_matrix(body, grid))
    pd.testing.assert_frame_equal(fast, helper)
    print(f"decode_matrix + frame_from_chunks : {fast_seconds:.3f} s")
    print(f"json.loads + frame_from_matrix    : {helper_seconds:.3f} s  ({helper_seconds / fast_seconds:.1f}x slower)")
    if not args.skip_naive:
        naive_seconds, slow = best_of(1, lambda: naive(body, grid))
        np.testing.assert_array_equal(slow.to_numpy(), fast.to_numpy())
        print(f"json.loads + per-sample loop      : {naive_seconds:.3f} s  ({naive_seconds / fast_seconds:.1f}x slower)")
    if args.prometheus:
        print(f"decode / Prometheus' own time      : {fast_seconds / server_seconds:.2f}")


if __name__ == "__main__":
    main()
