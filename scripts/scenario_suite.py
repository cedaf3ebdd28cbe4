"""The labelled scenario suite: do the shipped packs catch every incident early and stay quiet otherwise?

    python scripts/scenario_suite.py [--hours 50] [--step 30s] [--seed 5] [--cache DIR] [--json FILE]

A simulated fleet (rules_engine.simulate) over two days and more: diurnal load, random restarts with counter
resets, scrape gaps, short load spikes (noise that must not alert), every vLLM generation side by side with TGI and
SGLang instances, the vLLM nodes' DCGM exporter, and labelled incidents of every category each server kind can
show (TGI exposes no prefix-cache metric: its cache category is reported as not applicable, not as a miss). The history is backfilled
with promtool into a real Prometheus, the shipped packs are backtested on it (rules_engine.api.backtest), and so
is a naive peer: the seeds' static thresholds translated to each server's metric names, each held `for: 10m`.
Printed side by side: per incident detected or missed and the delay (for a slow climb, the warning's lead before
saturation), the median delay, and false alarms per instance-day (alert episodes on an instance outside every
incident on it), for the whole fleet and per server kind.

What the suite covers is data: `SERVER_KINDS` (instances, packs, naive peer, categories it cannot show) and
`INCIDENTS` (kind, instance, start, what counts as caught). Another server kind is one more entry in each.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rules_engine.api import backtest  # noqa: E402
from rules_engine.simulate import FleetSpec, Incident, simulate  # noqa: E402
from rules_engine.simulate.catalog import GENERATIONS  # noqa: E402
from rules_engine.source.prometheus import PrometheusSource  # noqa: E402
from rules_engine.spec import load_ruleset  # noqa: E402
from tests.processes import backfill, running_prometheus  # noqa: E402

END = pd.Timestamp("2026-11-20T00:00:00Z")
# An alert this long after an incident ends is still its aftermath (a queue draining, a window statistic
# catching up), not a false alarm; one this long before its start is not a detection.
AFTERMATH = pd.Timedelta(minutes=30)
LEAD_IN = pd.Timedelta(minutes=1)
REQUIRED_LEAD = pd.Timedelta(hours=1)  # slow climbs must be warned this long before they saturate


def host(instance: str) -> str:
    return instance.split(":")[0]


def server_of(host_name: str) -> str:
    """`tgi-2` -> `tgi`: instance names start with their server kind (a vLLM node's GPU exporter is `vllm-N`)."""
    return host_name.rsplit("-", 1)[0]


# The seeds' static thresholds (seeds/: queue 10, TTFT 100 ms, TPOT 50 ms, memory 85%, cache hit rate 70%,
# 100 tokens/s, error rate 1%, batch size < 4, GPU utilisation > 95%), each held for 10 minutes. Renamed vLLM
# families are read with the same `new or old` fallbacks as the shipped packs, so the comparison is about the
# detection logic, not about metric names.
NAIVE_VLLM = """\
kind: RulePack
name: naive_vllm
server: vllm
selector: '{model_name!=""}'
keep_labels: [instance, model_name]
defaults: {for: 10m}
rules:
  - {name: NaiveQueue, category: queue_buildup, signal: 'sum by (instance, model_name) (vllm:num_requests_waiting)', above: 10}
  - name: NaiveTTFT
    category: high_latency
    signal: >-
      sum by (instance, model_name) (rate(vllm:time_to_first_token_seconds_sum[5m]))
      / sum by (instance, model_name) (rate(vllm:time_to_first_token_seconds_count[5m]))
    above: 0.1
  - name: NaiveTPOT
    category: high_latency
    signal: >-
      sum by (instance, model_name) (rate(vllm:inter_token_latency_seconds_sum[5m]) or rate(vllm:time_per_output_token_seconds_sum[5m]))
      / sum by (instance, model_name) (rate(vllm:inter_token_latency_seconds_count[5m]) or rate(vllm:time_per_output_token_seconds_count[5m]))
    above: 0.05
  - name: NaiveMemory
    category: memory_pressure
    signal: 'max by (instance, model_name) (vllm:kv_cache_usage_perc or vllm:gpu_cache_usage_perc)'
    above: 0.85
  - name: NaiveCacheHitRate
    category: cache_inefficiency
    signal: >-
      (sum by (instance, model_name) (rate(vllm:prefix_cache_hits_total[5m])) / sum by (instance, model_name) (rate(vllm:prefix_cache_queries_total[5m])))
      or (sum by (instance, model_name) (rate(vllm:gpu_prefix_cache_hits_total[5m])) / sum by (instance, model_name) (rate(vllm:gpu_prefix_cache_queries_total[5m])))
    below: 0.7
  - {name: NaiveThroughput, category: low_throughput, signal: 'sum by (instance, model_name) (rate(vllm:generation_tokens_total[5m]))', below: 100}
  - name: NaiveErrorRate
    category: error_rate
    signal: >-
      sum by (instance, model_name) (rate(vllm:request_success_total{finished_reason=~"abort|error"}[5m]))
      / sum by (instance, model_name) (rate(vllm:request_success_total[5m]))
    above: 0.01
  - {name: NaiveBatchSize, category: batch_size_suboptimal, signal: 'sum by (instance, model_name) (vllm:num_requests_running)', below: 4}
"""
NAIVE_GPU = """\
kind: RulePack
name: naive_gpu
selector: '{gpu!=""}'
keep_labels: [instance, gpu, Hostname]
defaults: {for: 10m}
rules:
  - {name: NaiveGPUUtil, category: low_throughput, signal: 'max by (instance, gpu, Hostname) (DCGM_FI_DEV_GPU_UTIL)', above: 95}
  - name: NaiveGPUMemory
    category: memory_pressure
    signal: 'max by (instance, gpu, Hostname) (DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE))'
    above: 0.85
"""
# TGI has no TTFT histogram (queue + prefill batch time stand in, as in the shipped pack), no KV gauge (the batch
# token budget stands in), counters without `_total`, no model label, and no prefix-cache metric.
NAIVE_TGI = """\
kind: RulePack
name: naive_tgi
server: tgi
keep_labels: [instance, job]
defaults: {for: 10m}
rules:
  - {name: NaiveTGIQueue, category: queue_buildup, signal: 'sum by (instance, job) (tgi_queue_size)', above: 10}
  - name: NaiveTGITTFT
    category: high_latency
    signal: >-
      sum by (instance, job) (rate(tgi_request_queue_duration_sum[5m]))
      / sum by (instance, job) (rate(tgi_request_queue_duration_count[5m]))
      + sum by (instance, job) (rate(tgi_batch_inference_duration_sum{method="prefill"}[5m]))
      / sum by (instance, job) (rate(tgi_batch_inference_duration_count{method="prefill"}[5m]))
    above: 0.1
  - name: NaiveTGITPOT
    category: high_latency
    signal: >-
      sum by (instance, job) (rate(tgi_request_mean_time_per_token_duration_sum[5m]))
      / sum by (instance, job) (rate(tgi_request_mean_time_per_token_duration_count[5m]))
    above: 0.05
  - name: NaiveTGIMemory
    category: memory_pressure
    signal: 'max by (instance, job) (tgi_batch_current_max_tokens) / max by (instance, job) (tgi_batch_max_total_tokens > 0)'
    above: 0.85
  - {name: NaiveTGIThroughput, category: low_throughput, signal: 'sum by (instance, job) (rate(tgi_request_generated_tokens_sum[5m]))', below: 100}
  - name: NaiveTGIErrorRate
    category: error_rate
    signal: 'sum by (instance, job) (rate(tgi_request_failure[5m])) / sum by (instance, job) (rate(tgi_request_count[5m]))'
    above: 0.01
  - {name: NaiveTGIBatchSize, category: batch_size_suboptimal, signal: 'sum by (instance, job) (tgi_batch_current_size)', below: 4}
"""
# SGLang's scheduler gauges repeat per rank (`max` over ranks, as the shipped pack does); `cache_hit_rate` and
# `gen_throughput` are already interval averages.
NAIVE_SGLANG = """\
kind: RulePack
name: naive_sglang
server: sglang
keep_labels: [instance, model_name]
defaults: {for: 10m}
rules:
  - {name: NaiveSGLangQueue, category: queue_buildup, signal: 'max by (instance, model_name) (sglang:num_queue_reqs)', above: 10}
  - name: NaiveSGLangTTFT
    category: high_latency
    signal: >-
      sum by (instance, model_name) (rate(sglang:time_to_first_token_seconds_sum[5m]))
      / sum by (instance, model_name) (rate(sglang:time_to_first_token_seconds_count[5m]))
    above: 0.1
  - name: NaiveSGLangTPOT
    category: high_latency
    signal: >-
      sum by (instance, model_name) (rate(sglang:inter_token_latency_seconds_sum[5m]))
      / sum by (instance, model_name) (rate(sglang:inter_token_latency_seconds_count[5m]))
    above: 0.05
  - {name: NaiveSGLangMemory, category: memory_pressure, signal: 'max by (instance, model_name) (sglang:token_usage)', above: 0.85}
  - {name: NaiveSGLangCacheHitRate, category: cache_inefficiency, signal: 'max by (instance, model_name) (sglang:cache_hit_rate)', below: 0.7}
  - {name: NaiveSGLangThroughput, category: low_throughput, signal: 'max by (instance, model_name) (sglang:gen_throughput)', below: 100}
  - name: NaiveSGLangErrorRate
    category: error_rate
    signal: >-
      sum by (instance, model_name) (rate(sglang:num_aborted_requests_total[5m]))
      / sum by (instance, model_name) (rate(sglang:num_requests_total[5m]))
    above: 0.01
  - {name: NaiveSGLangBatchSize, category: batch_size_suboptimal, signal: 'max by (instance, model_name) (sglang:num_running_reqs)', below: 4}
"""


@dataclass(frozen=True)
class ServerKind:
    """One kind of series the suite covers: its instances, the shipped packs that judge it, its naive peer, and
    the categories it exposes no metric for."""

    instances: int  # server instances (`NAME-0:8000`, ...); 0 for an exporter beside another kind's instances
    packs: tuple[str, ...]  # paths under the repository root
    naive: str  # a RulePack document
    not_exposed: tuple[tuple[str, str], ...] = ()  # (category, why no rule can see it)


SERVER_KINDS = {
    "vllm": ServerKind(10, ("rules/vllm.yaml", "rules/vllm-trends.yaml"), NAIVE_VLLM),  # two of each generation
    "gpu": ServerKind(0, ("rules/gpu.yaml",), NAIVE_GPU),  # the DCGM exporter of each vLLM node
    "tgi": ServerKind(4, ("rules/tgi.yaml",), NAIVE_TGI,
                      (("cache_inefficiency", "TGI exposes no prefix-cache metric"),)),
    "sglang": ServerKind(4, ("rules/sglang.yaml",), NAIVE_SGLANG),
}
INSTANCES = {name: kind.instances for name, kind in SERVER_KINDS.items() if kind.instances}


@dataclass(frozen=True)
class Case:
    """A labelled incident: what is injected, and which finding categories count as catching it."""

    incident: Incident
    caught_by: frozenset[str]
    note: str = ""


def case(kind: str, host_name: str, start: str, caught_by: set[str], note: str = "", **fields) -> Case:
    return Case(Incident(kind, (f"{host_name}:8000",), start=start, **fields), frozenset(caught_by), note)


# Instances 0 and 5 run 0.8.5-0.9.1, 1 and 6 0.9.2-0.10.1, 2 and 7 0.10.2-0.11, 3 and 8 0.12-0.14, 4 and 9 0.15+.
# The first day has incidents too: a fresh fleet has no day-old baseline, and must still be judged.
INCIDENTS = (
    case("queue_buildup", "vllm-1", "3h", {"queue_buildup"}, "day 1", duration=1800, magnitude=1.15),
    case("low_cache_hit", "vllm-0", "5h", {"cache_inefficiency"}, "day 1, prefix counted in blocks",
         duration=7200, magnitude=0.2),
    case("kv_pressure", "vllm-2", "8h", {"memory_pressure"}, duration=1800, magnitude=0.97),
    case("ttft_spike", "vllm-3", "11h", {"high_latency"}, duration=1200, magnitude=6.0),
    case("error_burst", "vllm-4", "14h", {"error_rate"}, "finished_reason=error", duration=1200, magnitude=0.3),
    case("error_burst", "vllm-5", "17h", {"error_rate"}, "before 0.13: reported as abort", duration=1200,
         magnitude=0.3),
    case("client_aborts", "vllm-6", "20h", {"error_rate"}, duration=1200, magnitude=0.3),
    case("throughput_drop", "vllm-7", "27h", {"low_throughput"}, duration=1800, magnitude=0.4),
    case("gpu_xid", "vllm-8", "29h", {"error_rate", "low_throughput"}, "engine hangs", duration=900, magnitude=48),
    case("batch_cap", "vllm-9", "31h", {"batch_size_suboptimal"}, duration=1800, magnitude=3),
    case("itl_regression", "vllm-2", "33h", {"high_latency"}, "both ITL names", magnitude=1.4),
    case("kv_linear_climb", "vllm-6", "36h", {"memory_pressure"}, "needs a warning 1 h ahead", duration=4 * 3600,
         magnitude=0.45, hold=1800),
    case("low_cache_hit", "vllm-4", "38h", {"cache_inefficiency"}, duration=7200, magnitude=0.2),
    case("gpu_memory_leak", "vllm-3", "41h", {"memory_pressure"}, "needs a warning 1 h ahead", duration=3 * 3600,
         magnitude=1.0),
    case("queue_buildup", "vllm-0", "45h", {"queue_buildup"}, "oldest generation", duration=1800, magnitude=1.15),
    # TGI: no prefix-cache metric, so no low_cache_hit; an overload is refused (err="overloaded"), not queued.
    case("queue_buildup", "tgi-0", "4h", {"queue_buildup"}, "day 1", duration=1800, magnitude=1.3),
    case("ttft_spike", "tgi-1", "9h", {"high_latency"}, "prefill", duration=1200, magnitude=8.0),
    case("error_burst", "tgi-2", "15h", {"error_rate"}, 'err="generation"', duration=1200, magnitude=0.3),
    case("kv_pressure", "tgi-3", "21h", {"memory_pressure"}, "batch token budget", duration=1800, magnitude=0.97),
    case("throughput_drop", "tgi-0", "28h", {"low_throughput"}, duration=1800, magnitude=0.4),
    case("batch_cap", "tgi-1", "32h", {"batch_size_suboptimal"}, duration=1800, magnitude=3),
    case("itl_regression", "tgi-2", "35h", {"high_latency"}, "decode step", magnitude=1.4),
    case("kv_linear_climb", "tgi-3", "38h", {"memory_pressure"}, "needs a warning 1 h ahead", duration=4 * 3600,
         magnitude=0.45, hold=1800),
    # SGLang: rank-duplicated gauges on the 70B instance (sglang-2, --pp-size 2).
    case("low_cache_hit", "sglang-0", "6h", {"cache_inefficiency"}, "day 1", duration=7200, magnitude=0.2),
    case("queue_buildup", "sglang-2", "12h", {"queue_buildup"}, "two ranks", duration=1800, magnitude=1.15),
    case("ttft_spike", "sglang-1", "18h", {"high_latency"}, duration=1200, magnitude=6.0),
    case("error_burst", "sglang-3", "26h", {"error_rate"}, "counted as aborts", duration=1200, magnitude=0.3),
    case("kv_pressure", "sglang-0", "30h", {"memory_pressure"}, duration=1800, magnitude=0.97),
    case("throughput_drop", "sglang-1", "33h", {"low_throughput"}, duration=1800, magnitude=0.4),
    case("batch_cap", "sglang-2", "36h", {"batch_size_suboptimal"}, "two ranks", duration=1800, magnitude=3),
    case("itl_regression", "sglang-3", "40h", {"high_latency"}, magnitude=1.4),
    case("kv_linear_climb", "sglang-0", "42h", {"memory_pressure"}, "needs a warning 1 h ahead",
         duration=4 * 3600, magnitude=0.45, hold=1800),
)
# Noise the packs must stay quiet on, beside the random restarts, gaps and spikes of every instance.
NOISE = (Incident("restart", ("vllm-5:8000",), start="24h", duration=90),
         Incident("restart", ("vllm-9:8000",), start="40h", duration=90),
         Incident("restart", ("vllm-1:8000",), start="46h", duration=120),
         Incident("restart", ("tgi-2:8000",), start="25h", duration=90),
         Incident("restart", ("sglang-1:8000",), start="44h", duration=120))


@dataclass
class Outcome:
    label: str
    server: str
    detected: bool = False
    delay: pd.Timedelta | None = None
    lead: pd.Timedelta | None = None  # slow climbs: warning before saturation
    by: str = ""


@dataclass
class Score:
    outcomes: list[Outcome] = field(default_factory=list)
    false_alarms: int = 0
    false_alarm_rules: dict[str, int] = field(default_factory=dict)
    false_alarm_servers: dict[str, int] = field(default_factory=dict)  # by the server kind of the host
    false_alarm_findings: list = field(default_factory=list)


def windows_by_host(truth: dict, range_end: pd.Timestamp) -> dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]]:
    found: dict[str, list] = {}
    for record in truth["incidents"]:
        if record["kind"] == "restart":
            continue
        end = pd.Timestamp(record["end"]) if record["end"] else range_end
        found.setdefault(host(record["instance"]), []).append((pd.Timestamp(record["start"]) - LEAD_IN,
                                                               end + AFTERMATH))
    return found


