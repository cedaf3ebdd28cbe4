"""Write a simulated fleet's history as one OpenMetrics file with timestamps, plus its ground truth.

The file is family-major (every sample of one metric family is contiguous, as OpenMetrics requires), then
instance, then series, each series in time order. Instances are simulated once up front (a few MB each);
histogram bucket matrices are built one instance at a time while writing, so memory stays bounded by the
latent state, not by the file size.
"""
from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from rules_engine.simulate import catalog, servers
from rules_engine.simulate.fleet import (FleetSpec, InstanceSeries, cumulative, fleet_instances, histogram_counts,
                                         scrape_times, simulate_instance)
from rules_engine.simulate.incidents import Incident, Modifiers, apply_incident, truth_records
from rules_engine.simulate.openmetrics import family_header, series_prefix, timestamp_chars, write_series
from rules_engine.spec.times import rfc3339

COUNTERS = (  # (family without _total, increment key, extra labels)
    ("vllm:num_preemptions", "preemptions", {}),
    ("vllm:prompt_tokens", "prompt_tokens", {}),
    ("vllm:generation_tokens", "generation_tokens", {}),
    ("vllm:request_success", "success_stop", {"finished_reason": "stop"}),
    ("vllm:request_success", "success_length", {"finished_reason": "length"}),
    ("vllm:request_success", "success_abort", {"finished_reason": "abort"}),
    ("vllm:request_success", "success_error", {"finished_reason": "error"}),
    ("vllm:prefix_cache_queries", "prefix_queries", {}),
    ("vllm:prefix_cache_hits", "prefix_hits", {}),
    ("vllm:gpu_prefix_cache_queries", "prefix_queries", {}),
    ("vllm:gpu_prefix_cache_hits", "prefix_hits", {}),
)
HISTOGRAMS = (catalog.TTFT, catalog.ITL, catalog.ITL_LEGACY, catalog.E2E, catalog.QUEUE_TIME)


@dataclass
class Simulation:
    """The result of `simulate`: the fleet's per-instance series (for tests) and the ground truth."""

    spec: FleetSpec
    series: list[InstanceSeries]
    truth: dict
    paths: list[Path] = field(default_factory=list)  # the OpenMetrics file(s) written
    bytes_written: int = 0


def run_fleet(spec: FleetSpec, incidents: Iterable[Incident] = ()) -> tuple[list[InstanceSeries], dict]:
    """Simulate every instance with the incidents applied; returns the series and the ground-truth dict."""
    instances = fleet_instances(spec) + servers.other_instances(spec)
    by_name = {instance.name: instance for instance in instances}
    # An incident wholly outside the range (a scenario run with a shorter --duration) is left out, and said so.
    inside, skipped = [], []
    for incident in incidents:
        start, end = incident.window(spec.start, spec.end)
        (inside if start < spec.end and (end is None or end > spec.start) else skipped).append(incident)
    incidents = inside
    for number, incident in enumerate(incidents):
        missing = [name for name in incident.instances if name not in by_name]
        if missing:
            raise ValueError(f"incident {number} ({incident.kind}): no instance {', '.join(missing)} in a fleet of "
                             f"{spec.instances} (vllm-0:8000 .. vllm-{spec.instances - 1}:8000); use more "
                             f"instances or another scenario")
    servers.check_incidents(incidents, by_name)
    series = []
    for instance in instances:
        times = scrape_times(spec, instance)
        mods = Modifiers(times.size)
        for incident in incidents:
            if instance.name in incident.instances:
                apply_incident(mods, times, incident, spec.start, spec.end)
        series.append(simulate_instance(spec, instance, times, mods) if instance.server == "vllm"
                      else servers.simulate_server_instance(spec, instance, times, mods))
    models = {instance.name: instance.model.name for instance in instances}
    generations = {instance.name: instance.generation for instance in instances}
    truth = {
        "generator": "rules-engine simulate",
        "seed": spec.seed,
        "start": rfc3339(spec.start, "auto"),
        "end": rfc3339(spec.end, "auto"),
        "step_seconds": spec.step,
        "instances": [{"instance": i.name, "model_name": i.model.name, "generation": i.generation,
                       "legacy_metric_names": i.legacy} for i in instances],
        "incidents": [record for incident in incidents
                      for record in truth_records(incident, spec.start, spec.end, models, generations)],
        "skipped_incidents": [{"kind": i.kind, "instances": list(i.instances), "start": str(i.start)}
                              for i in skipped],
        "restarts": [{"instance": s.instance.name, "at": rfc3339(float(at), "auto")}
                     for s in series for at in s.times[s.restart].tolist()],
    }
    servers.annotate_truth(truth, instances)
    return series, truth


