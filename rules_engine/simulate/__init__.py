"""Simulated vLLM fleet history: OpenMetrics with timestamps for promtool backfill, plus ground truth.

    from rules_engine.simulate import FleetSpec, Incident, simulate
    sim = simulate("fleet.om", FleetSpec(start=t0, end=t1, instances=8, seed=1),
                   [Incident("queue_buildup", ("vllm-2:8000",), start="26h", duration=2400)], truth_path="truth.json")
    sim.truth["incidents"]  # kind, instance, start, end, expected_signals, category
"""
from rules_engine.simulate.fleet import FleetSpec, Instance, InstanceSeries, ModelProfile, MODELS
from rules_engine.simulate.history import Simulation, run_fleet, simulate
from rules_engine.simulate.incidents import KINDS, Incident, IncidentError, load_incidents
from rules_engine.simulate.scenarios import SCENARIOS, Scenario

__all__ = ["FleetSpec", "Incident", "IncidentError", "Instance", "InstanceSeries", "KINDS", "MODELS",
           "ModelProfile", "SCENARIOS", "Scenario", "Simulation", "load_incidents", "run_fleet", "simulate"]
