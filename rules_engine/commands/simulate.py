"""`rules-engine simulate`: write a simulated vLLM fleet history (OpenMetrics) and its ground truth."""
from __future__ import annotations

import time
from pathlib import Path

import click

from rules_engine.simulate.catalog import GENERATIONS
from rules_engine.simulate.history import simulate as simulate_history
from rules_engine.simulate.incidents import instance_name
from rules_engine.simulate.incidents import load_incidents
from rules_engine.simulate.scenarios import SCENARIOS
from rules_engine.simulate.timeparse import parse_duration, parse_time


def _duration(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _time(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _generations(ctx, param, values):
    """`--generation 0.9.2-0.10.1 --generation vllm-3=0.15+` -> FleetSpec fields."""
    cycle, pinned = [], []
    for value in values:
        instance, _, generation = value.rpartition("=")
        if generation not in GENERATIONS:
            raise click.BadParameter(f"{generation!r} is not one of {', '.join(GENERATIONS)}")
        if instance:
            pinned.append((instance_name(instance), generation))
        else:
            cycle.append(generation)
    fields = {"instance_generations": tuple(pinned)}
    if cycle:
        fields["generations"] = tuple(cycle)
    return fields


@click.command("simulate")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="OpenMetrics file to write (load it with `promtool tsdb create-blocks-from openmetrics`).")
@click.option("--instances", type=click.IntRange(min=1), default=None,
              help="Number of vLLM instances (default: the scenario's, 8).")
@click.option("--duration", callback=_duration, default=None, help="Length of history, e.g. 6h, 2d, 7d "
              "(default: the scenario's, 2d).")
@click.option("--end", callback=_time, default=None,
              help="End of the history: RFC 3339 or unix seconds (default: now, rounded down to the step).")
@click.option("--step", callback=_duration, default="30s", show_default=True, help="Scrape interval.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed; same seed, same file.")
@click.option("--scenario", type=click.Choice(sorted(SCENARIOS)), default="demo", show_default=True,
              help="Named incident set and fleet shape; `none` injects no incidents.")
@click.option("--incidents", "incidents_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="YAML incident list, injected in addition to the scenario's.")
@click.option("--legacy-fraction", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Share of instances on the oldest generation (0.8.5-0.9.1: vllm:gpu_cache_usage_perc, "
                   "vllm:gpu_prefix_cache_*, vllm:time_per_output_token_seconds only).")
@click.option("--generation", "generations", multiple=True, callback=_generations, metavar="[INSTANCE=]GEN",
              help=f"vLLM generation: GEN alone adds to the list assigned round-robin (a mixed fleet), "
                   f"INSTANCE=GEN pins one instance. Repeatable. GEN: {', '.join(GENERATIONS)} (default 0.15+).")
@click.option("--shards", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split the instances over this many files (OUT's stem + .0, .1, ...): promtool holds a whole "
                   "file in memory, so large fleets load in pieces.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Write shards in this many processes.")
@click.option("--truth", "truth_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the ground truth (incidents, restarts, instances) as JSON here.")
def simulate(out_path, instances, duration, end, step, seed, scenario, incidents_path, legacy_fraction,
             generations, shards, jobs, truth_path):
    """Write a simulated vLLM fleet history with injected incidents as OpenMetrics with timestamps.

    Load it with `promtool tsdb create-blocks-from openmetrics --max-block-duration=486h OUT DATA_DIR`.
    An incident file is a YAML list (or a mapping with `incidents:`) of entries like

    \b
      - kind: queue_buildup      # queue_buildup | kv_pressure | ttft_spike | itl_regression
                                 # | kv_linear_climb | error_burst | client_aborts | low_cache_hit
                                 # | throughput_drop | batch_cap | gpu_xid | gpu_memory_leak
                                 # | restart
        instance: vllm-2:8000    # or `instances: [2, vllm-3]`
        start: 26h               # offset from the start, or RFC 3339 / unix seconds
        duration: 30m            # default per kind; itl_regression lasts to the end
        magnitude: 1.15          # meaning per kind: see rules_engine/simulate/incidents.py
    """
    chosen = SCENARIOS[scenario]
    if int(step) != step or step < 1:
        raise click.BadParameter("must be a whole number of seconds", param_hint="--step")
    step = int(step)
    end = float(int(time.time() if end is None else end) // step * step)
    try:
        spec, incidents = chosen.fleet(end, seed=seed, step=step, instances=instances, duration=duration,
                                       legacy_fraction=legacy_fraction, **generations)
        if incidents_path is not None:
            incidents += load_incidents(incidents_path)
        began = time.perf_counter()
        result = simulate_history(out_path, spec, incidents, truth_path=truth_path, shards=shards,
                                  jobs=jobs)
    except ValueError as error:  # IncidentError included: it names file:line
        raise click.ClickException(str(error)) from None
    samples = sum(int(s.present.sum()) for s in result.series)
    hours = (spec.end - spec.start) / 3600
    click.echo(f"wrote {', '.join(str(p) for p in result.paths)}: {spec.instances} instances, "
               f"{hours:g}h at {step}s, "
               f"{samples} scrapes, {result.bytes_written / 1e6:.1f} MB in {time.perf_counter() - began:.1f}s; "
               f"{len(result.truth['incidents'])} incident record(s)"
               + (f" ({len(result.truth['skipped_incidents'])} incident(s) outside the range skipped)"
                  if result.truth["skipped_incidents"] else "")
               + (f", truth in {truth_path}" if truth_path else ""))
