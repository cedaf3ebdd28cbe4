"""`rules-engine simulate`: write a simulated vLLM (and TGI / SGLang) fleet history (OpenMetrics) and its ground
truth, or serve the fleet live (`--serve`) for Prometheus to scrape."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import click

from rules_engine.simulate.catalog import GENERATIONS
from rules_engine.simulate.history import simulate as simulate_history
from rules_engine.simulate.incidents import instance_name
from rules_engine.simulate.incidents import load_incidents
from rules_engine.simulate.live import LiveFleet, make_server, schedule
from rules_engine.simulate.scenarios import SCENARIOS
from rules_engine.simulate.timeparse import parse_duration, parse_time
from rules_engine.spec.times import rfc3339


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
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="OpenMetrics file to write (load it with `promtool tsdb create-blocks-from openmetrics`); "
                   "with --serve, the history up to the serve start.")
@click.option("--instances", type=click.IntRange(min=0), default=None,
              help="Number of vLLM instances (default: the scenario's: 8, or 2 in `mixed`).")
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
@click.option("--tgi-instances", type=click.IntRange(min=0), default=None,
              help="TGI instances (tgi-0:8000, ...) beside the vLLM ones (default: the scenario's).")
@click.option("--sglang-instances", type=click.IntRange(min=0), default=None,
              help="SGLang instances (sglang-0:8000, ...) beside the vLLM ones (default: the scenario's).")
@click.option("--shards", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split the instances over this many files (OUT's stem + .0, .1, ...): promtool holds a whole "
                   "file in memory, so large fleets load in pieces.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Write shards in this many processes.")
@click.option("--truth", "truth_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the ground truth (incidents, restarts, instances) as JSON here.")
@click.option("--serve", "serve_address", default=None, metavar="HOST:PORT",
              help="Serve the fleet live at http://HOST:PORT/metrics (one scrape answers every instance, each "
                   "with its own `instance` label: scrape with honor_labels: true) from now on, continuing the "
                   "history of --duration before now (written to --out for backfill). --incidents offsets then "
                   "count from now. Also /truth (ground truth JSON) and /-/ready.")
@click.option("--horizon", callback=_duration, default="1d", show_default=True,
              help="With --serve: how long after now the live fleet is simulated (then /metrics answers 503).")
@click.option("--every", callback=_duration, default=None,
              help="With --serve: repeat the --incidents every this long (an incident schedule).")
def simulate(out_path, instances, duration, end, step, seed, scenario, incidents_path, legacy_fraction,
             generations, tgi_instances, sglang_instances, shards, jobs, truth_path, serve_address, horizon, every):
    """Write a simulated vLLM fleet history with injected incidents as OpenMetrics with timestamps, or serve it
    live (--serve).

    With --tgi-instances / --sglang-instances (or --scenario mixed) the fleet also has TGI and SGLang instances,
    each exposing its own server's metric names, labels and buckets; incidents name them as tgi-1, sglang-2.

    Load it with `promtool tsdb create-blocks-from openmetrics --max-block-duration=486h OUT DATA_DIR`.
    An incident file is a YAML list (or a mapping with `incidents:`) of entries like

    \b
      - kind: queue_buildup      # queue_buildup | kv_pressure | ttft_spike | itl_regression
                                 # | kv_linear_climb | error_burst | client_aborts | low_cache_hit
                                 # | throughput_drop | batch_cap | gpu_xid | gpu_memory_leak
                                 # | restart
        instance: vllm-2:8000    # or `instances: [2, vllm-3, tgi-0, sglang-1]`
        start: 26h               # offset from the start, or RFC 3339 / unix seconds
        duration: 30m            # default per kind; itl_regression lasts to the end
        magnitude: 1.15          # meaning per kind: see rules_engine/simulate/incidents.py
    """
    chosen = SCENARIOS[scenario]
    if int(step) != step or step < 1:
        raise click.BadParameter("must be a whole number of seconds", param_hint="--step")
    step = int(step)
    if serve_address is not None:
        _serve(serve_address, chosen, out_path, instances, duration, step, seed, incidents_path, legacy_fraction,
               truth_path, horizon, every, tgi_instances=tgi_instances, sglang_instances=sglang_instances,
               **generations)
        return
    if out_path is None:
        raise click.UsageError("give --out (a history file), --serve (a live fleet), or both")
    end = float(int(time.time() if end is None else end) // step * step)
    try:
        spec, incidents = chosen.fleet(end, seed=seed, step=step, instances=instances, duration=duration,
                                       legacy_fraction=legacy_fraction, tgi_instances=tgi_instances,
                                       sglang_instances=sglang_instances, **generations)
        if incidents_path is not None:
            incidents += load_incidents(incidents_path)
        began = time.perf_counter()
        result = simulate_history(out_path, spec, incidents, truth_path=truth_path, shards=shards,
                                  jobs=jobs)
    except ValueError as error:  # IncidentError included: it names file:line
        raise click.ClickException(str(error)) from None
    samples = sum(int(s.present.sum()) for s in result.series)
    hours = (spec.end - spec.start) / 3600
    others = "".join(f" + {count} {name}" for name, count in (("TGI", spec.tgi_instances),
                                                                ("SGLang", spec.sglang_instances)) if count)
    click.echo(f"wrote {', '.join(str(p) for p in result.paths)}: {spec.instances} instances{others}, "
               f"{hours:g}h at {step}s, "
               f"{samples} scrapes, {result.bytes_written / 1e6:.1f} MB in {time.perf_counter() - began:.1f}s; "
               f"{len(result.truth['incidents'])} incident record(s)"
               + (f" ({len(result.truth['skipped_incidents'])} incident(s) outside the range skipped)"
                  if result.truth["skipped_incidents"] else "")
               + (f", truth in {truth_path}" if truth_path else ""))


def _serve(address, chosen, out_path, instances, duration, step, seed, incidents_path, legacy_fraction, truth_path,
           horizon, every, **servers) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"{address!r} is not HOST:PORT", param_hint="--serve")
    now = time.time()
    history_end = float(int(now) // step * step)
    history = parse_duration(chosen.duration) if duration is None else duration
    try:
        spec, incidents = chosen.fleet(history_end + horizon, seed=seed, step=step, instances=instances,
                                       duration=history + horizon, legacy_fraction=legacy_fraction, **servers)
        if incidents_path is not None:
            incidents += schedule(load_incidents(incidents_path), now, spec.end, every)
        fleet = LiveFleet(spec, incidents)
        server = make_server(fleet, host, int(port))
    except (ValueError, OSError) as error:  # IncidentError included: it names file:line
        raise click.ClickException(str(error)) from None
    if truth_path is not None:
        truth_path.write_text(json.dumps(fleet.truth, indent=2) + "\n")
    if out_path is not None:
        written = fleet.history_until(out_path, now)
        click.echo(f"wrote {out_path}: history {rfc3339(spec.start, 'auto')} .. {rfc3339(now, 'auto')}, "
                   f"{written / 1e6:.1f} MB")
    live = [i for i in fleet.truth["incidents"] if i["end"] is None or parse_time(i["end"]) > now]
    others = "".join(f" + {count} {name}" for name, count in (("TGI", spec.tgi_instances),
                                                                ("SGLang", spec.sglang_instances)) if count)
    click.echo(f"serving {spec.instances} instances{others} live at http://{host}:{server.server_address[1]}/metrics "
               f"until {rfc3339(spec.end, 'auto')} ({len(live)} incident record(s) from now on)", nl=True)
    for record in live:
        click.echo(f"  {record['start']} {record['kind']} on {record['instance']}")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C: close the socket
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