def finding_host(finding) -> str:
    return finding.labels.get("Hostname") or host(finding.instance)


def score(findings, truth: dict, range_end: pd.Timestamp) -> Score:
    result = Score()
    records = [r for r in truth["incidents"] if r["kind"] != "restart"]
    for labelled, record in zip(INCIDENTS, records):
        start = pd.Timestamp(record["start"])
        end = pd.Timestamp(record["end"]) if record["end"] else range_end
        server = server_of(host(record["instance"]))
        outcome = Outcome(f"{record['kind']} {record['instance']} ({record.get('generation') or server})"
                          + (f", {labelled.note}" if labelled.note else ""), server)
        hits = sorted((f for f in findings if finding_host(f) == host(record["instance"])
                       and f.category in labelled.caught_by and f.start >= start - LEAD_IN
                       and f.start < end + AFTERMATH), key=lambda f: f.start)
        if hits:
            first = hits[0]
            outcome.delay, outcome.by = max(first.start - start, pd.Timedelta(0)), first.rule
            if "saturation_at" in record:
                outcome.lead = pd.Timestamp(record["saturation_at"]) - first.start
                outcome.detected = outcome.lead >= REQUIRED_LEAD
            else:
                outcome.detected = True
        result.outcomes.append(outcome)
    windows = windows_by_host(truth, range_end)
    for finding in findings:
        end = finding.end if finding.end is not None else range_end
        excused = any(finding.start < w_end and end > w_start
                      for w_start, w_end in windows.get(finding_host(finding), []))
        if not excused:
            server = server_of(finding_host(finding))
            result.false_alarms += 1
            result.false_alarm_rules[finding.rule] = result.false_alarm_rules.get(finding.rule, 0) + 1
            result.false_alarm_servers[server] = result.false_alarm_servers.get(server, 0) + 1
            result.false_alarm_findings.append(finding)
    return result


