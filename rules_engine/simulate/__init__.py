"""Simulated vLLM fleet history: OpenMetrics with timestamps for promtool backfill, plus ground truth.
TGI and SGLang instances can join it (`FleetSpec(tgi_instances=3, sglang_instances=3)`, simulate/servers.py),
each exposing its own server's names, labels and buckets.

    from rules_engine.simulate import SCENARIOS, FleetSpec, Incident, simulate
    spec = FleetSpec(start=end - 2 * 86400, end=end, instances=8, seed=1)
    sim = simulate("fleet.om", spec, [Incident("queue_buildup", ("vllm-2:8000",), start="26h", duration=1800)],
                   truth_path="truth.json")          # shards=N, jobs=2 for large fleets
    sim.paths                     # the OpenMetrics file(s) written
    sim.truth["incidents"]        # kind, category, instance, model_name, start, end, magnitude, expected_signals
    spec, incidents = SCENARIOS["demo"].fleet(end, seed=0)   # the named demo scenario

`tests/processes.py` loads the files (`backfill`) and serves them (`running_prometheus`, `simulated_prometheus`).
"""
from rules_engine.simulate.fleet import MODELS, FleetSpec, Instance, InstanceSeries, ModelProfile
from rules_engine.simulate.history import Simulation, run_fleet, simulate
from rules_engine.simulate.incidents import KINDS, Incident, IncidentError, load_incidents
from rules_engine.simulate.scenarios import SCENARIOS, Scenario

__all__ = ["FleetSpec", "Incident", "IncidentError", "Instance", "InstanceSeries", "KINDS", "MODELS",
           "ModelProfile", "SCENARIOS", "Scenario", "Simulation", "load_incidents", "run_fleet", "simulate"]
