"""Named scenarios: a fleet shape plus an incident list, used for the shipped demo snapshot and tests."""
from __future__ import annotations

from dataclasses import dataclass

from rules_engine.simulate.catalog import GENERATIONS, NEWEST
from rules_engine.simulate.fleet import FleetSpec
from rules_engine.simulate.incidents import Incident
from rules_engine.simulate.timeparse import parse_duration


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    instances: int
    duration: str
    incidents: tuple[Incident, ...]
    generations: tuple[str, ...] = (NEWEST,)  # vLLM generations, assigned to the instances round-robin
    tgi_instances: int = 0
    sglang_instances: int = 0

    def fleet(self, end: float, seed: int = 0, step: int = 30, instances: int | None = None,
              duration: float | None = None, tgi_instances: int | None = None, sglang_instances: int | None = None,
              **spec_fields) -> tuple[FleetSpec, list[Incident]]:
        """The FleetSpec and incident list of this scenario ending at `end` (unix seconds)."""
        length = parse_duration(self.duration) if duration is None else duration
        spec_fields = {"generations": self.generations, **spec_fields}
        spec = FleetSpec(start=end - length, end=end, instances=self.instances if instances is None else instances,
                         step=step, seed=seed,
                         tgi_instances=self.tgi_instances if tgi_instances is None else tgi_instances,
                         sglang_instances=self.sglang_instances if sglang_instances is None else sglang_instances,
                         **spec_fields)
        return spec, list(self.incidents)


# One incident of each kind, on different instances, spread over the second day so each stands alone
# (the first day is a clean baseline for regression and trend rules).
DEMO_INCIDENTS = (
    Incident("queue_buildup", ("vllm-2:8000",), start="26h", duration=30 * 60, magnitude=1.15),
    Incident("ttft_spike", ("vllm-1:8000",), start="29h", duration=20 * 60, magnitude=6.0),
    Incident("kv_pressure", ("vllm-5:8000",), start="31h", duration=30 * 60, magnitude=0.97),
    Incident("error_burst", ("vllm-4:8000",), start="34h", duration=20 * 60, magnitude=0.3),
    Incident("itl_regression", ("vllm-3:8000",), start="36h", magnitude=1.4),
    Incident("kv_linear_climb", ("vllm-6:8000",), start="38h", duration=4 * 3600, magnitude=0.45, hold=1800),
    Incident("low_cache_hit", ("vllm-7:8000",), start="40h", duration=2 * 3600, magnitude=0.2),
    Incident("gpu_xid", ("vllm-0:8000",), start="42h", duration=900, magnitude=48),
    Incident("restart", ("vllm-0:8000",), start="44h", duration=90),
)

# A mixed fleet: the TGI and SGLang incidents each server can show, on day 2 (TGI has no prefix-cache metric).
MIXED_INCIDENTS = (
    Incident("queue_buildup", ("tgi-1:8000",), start="26h", duration=3600, magnitude=1.3),
    Incident("kv_pressure", ("tgi-2:8000",), start="29h", duration=40 * 60),
    Incident("ttft_spike", ("tgi-2:8000",), start="33h", duration=30 * 60, magnitude=8.0),
    Incident("error_burst", ("tgi-0:8000",), start="36h", duration=30 * 60),
    Incident("queue_buildup", ("sglang-1:8000",), start="27h", duration=45 * 60, magnitude=1.15),
    Incident("kv_pressure", ("sglang-2:8000",), start="30h", duration=40 * 60),
    Incident("low_cache_hit", ("sglang-0:8000",), start="32h", duration=3 * 3600, magnitude=0.1),
    Incident("itl_regression", ("sglang-1:8000",), start="40h", magnitude=3.0),
    Incident("error_burst", ("sglang-2:8000",), start="37h", duration=30 * 60),
)

SCENARIOS = {
    "demo": Scenario("demo", "8 instances x 2 days, every vLLM generation, one incident of each kind on day 2", 8,
                     "2d", DEMO_INCIDENTS, tuple(GENERATIONS)),
    "none": Scenario("none", "no incidents: background load, noise, spikes, random restarts and gaps only", 8,
                     "2d", ()),
    "demo-mixed": Scenario("demo-mixed", "the demo's 8 vLLM instances (every generation, with GPUs) plus 3 TGI and 3 "
                           "SGLang instances x 2 days, the demo's and the mixed scenario's incidents on day 2", 8,
                           "2d", DEMO_INCIDENTS + MIXED_INCIDENTS, tuple(GENERATIONS), tgi_instances=3,
                           sglang_instances=3),
    "mixed": Scenario("mixed", "2 vLLM, 3 TGI and 3 SGLang instances x 2 days, TGI and SGLang incidents on day 2", 2,
                      "2d", MIXED_INCIDENTS, tgi_instances=3, sglang_instances=3),
}
