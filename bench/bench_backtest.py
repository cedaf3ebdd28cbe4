"""Backtest of the shipped vLLM pack against Prometheus evaluating the same alert expressions, same range.

    python bench/bench_backtest.py [--instances 50] [--days 7] [--step 30s] [--cache DIR] [--repeat 1]

History: a simulated fleet (rules-engine simulate), backfilled with promtool into a data dir cached under
--cache (first run: minutes; later runs reuse it), served by a real Prometheus on 127.0.0.1.
For each group of rules, in the same invocation:
- ours: `rules_engine.backtest` (fetch each query once, pandas windows, vectorized for/severity), wall time and the peak
  memory it allocated (tracemalloc, a second run; numpy/pandas buffers included), with the raw-sample reader
  (--reader, default remote-read: each stored sample read once, queries computed locally; the bytes per raw sample
  read are the peak over the samples read; --response-type picks remote read's answer, STREAMED_XOR_CHUNKS by
  default, or SAMPLES) and again with the query path (Prometheus range-querying every query);
- peer: Prometheus range-querying each rule's compiled alert expression (rules_engine.compile: window statistics
  as `*_over_time((signal)[w:step])`, guards as `and on(...)`), one rule after another as a rule group evaluates
  them, and again with the same concurrency as ours; Prometheus' peak RSS since it started (/proc VmHWM);
- floor: Prometheus computing just the queries our backtest fetches (what anything built on them must pay).
Samples per second divide the samples our fetch brings back (series × steps, warm-up included) by each side's
wall time: one denominator for both, so the rate ratio is the time ratio.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rules_engine.api import backtest as run_backtest  # noqa: E402
from rules_engine.api import fetch_plan  # noqa: E402
from rules_engine.compile.generate import compile_ruleset  # noqa: E402
from rules_engine.evaluate.engine import DEFAULT_CONCURRENCY, fetch_all, filtered_queries  # noqa: E402
from rules_engine.evaluate.local import READS_AT_ONCE, LocalSource  # noqa: E402
from rules_engine.kinds import RULE_KINDS  # noqa: E402
from rules_engine.simulate import FleetSpec, Incident, simulate  # noqa: E402
from rules_engine.source.prometheus import MAX_POINTS_PER_QUERY, PrometheusSource  # noqa: E402
from rules_engine.source.raw import RESPONSE_TYPES, RemoteReader  # noqa: E402
from rules_engine.spec import load_ruleset, parse_duration  # noqa: E402
from tests.processes import backfill, running_prometheus  # noqa: E402

END = pd.Timestamp("2026-11-20T00:00:00Z")
# A p95-over-1h rule (DESIGN.md's example of an expensive subquery) beside the shipped pack's own rules.
EXTRA_PACK = """\
kind: RulePack
name: bench
selector: '{model_name!=""}'
keep_labels: [instance, model_name]
rules:
  - name: BenchTTFTp95Over1h
    category: high_latency
    signal: >-
      sum by (instance, model_name) (rate(vllm:time_to_first_token_seconds_sum[5m]))
      / sum by (instance, model_name) (rate(vllm:time_to_first_token_seconds_count[5m]))
    stat: p95
    window: 1h
    above: 1.5
    for: 10m
