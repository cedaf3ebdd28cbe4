"""Injected incidents: the list format (YAML), how each kind bends an instance's load model, and ground truth.

An incident names a kind, the instance(s) it hits, when it starts (an offset from the simulated range's start
such as `26h`, or an absolute RFC 3339 / unix time), how long it lasts and a magnitude whose meaning depends on
the kind (see KINDS). Effects are written into per-step modifier arrays that the load model in `fleet.py`
reads, so an incident changes the *cause* (load, prefill speed, decode speed, KV occupancy, aborts, prefix
reuse) and the observed metrics follow from the model, coherently.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rules_engine.simulate import catalog
from rules_engine.simulate.timeparse import parse_duration, parse_time
from rules_engine.spec.bounded_yaml import compose_documents
from rules_engine.spec.times import rfc3339


@dataclass(frozen=True)
class KindSpec:
    default_magnitude: float
    default_duration: float | None  # None: lasts to the end of the range unless a duration is given
    category: str  # DESIGN.md's finding category this incident should be reported under
    expected_signals: tuple[str, ...]
    magnitude_meaning: str


KINDS: dict[str, KindSpec] = {
    "queue_buildup": KindSpec(1.15, 1800, "queue_buildup",
                              (catalog.WAITING, catalog.QUEUE_TIME, catalog.TTFT, catalog.E2E),
                              "arrival rate as a multiple of the instance's capacity (>1 overloads it)"),
    "kv_pressure": KindSpec(0.97, 1800, "memory_pressure", (catalog.KV_USAGE, catalog.PREEMPTIONS, catalog.ITL),
                            "KV-cache usage held at least this high (preemptions start above 0.9)"),
    "ttft_spike": KindSpec(5.0, 900, "high_latency", (catalog.TTFT, catalog.E2E),
                           "factor on prefill time (TTFT)"),
    "itl_regression": KindSpec(1.5, None, "high_latency", (catalog.ITL, catalog.E2E),
                               "factor on the mean inter-token latency from the deploy on"),
    "kv_linear_climb": KindSpec(0.5, 4 * 3600, "memory_pressure", (catalog.KV_USAGE, catalog.PREEMPTIONS),
                                "KV-cache usage at the start; it climbs linearly to 1.0 at start+duration"),
    "error_burst": KindSpec(0.3, 1200, "error_rate", (catalog.REQUEST_SUCCESS,),
                            "share of requests failing inside the engine (finished_reason=error from 0.13, "
                            "abort before)"),
    "client_aborts": KindSpec(0.3, 1200, "error_rate", (catalog.REQUEST_SUCCESS,),
                              "share of requests the clients abort (finished_reason=abort)"),
    "throughput_drop": KindSpec(0.4, 1800, "low_throughput",
                                (catalog.GENERATION_TOKENS, catalog.WAITING, catalog.GPU_UTIL),
                                "factor on the instance's speed: capacity x m, prefill and ITL / m (a throttled GPU)"),
    "batch_cap": KindSpec(3.0, 1800, "batch_size_suboptimal", (catalog.RUNNING, catalog.WAITING),
                          "requests the engine runs at most (a --max-num-seqs set far too low by a deploy)"),
    "gpu_xid": KindSpec(48.0, 900, "error_rate", (catalog.GPU_XID, catalog.GENERATION_TOKENS, catalog.WAITING),
                        "the XID error code DCGM reports; the engine hangs (serves nothing) meanwhile"),
    "gpu_memory_leak": KindSpec(1.0, 3 * 3600, "memory_pressure", (catalog.GPU_FB_FREE, catalog.REQUEST_SUCCESS),
                                "share of the framebuffer vLLM left free that a leak takes by the end"),
    "low_cache_hit": KindSpec(0.2, 2 * 3600, "cache_inefficiency", (catalog.PREFIX_HITS,),
                              "factor on the prefix-cache hit rate"),
    "restart": KindSpec(0.0, 60, "restart", (),
                        "unused; the instance is down for the duration, then its counters restart at 0"),
}

KV_CLIMB_HOLD = 1800.0  # how long a climbed KV cache stays saturated before it recovers


class IncidentError(ValueError):
    """A bad incident list entry; the message names the file, line and field."""


@dataclass(frozen=True)
class Incident:
    kind: str
    instances: tuple[str, ...]
    start: str | float  # offset duration text ("26h") or absolute time (RFC 3339 text / unix seconds)
    duration: float | None = None  # seconds; None: the kind's default
    magnitude: float | None = None
    hold: float | None = None  # kv_linear_climb only: seconds saturated after the climb

    @property
    def spec(self) -> KindSpec:
        return KINDS[self.kind]

    def resolved_magnitude(self) -> float:
        return self.spec.default_magnitude if self.magnitude is None else float(self.magnitude)

    def window(self, range_start: float, range_end: float) -> tuple[float, float | None]:
        """Absolute [start, end) in unix seconds; end None when the effect lasts past the range."""
        start = resolve_start(self.start, range_start)
        duration = self.duration if self.duration is not None else self.spec.default_duration
        if duration is None:
            return start, None
        return start, start + duration


def resolve_start(start: str | float, range_start: float) -> float:
    """An offset duration ("26h", "90m") counts from the range start; anything else is an absolute time."""
    if isinstance(start, str):
        text = start.strip()
        if text and text[0].isdigit() and text[-1] in "smhdwy" and "T" not in text and "-" not in text:
            return range_start + parse_duration(text.lstrip("+"))
        if text.startswith("+"):
            return range_start + parse_duration(text[1:])
    return parse_time(start)


def instance_name(ref: Any) -> str:
    """`3`, `vllm-3` and `vllm-3:8000` all name the instance label `vllm-3:8000`."""
    if isinstance(ref, bool):
        raise ValueError(f"invalid instance {ref!r}")
    if isinstance(ref, int):
        return f"vllm-{ref}:8000"
    text = str(ref).strip()
    if text.isdigit():
        return f"vllm-{text}:8000"
    if ":" not in text:
        text += ":8000"
    return text


def incident_from_mapping(entry: Any) -> Incident:
    """Validate one incident mapping; raises ValueError naming the offending field."""
    if not isinstance(entry, dict):
        raise ValueError(f"an incident must be a mapping, got {type(entry).__name__}")
    allowed = {"kind", "instance", "instances", "start", "duration", "magnitude", "hold"}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    kind = entry.get("kind")
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    refs = entry.get("instances", entry.get("instance"))
    if refs is None:
        raise ValueError("instance: missing (give `instance: vllm-3:8000` or `instances: [...]`)")
    refs = refs if isinstance(refs, list) else [refs]
    if not refs:
        raise ValueError("instances: empty list")
    try:
        instances = tuple(instance_name(ref) for ref in refs)
    except ValueError as error:
        raise ValueError(f"instance: {error}") from None
    if "start" not in entry:
        raise ValueError("start: missing (an offset like 26h, or an RFC 3339 time)")
    start = entry["start"]
    try:
        resolve_start(start, 0.0)
    except ValueError as error:
        raise ValueError(f"start: {error}") from None
    values: dict[str, float | None] = {}
    for name, parse in (("duration", parse_duration), ("hold", parse_duration), ("magnitude", float)):
        if entry.get(name) is None:
            values[name] = None
            continue
        try:
            values[name] = parse(entry[name])
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name}: {error}") from None
        if values[name] < 0:
            raise ValueError(f"{name}: must be >= 0, got {entry[name]!r}")
    return Incident(kind=kind, instances=instances, start=start if isinstance(start, (int, float)) else str(start),
                    duration=values["duration"], magnitude=values["magnitude"], hold=values["hold"])


def load_incidents(path: str | Path) -> list[Incident]:
    """Read an incident list: a YAML list, or a mapping with an `incidents:` list. Errors name file:line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise IncidentError(f"{path}: cannot read: {error.strerror}") from None
    try:
        documents = compose_documents(text)
    except yaml.YAMLError as error:
        raise IncidentError(f"{path}: invalid YAML: {error}") from None
    if len(documents) > 1:
        raise IncidentError(f"{path}: expected one YAML document, found {len(documents)}")
    root_node, document = documents[0] if documents else (None, None)
    items_node = root_node
    if isinstance(document, dict):
        if set(document) - {"incidents"}:
            raise IncidentError(f"{path}:1: top level: only `incidents:` is allowed")
        document = document.get("incidents") or []
        items_node = next(value for key, value in root_node.value if key.value == "incidents")
    if document is None:
        return []
    if not isinstance(document, list):
        raise IncidentError(f"{path}:1: expected a list of incidents")
    incidents = []
    for index, entry in enumerate(document):
        line = items_node.value[index].start_mark.line + 1 if isinstance(items_node, yaml.SequenceNode) else 1
        try:
            incidents.append(incident_from_mapping(entry))
        except ValueError as error:
            raise IncidentError(f"{path}:{line}: incidents[{index}]: {error}") from None
    return incidents


