"""TGI and SGLang instances beside the vLLM ones: a mixed fleet.

Each server kind is a module (`tgi`, `sglang`) with its `FAMILIES`, a `derive` that turns the shared load model's
state into that server's exposition, `EXPECTED_SIGNALS` per incident kind and `UNSUPPORTED_INCIDENTS`. This
module is the only place `history.py` calls for them: which instances exist, how one is simulated, what the truth
file says about them and how their families are written.
"""
from __future__ import annotations

from typing import BinaryIO, Iterable

import numpy as np

from rules_engine.simulate import catalog, sglang, tgi
from rules_engine.simulate.fleet import FleetSpec, Instance, InstanceSeries, simulate_instance
from rules_engine.simulate.incidents import Incident, Modifiers
from rules_engine.simulate.openmetrics import timestamp_chars
from rules_engine.simulate.server_series import ServerSeries, write_families

SERVERS = {"tgi": tgi, "sglang": sglang}


def other_instances(spec: FleetSpec) -> list[Instance]:
    """The fleet's TGI then SGLang instances (`tgi-0:8000`, ..., `sglang-0:8000`, ...), after the vLLM ones.

    Models are assigned round-robin per server kind; jitter is drawn from its own stream, so adding TGI or SGLang
    instances leaves the vLLM instances' histories unchanged."""
    rng = np.random.default_rng([spec.seed, 1])
    instances, index = [], spec.instances
    for server, count in (("tgi", spec.tgi_instances), ("sglang", spec.sglang_instances)):
        scales = rng.uniform(0.85, 1.15, count)
        phases = rng.uniform(-1.5, 1.5, count)
        offsets = rng.integers(0, spec.step, count)
        for k in range(count):
            instances.append(Instance(index=index, name=f"{server}-{k}:8000", model=spec.models[k % len(spec.models)],
                                      generation=catalog.NEWEST, scale=float(scales[k]), phase_hours=float(phases[k]),
                                      scrape_offset=int(offsets[k]), server=server))
            index += 1
    return instances


def check_incidents(incidents: Iterable[Incident], by_name: dict[str, Instance]) -> None:
    """Refuse an incident a server cannot show (TGI has no prefix-cache metric)."""
    for number, incident in enumerate(incidents):
        for name in incident.instances:
            server = by_name[name].server
            reason = SERVERS[server].UNSUPPORTED_INCIDENTS.get(incident.kind) if server in SERVERS else None
            if reason:
                raise ValueError(f"incident {number} ({incident.kind}) on {name}: {reason}, so it cannot be simulated")


def simulate_server_instance(spec: FleetSpec, instance: Instance, times: np.ndarray, mods: Modifiers
                             ) -> ServerSeries:
    """The shared load model, exposed as the instance's server exposes it."""
    return SERVERS[instance.server].derive(spec, simulate_instance(spec, instance, times, mods), mods)


def annotate_truth(truth: dict, instances: Iterable[Instance]) -> None:
    """Say which server each instance runs, and name the signals of TGI/SGLang incidents in their own terms."""
    servers = {instance.name: instance.server for instance in instances}
    for record in truth["instances"]:
        record["server"] = servers[record["instance"]]
        if record["server"] != "vllm":  # the load model's generation is a placeholder for them
            record["generation"] = record["legacy_metric_names"] = None
    for record in truth["incidents"]:
        server = record["server"] = servers[record["instance"]]
        if server in SERVERS:
            record["expected_signals"] = list(SERVERS[server].EXPECTED_SIGNALS.get(record["kind"], ()))
            record["generation"] = None
            if server == "tgi":
                record["model_name"] = None  # TGI series carry no model label


def write_other_servers(out: BinaryIO, series: list[InstanceSeries]) -> int:
    """Write the TGI and SGLang families of `series` (vLLM instances in it are skipped); returns bytes written."""
    written = 0
    for name, module in SERVERS.items():
        members = [s for s in series if s.instance.server == name]
        if members:
            stamps = {s.instance.name: timestamp_chars(s.times[s.present]) for s in members}
            written += write_families(out, module.FAMILIES, members, stamps)
    return written