def minutes(delta: pd.Timedelta | None) -> str:
    return "-" if delta is None else f"{delta.total_seconds() / 60:.1f}"


def median_delay(s: Score, server: str | None = None) -> float | None:
    """Over sudden incidents (of one server kind if given): a slow climb is judged by its lead before saturation,
    not by a delay."""
    delays = [o.delay.total_seconds() / 60 for o in s.outcomes if o.detected and o.delay is not None
              and o.lead is None and server in (None, o.server)]
    return statistics.median(delays) if delays else None


def figures(s: Score, instance_days: float, server: str | None = None) -> dict:
    """Detected, median delay and false alarms per instance-day, of the whole fleet or of one server kind."""
    outcomes = [o for o in s.outcomes if server in (None, o.server)]
    median = median_delay(s, server)
    false_alarms = s.false_alarms if server is None else s.false_alarm_servers.get(server, 0)
    found = {"detected": sum(o.detected for o in outcomes), "incidents": len(outcomes),
             "median_delay_min": None if median is None else round(median, 1), "false_alarms": false_alarms,
             "false_alarms_per_instance_day": round(false_alarms / instance_days, 2)}
    if server is None:
        found["false_alarms_by_rule"] = dict(sorted(s.false_alarm_rules.items()))
    return found


def summary_line(found: dict) -> str:
    median = found["median_delay_min"]
    line = (f"{found['detected']}/{found['incidents']} detected, median delay (sudden incidents) "
            f"{'-' if median is None else f'{median:.1f}'} min, {found['false_alarms']} false alarms = "
            f"{found['false_alarms_per_instance_day']:.2f} per instance-day")
    by_rule = found.get("false_alarms_by_rule")
    return line + (f" ({', '.join(f'{k} {v}' for k, v in by_rule.items())})" if by_rule else "")