def _cache_config_labels(series: InstanceSeries) -> dict[str, str]:
    model = series.instance.model
    labels = series.instance.labels()
    labels.update({"block_size": str(model.block_size), "cache_dtype": "auto", "enable_prefix_caching": "True",
                   "gpu_memory_utilization": "0.9", "num_gpu_blocks": str(model.num_gpu_blocks),
                   "swap_space": "4"})
    return labels


def write_history(out: BinaryIO, series: list[InstanceSeries]) -> int:
    """Write every family of every instance to `out`; returns the bytes written."""
    others, series = series, [s for s in series if s.instance.server == "vllm"]
    written = 0
    stamps = {s.instance.name: timestamp_chars(s.times[s.present]) for s in series}

    def header(family: str, kind: str, help_text: str) -> None:
        nonlocal written
        block = family_header(family, kind, help_text)
        out.write(block)
        written += len(block)

    def gauge(family: str, help_text: str, values_of, decimals: int, members: list[InstanceSeries]) -> None:
        nonlocal written
        if not members:
            return
        header(family, "gauge", help_text)
        for s in members:
            written += write_series(out, series_prefix(family, s.instance.labels()), values_of(s)[s.present],
                                    stamps[s.instance.name], decimals)

    gauge(catalog.RUNNING, "Number of requests in model execution batches.", lambda s: s.running, 0, series)
    gauge(catalog.WAITING, "Number of requests waiting to be processed.", lambda s: s.waiting, 0, series)
    gauge(catalog.KV_USAGE, "KV-cache usage. 1 means 100 percent usage.", lambda s: s.kv_usage, 6,
          [s for s in series if catalog.KV_USAGE in _exposed(s)])
    gauge(catalog.KV_USAGE_LEGACY, "GPU KV-cache usage. 1 means 100 percent usage.", lambda s: s.kv_usage, 6,
          [s for s in series if catalog.KV_USAGE_LEGACY in _exposed(s)])
    header(catalog.CACHE_CONFIG_INFO, "gauge", "Information of the LLMEngine CacheConfig")
    for s in series:
        written += write_series(out, series_prefix(catalog.CACHE_CONFIG_INFO, _cache_config_labels(s)),
                                np.ones(int(s.present.sum())), stamps[s.instance.name])

    for family in dict.fromkeys(name for name, _, _ in COUNTERS):
        members = [s for s in series if _counter_exposed(s, family)]
        if not members:
            continue
        header(family, "counter", "")
        for s in members:
            for name, key, extra in COUNTERS:
                if name != family or (key == "success_error" and not _generation(s).error_reason):
                    continue
                values = cumulative(s.increments[key], s.restart)
                if key.startswith("prefix_") and not _generation(s).prefix_unit_tokens:
                    values = values // s.instance.model.block_size  # 0.8.5 counted blocks
                values = values[s.present]
                written += write_series(out, series_prefix(f"{family}_total", {**s.instance.labels(), **extra}),
                                        values, stamps[s.instance.name])

    for family in HISTOGRAMS:
        members = [s for s in series if family in s.histograms]
        if not members:
            continue
        header(family, "histogram", "")
        bounds = catalog.HISTOGRAM_BUCKETS[family]
        les = [catalog.le_label(b) for b in bounds] + ["+Inf"]
        for s in members:
            buckets, count, sums = histogram_counts(s.histograms[family], bounds, s.restart)
            labels = s.instance.labels()
            ts = stamps[s.instance.name]
            for column, le in enumerate(les):
                written += write_series(out, series_prefix(f"{family}_bucket", {**labels, "le": le}),
                                        buckets[s.present, column], ts)
            written += write_series(out, series_prefix(f"{family}_count", labels), count[s.present], ts)
            written += write_series(out, series_prefix(f"{family}_sum", labels), sums[s.present], ts, 3)
    gpu_members = [s for s in series if s.gpu]
    for family in catalog.GPU_GAUGES if gpu_members else ():
        header(family, "gauge", "")
        for s in gpu_members:
            written += write_series(out, series_prefix(family, s.instance.gpu_labels()), s.gpu[family][s.present],
                                    stamps[s.instance.name])
    written += servers.write_other_servers(out, others)
    out.write(b"# EOF\n")
    return written + 6