"""


def history(cache: Path, instances: int, days: int, step: int) -> Path:
    data = cache / f"vllm-{instances}x{days}d-{step}s"
    if (data / "ready").exists():
        return data
    start = END - pd.Timedelta(days=days)
    incidents = [Incident("queue_buildup", (f"vllm-{i}:8000",), start=f"{24 * (i % days) + 14}h", duration=3600)
                 for i in range(0, instances, 7)]
    incidents += [Incident("kv_pressure", (f"vllm-{i}:8000",), start=f"{24 * (i % days) + 9}h", duration=2400)
                  for i in range(3, instances, 9)]
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        began = time.perf_counter()
        sim = simulate(Path(tmp) / "fleet.om", FleetSpec(start=start.timestamp(), end=END.timestamp(),
                                                         instances=instances, step=step, seed=5),
                       incidents, shards=max(1, instances // 5))
        print(f"simulated {instances} instances x {days}d: {sim.bytes_written / 1e9:.1f} GB in "
              f"{time.perf_counter() - began:.0f}s", flush=True)
        began = time.perf_counter()
        backfill(sim.paths, data, jobs=2)
        print(f"backfilled in {time.perf_counter() - began:.0f}s", flush=True)
    (data / "ready").write_text("ok\n")
    return data


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def local_source(source, reader, response_type):
    """The raw-sample source a run of ours reads through: remote read asks for `response_type` only."""
    if reader == "remote-read":
        return LocalSource(source, RemoteReader(source.client, response_types=(response_type,)))
    return LocalSource(source, reader)


def run_ours(ruleset, source, start, end, step, names, reader, response_type):
    """Wall time, traced peak memory, the backtest, the raw samples read (0 on the query path), the bytes remote
    read received and the seconds spent reading them (summed over reads in flight); each run reads afresh (a new
    LocalSource holds no samples)."""
    def one():
        wrapped = local_source(source, reader, response_type) if reader != "query" else source
        return run_backtest(ruleset, wrapped, start, end, step, rules=names, reader="query"), wrapped

    gc.collect()
    began = time.perf_counter()
    backtest, wrapped = one()
    seconds = time.perf_counter() - began
    wire = getattr(getattr(wrapped, "reader", None), "wire_bytes", 0)
    reading = getattr(wrapped, "read_seconds", 0.0)
    gc.collect()
    tracemalloc.start()
    _, wrapped = one()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak, backtest, getattr(wrapped, "samples_read", 0), wire, reading


def fetched_samples(ruleset, source, start, end, step, names) -> int:
    queries, fetch_start = fetch_plan(ruleset, start, step, names)
    frames, _ = fetch_all(source, queries, fetch_start, end, step)
    return sum(frame.values.size for frame in frames.values())


def run_peer(url: str, expressions: list[str], start, end, step, concurrency: int) -> float:
    """Each expression range-queried in pieces of at most 11,000 points (Prometheus' limit), answers parsed."""
    span = step * (MAX_POINTS_PER_QUERY - 1)
    pieces = []
    piece_start = start
    while piece_start <= end:
        pieces.append((piece_start, min(piece_start + span, end)))
        piece_start = piece_start + span + step

    def query(expr: str) -> int:
        series = 0
        for first, last in pieces:
            answer = requests.post(f"{url}/api/v1/query_range", timeout=3600, data={
                "query": expr, "start": first.timestamp(), "end": last.timestamp(), "step": step.total_seconds()})
            body = answer.json()
            if body.get("status") != "success":
                raise RuntimeError(f"{expr}: {body.get('error')}")
            series += len(body["data"]["result"])
        return series

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(query, expressions))
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--step", default="30s")
    parser.add_argument("--cache", default="/tmp/rules-engine-bench")
    parser.add_argument("--reader", default="remote-read", choices=["remote-read", "range-vector"])
    parser.add_argument("--response-type", default="STREAMED_XOR_CHUNKS", choices=list(RESPONSE_TYPES),
                        help="what remote read asks for (--reader remote-read)")
    parser.add_argument("--per-rule", action="store_true", help="Also time each rule alone.")
    args = parser.parse_args()
    step = parse_duration(args.step)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    data = history(cache, args.instances, args.days, int(step.total_seconds()))

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench.yaml").write_text(EXTRA_PACK)
        ruleset = load_ruleset([ROOT / "rules" / "vllm.yaml", Path(tmp) / "bench.yaml"])
    start, end = END - pd.Timedelta(days=args.days) + pd.Timedelta("1h"), END
    alerts: dict[str, list] = {}  # rule name -> its compiled alerts, base level first
    for compiled in compile_ruleset(ruleset, RULE_KINDS, step):
        for alert in compiled.alerts:
            alerts.setdefault(alert.rule, []).append(alert)
    groups = {
        "window-statistic rules": [r.name for _, r in ruleset.rules() if r.stat is not None],
        "plain threshold rules": [r.name for _, r in ruleset.rules() if r.stat is None],
        "whole pack": [r.name for _, r in ruleset.rules()],
    }
    with running_prometheus(data) as prometheus:
        source = PrometheusSource(prometheus.url, timeout=3600)
        # Warm Prometheus' page cache and our imports once, so neither side pays the first-touch cost.
        fetched_samples(ruleset, source, start, end, step, None)
        reader_name = args.reader + (f" ({args.response_type})" if args.reader == "remote-read" else "")
        print(f"{args.instances} instances x {args.days} days at {args.step}, range {start.isoformat()} .. "
              f"{end.isoformat()}, raw samples by {reader_name}")
        for title, names in groups.items():
            expressions = [alerts[name][0].expanded_expr for name in names]
            # Prometheus evaluates the same grid we fetch: a live `for` needs that warm-up too.
            _, fetch_start = fetch_plan(ruleset, start, step, names)
            peer_sequential = run_peer(prometheus.url, expressions, fetch_start, end, step, 1)
            peer_parallel = run_peer(prometheus.url, expressions, fetch_start, end, step, DEFAULT_CONCURRENCY)
            prometheus_peak = peak_rss_bytes(prometheus.pid)
            seconds, peak, backtest, raw, wire, reading = run_ours(ruleset, source, start, end, step, names,
                                                                   args.reader, args.response_type)
            query_seconds, query_peak, _, _, _, _ = run_ours(ruleset, source, start, end, step, names, "query", None)
            local = sum(path.startswith("local") for o in backtest.outcomes for path in o.reads.values())
            reads = sum(len(o.reads) for o in backtest.outcomes)
            # The floor: Prometheus computing the very queries we fetch, answers parsed but not framed.
            planned, _ = fetch_plan(ruleset, start, step, names)
            queries = [query for query in planned if query not in filtered_queries(planned)]  # what is really asked
            floor = run_peer(prometheus.url, queries, fetch_start, end, step, DEFAULT_CONCURRENCY)
            samples = fetched_samples(ruleset, source, start, end, step, names)
            evaluated = samples  # the same denominator for both sides
            print(f"\n{title} ({len(names)}): {', '.join(names)}")
            print(f"  ours  {seconds:7.2f} s  {evaluated / seconds / 1e6:7.2f} M samples/s  "
                  f"peak {peak / 1e6:7.1f} MB = {peak / max(raw, 1):5.1f} bytes per raw sample read "
                  f"({raw / 1e6:.2f} M read by {reader_name}"
                  + (f", {wire / max(raw, 1):.2f} bytes each on the wire" if wire else "")
                  + f"; {local}/{reads} queries computed locally); {len(backtest.findings)} findings; "
                  f"reading raw samples {reading:.2f} s (summed over {READS_AT_ONCE} read(s) at once)")
            print(f"  ours, query path  {query_seconds:7.2f} s  peak {query_peak / 1e6:7.1f} MB = "
                  f"{query_peak / max(samples, 1):5.1f} bytes per fetched sample ({samples / 1e6:.1f} M fetched, "
                  f"concurrency {DEFAULT_CONCURRENCY}); local path {query_seconds / seconds:.2f}x faster")
            print(f"  peer  {peer_sequential:7.2f} s  {evaluated / peer_sequential / 1e6:7.2f} M samples/s  "
                  f"one rule after another (a rule group); {peer_parallel:.2f} s with {DEFAULT_CONCURRENCY} at once; "
                  f"Prometheus peak RSS so far {prometheus_peak / 1e6:.0f} MB")
            print(f"  floor {floor:7.2f} s  Prometheus computing the {len(queries)} queries we fetch "
                  f"({DEFAULT_CONCURRENCY} at once, JSON parsed): {floor / seconds:.0%} of ours")
            print(f"  ratio peer/ours: {peer_sequential / seconds:.2f}x (sequential peer), "
                  f"{peer_parallel / seconds:.2f}x (concurrent peer)")
            for name, expression in zip(names, expressions) if args.per_rule and title != "whole pack" else ():
                _, rule_fetch_start = fetch_plan(ruleset, start, step, [name])
                began = time.perf_counter()
                run_backtest(ruleset, local_source(source, args.reader, args.response_type), start, end, step,
                             rules=[name])
                alone = time.perf_counter() - began
                peer_alone = run_peer(prometheus.url, [expression], rule_fetch_start, end, step, 1)
                print(f"    {name:<28} ours {alone:6.2f} s  peer {peer_alone:6.2f} s  ratio {peer_alone / alone:5.2f}x")


if __name__ == "__main__":
    main()