def report(ours: Score, naive: Score, instance_days: dict[str, float]) -> dict:
    """Print the table and the figures (whole fleet, then per server kind); `instance_days` per server kind."""
    width = max(len(o.label) for o in ours.outcomes)
    print(f"{'incident':<{width}}  {'shipped packs':<44}  naive peer (seeds, for: 10m)")
    for mine, peer in zip(ours.outcomes, naive.outcomes):
        def cell(o: Outcome) -> str:
            if o.delay is None:
                return "MISSED"
            text = ("detected" if o.detected else "TOO LATE") + f" {minutes(o.delay):>5} min"
            if o.lead is not None:
                text += f", lead {minutes(o.lead)} min"
            return f"{text} ({o.by})"
        print(f"{mine.label:<{width}}  {cell(mine):<44}  {cell(peer)}")
    for server, kind in SERVER_KINDS.items():
        for category, reason in kind.not_exposed:
            print(f"{server}: no {category} incident: {reason} (not applicable, not a miss)")
    for finding in ours.false_alarm_findings:
        print(f"shipped false alarm: {finding.rule} on {finding_host(finding)} from {finding.start:%Y-%m-%d %H:%M} "
              f"to {'-' if finding.end is None else f'{finding.end:%H:%M}'}")
    summary: dict = {"fleet": {}, "servers": {}}
    print()
    for name, s in (("shipped", ours), ("naive", naive)):
        summary["fleet"][name] = figures(s, sum(instance_days.values()))
        print(f"{name:>8}: {summary_line(summary['fleet'][name])}")
    for server, days in instance_days.items():
        summary["servers"][server] = {name: figures(s, days, server) for name, s in (("shipped", ours),
                                                                                     ("naive", naive))}
        for name in ("shipped", "naive"):
            print(f"{server + ' ' + name:>15}: {summary_line(summary['servers'][server][name])}")
    return summary