def _generation(series: InstanceSeries) -> catalog.Generation:
    return catalog.GENERATIONS[series.instance.generation]


def _exposed(series: InstanceSeries) -> set[str]:
    return _generation(series).names()


def _counter_exposed(series: InstanceSeries, family: str) -> bool:
    """Counters outside the renamed families exist in every generation; renamed ones only where listed."""
    renamed = {catalog.PREFIX_QUERIES, catalog.PREFIX_HITS, catalog.PREFIX_QUERIES_LEGACY, catalog.PREFIX_HITS_LEGACY}
    total = f"{family}_total"
    return total not in renamed or total in _exposed(series)


def shard_paths(out_path: str | Path, shards: int) -> list[Path]:
    """`fleet.om` itself for one shard; `fleet.0.om`, `fleet.1.om`, ... for several."""
    out_path = Path(out_path)
    if shards == 1:
        return [out_path]
    return [out_path.with_name(f"{out_path.stem}.{k}{out_path.suffix}") for k in range(shards)]


# The series of the simulation being written, for forked shard writers (inherited, never pickled).
_FORKED_SERIES: list[InstanceSeries] = []


def _write_shard(path: Path, members: list[int]) -> int:
    with open(path, "wb", buffering=1 << 20) as out:
        return write_history(out, [_FORKED_SERIES[i] for i in members])


def simulate(out_path: str | Path, spec: FleetSpec, incidents: Iterable[Incident] = (),
             truth_path: str | Path | None = None, shards: int = 1, jobs: int = 1) -> Simulation:
    """Simulate `spec` with `incidents`, write the OpenMetrics file(s) and, if asked, the truth JSON.

    With `shards` > 1 the instances are split over that many files (see `shard_paths`), each a complete
    OpenMetrics document: promtool holds its whole input in memory, so a week of a 50-instance fleet (16 GB of
    text) is loaded in pieces, two at a time on two cores. `jobs` > 1 writes shards in that many forked
    processes (text formatting is CPU-bound; on a slow disk the disk stays the limit).
    """
    if shards < 1 or jobs < 1:
        raise ValueError(f"shards and jobs must be >= 1, got {shards} and {jobs}")
    series, truth = run_fleet(spec, incidents)
    paths = shard_paths(out_path, min(shards, len(series)))
    assignments = [chunk.tolist() for chunk in np.array_split(np.arange(len(series)), len(paths))]
    if jobs > 1 and len(paths) > 1:
        global _FORKED_SERIES
        _FORKED_SERIES = series
        try:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=min(jobs, len(paths)), mp_context=context) as pool:
                written = sum(pool.map(_write_shard, paths, assignments))
        finally:
            _FORKED_SERIES = []
    else:
        written = 0
        for path, members in zip(paths, assignments):
            with open(path, "wb", buffering=1 << 20) as out:
                written += write_history(out, [series[i] for i in members])
    if truth_path is not None:
        Path(truth_path).write_text(json.dumps(truth, indent=2) + "\n")
    return Simulation(spec=spec, series=series, truth=truth, paths=paths, bytes_written=written)