@dataclass
class Modifiers:
    """Per-step multipliers and overrides of one instance's load model (length = number of scrape steps)."""

    steps: int
    load_floor: np.ndarray = field(init=False)  # arrivals at least this multiple of capacity (0: no floor)
    prefill_factor: np.ndarray = field(init=False)
    itl_factor: np.ndarray = field(init=False)
    kv_floor: np.ndarray = field(init=False)  # KV usage at least this
    kv_override: np.ndarray = field(init=False)  # KV usage exactly this (NaN: model decides)
    abort_share: np.ndarray = field(init=False)  # NaN: the instance's base share
    error_share: np.ndarray = field(init=False)  # NaN: the base share of internal errors
    capacity_factor: np.ndarray = field(init=False)
    xid: np.ndarray = field(init=False)  # DCGM's last XID error value
    fb_extra: np.ndarray = field(init=False)  # framebuffer MiB taken outside vLLM's preallocation
    running_cap: np.ndarray = field(init=False)  # most requests the engine runs at once (inf: its model's limit)
    hit_factor: np.ndarray = field(init=False)
    down: np.ndarray = field(init=False)  # process not running: no samples, counters restart after

    def __post_init__(self) -> None:
        n = self.steps
        self.load_floor = np.zeros(n)
        self.prefill_factor = np.ones(n)
        self.itl_factor = np.ones(n)
        self.kv_floor = np.zeros(n)
        self.kv_override = np.full(n, np.nan)
        self.abort_share = np.full(n, np.nan)
        self.error_share = np.full(n, np.nan)
        self.capacity_factor = np.ones(n)
        self.xid = np.zeros(n)
        self.fb_extra = np.zeros(n)
        self.running_cap = np.full(n, np.inf)
        self.hit_factor = np.ones(n)
        self.down = np.zeros(n, bool)