def build_history(spec: FleetSpec, data_dir: Path) -> dict:
    """Simulate and backfill into `data_dir` (kept there with its truth.json, reused when the spec matches)."""
    stamp = data_dir / "spec.json"
    key = json.dumps({"spec": repr(spec), "incidents": repr(INCIDENTS), "noise": repr(NOISE)})
    if stamp.exists() and stamp.read_text() == key:
        return json.loads((data_dir / "truth.json").read_text())
    data_dir.mkdir(parents=True, exist_ok=True)
    for old in data_dir.iterdir():  # a different spec: start over
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    with tempfile.TemporaryDirectory(prefix="suite-") as tmp:
        sim = simulate(Path(tmp) / "fleet.om", spec, [c.incident for c in INCIDENTS] + list(NOISE),
                       shards=5, jobs=2)
        backfill(sim.paths, data_dir / "tsdb", jobs=2)
    (data_dir / "truth.json").write_text(json.dumps(sim.truth))
    stamp.write_text(key)
    return sim.truth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=50.0)
    parser.add_argument("--step", default="30s", help="scrape interval and evaluation step")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--spikes-per-day", type=float, default=4.0, help="short load spikes per instance")
    parser.add_argument("--restarts-per-day", type=float, default=0.5, help="random restarts per instance")
    parser.add_argument("--cache", type=Path, default=None, help="keep the backfilled history here and reuse it")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    step = int(pd.Timedelta(args.step).total_seconds())
    spec = FleetSpec(start=(END - pd.Timedelta(hours=args.hours)).timestamp(), end=END.timestamp(),
                     instances=INSTANCES["vllm"], tgi_instances=INSTANCES["tgi"],
                     sglang_instances=INSTANCES["sglang"], step=step, seed=args.seed, generations=tuple(GENERATIONS),
                     spikes_per_day=args.spikes_per_day, restarts_per_day=args.restarts_per_day)
    with tempfile.TemporaryDirectory(prefix="suite-data-") as tmp:
        data_dir = args.cache or Path(tmp)
        truth = build_history(spec, data_dir)
        shipped = load_ruleset([ROOT / p for kind in SERVER_KINDS.values() for p in kind.packs]
                               + [ROOT / "rules" / "playbooks"])
        naive_dir = Path(tmp) / "naive"
        naive_dir.mkdir(exist_ok=True)
        for name, kind in SERVER_KINDS.items():
            (naive_dir / f"{name}.yaml").write_text(kind.naive)
        naive = load_ruleset(naive_dir)
        start = pd.Timestamp(spec.start, unit="s", tz="UTC") + pd.Timedelta(minutes=30)
        with running_prometheus(data_dir=data_dir / "tsdb") as prometheus:
            source = PrometheusSource(prometheus.url)
            results = {name: backtest(ruleset, source, start, END, args.step)
                       for name, ruleset in (("shipped", shipped), ("naive", naive))}
    for name, result in results.items():
        for failed in result.failed:
            print(f"warning: {name} rule {failed.rule} failed: {failed.error}", file=sys.stderr)
    days = (END - start).total_seconds() / 86400
    instance_days = {server: count * days for server, count in INSTANCES.items()}  # a node's GPU counts as vllm
    print(f"fleet: {INSTANCES['vllm']} vLLM instances ({', '.join(GENERATIONS)}; two each) + their GPUs, "
          f"{INSTANCES['tgi']} TGI, {INSTANCES['sglang']} SGLang; {days * 24:g} h judged at {args.step}, "
          f"{len(INCIDENTS)} incidents, {len(truth['restarts'])} restarts, {args.spikes_per_day:g} load spikes per "
          f"instance-day, {sum(instance_days.values()):.1f} instance-days\n")
    summary = report(score(results["shipped"].findings, truth, END), score(results["naive"].findings, truth, END),
                     instance_days)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