def apply_incident(mods: Modifiers, times: np.ndarray, incident: Incident, range_start: float,
                   range_end: float) -> None:
    """Write one incident's effect on one instance into `mods` (times: the instance's scrape times)."""
    start, end = incident.window(range_start, range_end)
    stop = np.inf if end is None else end
    active = (times >= start) & (times < stop)
    magnitude = incident.resolved_magnitude()
    kind = incident.kind
    if kind == "queue_buildup":
        mods.load_floor[active] = np.maximum(mods.load_floor[active], magnitude)
    elif kind == "kv_pressure":
        # Reaches the level over 3 minutes: KV fills as long requests accumulate, it does not jump.
        ramp = np.clip((times[active] - start) / 180.0, 0.0, 1.0)
        mods.kv_floor[active] = np.maximum(mods.kv_floor[active], magnitude * ramp)
    elif kind == "ttft_spike":
        mods.prefill_factor[active] *= magnitude
    elif kind == "itl_regression":
        mods.itl_factor[active] *= magnitude
    elif kind == "kv_linear_climb":
        assert end is not None
        hold = KV_CLIMB_HOLD if incident.hold is None else incident.hold
        climb = active
        mods.kv_override[climb] = magnitude + (1.0 - magnitude) * (times[climb] - start) / (end - start)
        saturated = (times >= end) & (times < end + hold)
        mods.kv_override[saturated] = 1.0
    elif kind == "error_burst":
        mods.error_share[active] = magnitude
    elif kind == "client_aborts":
        mods.abort_share[active] = magnitude
    elif kind == "throughput_drop":
        # A throttled GPU (clocks down: heat, power cap) does everything slower: prefill, every token, capacity.
        mods.capacity_factor[active] *= magnitude
        mods.itl_factor[active] /= magnitude
        mods.prefill_factor[active] /= magnitude
    elif kind == "batch_cap":
        mods.running_cap[active] = np.minimum(mods.running_cap[active], magnitude)
    elif kind == "gpu_xid":
        # DCGM keeps reporting the last XID until the driver is reset (here: the end of the incident).
        mods.xid[active] = magnitude
        mods.capacity_factor[active] = 0.0
    elif kind == "gpu_memory_leak":
        assert end is not None
        headroom = catalog.GPU_MEMORY_MIB * (1.0 - catalog.GPU_MEMORY_UTILIZATION) - catalog.CUDA_CONTEXT_MIB
        mods.fb_extra[active] = magnitude * headroom * (times[active] - start) / (end - start)
    elif kind == "low_cache_hit":
        mods.hit_factor[active] *= magnitude
    elif kind == "restart":
        # At least one scrape is missed, so the reset is visible as a gap followed by small counter values.
        mods.down[active] = True
        if not active.any():
            mods.down[np.searchsorted(times, start):][:1] = True
    else:  # pragma: no cover - incident_from_mapping rejects unknown kinds
        raise ValueError(f"unknown incident kind {kind!r}")


def truth_records(incident: Incident, range_start: float, range_end: float,
                  instance_models: dict[str, str], generations: dict[str, str]) -> list[dict]:
    """Ground truth for one incident: one record per instance it hits."""
    start, end = incident.window(range_start, range_end)
    records = []
    for instance in incident.instances:
        record = {
            "kind": incident.kind,
            "category": incident.spec.category,
            "instance": instance,
            "model_name": instance_models[instance],
            "start": rfc3339(start, "auto"),
            "end": None if end is None or end >= range_end else rfc3339(end, "auto"),
            "magnitude": incident.resolved_magnitude(),
            "generation": generations[instance],
            "expected_signals": [exposed for name in incident.spec.expected_signals
                                 for exposed in catalog.exposed_names(name, generations[instance])],
        }
        if incident.kind == "gpu_memory_leak" and end is not None:
            record["saturation_at"] = rfc3339(end, "auto")  # the framebuffer is full at the end of the climb
        if incident.kind == "kv_linear_climb":
            hold = KV_CLIMB_HOLD if incident.hold is None else incident.hold
            record["saturation_at"] = rfc3339(end, "auto")
            record["end"] = None if end + hold >= range_end else rfc3339(end + hold, "auto")
        records.append(record)
    return records
