"""Concrete configuration changes per server kind and bottleneck (reference/llm-servers.md §5).

Each knob entry says how to move it at each optimization level; the current value comes from Prometheus where the
server exposes it (`vllm:cache_config_info`; `sglang:cache_config_info` only up to SGLang 0.5.10), else from the
playbook's `current:`,
else the server's documented default. The output is data for templates (`recommendation.changes`) and the audit.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rules_engine.source.base import SourceError
from rules_engine.source.client import PrometheusClient

LEVEL_INDEX = {"conservative": 0, "moderate": 1, "aggressive": 2}

# knob: (flag, default, how it moves per level (conservative, moderate, aggressive) as ("mul"|"add"|"set", value)
#        or None when the level does not touch it, bounds, why)
KNOBS: dict[str, dict[str, list[dict[str, Any]]]] = {
    "vllm": {
        "queue_buildup": [
            {"knob": "replicas", "flag": "(deployment replicas)", "default": 1,
             "moves": [("add", 1), ("add", 2), ("mul", 2)], "bounds": (1, 64),
             "why": "waiting requests pile up: add capacity (scale out or --data-parallel-size)"},
            {"knob": "max_num_batched_tokens", "flag": "--max-num-batched-tokens", "default": 2048,
             "moves": [None, ("mul", 1.5), ("mul", 2)], "bounds": (512, 65536),
             "why": "a larger token budget per step drains the queue faster (better TTFT)"},
        ],
        "kv_cache_pressure": [
            {"knob": "gpu_memory_utilization", "flag": "--gpu-memory-utilization", "default": 0.9,
             "moves": [("add", 0.02), ("add", 0.04), ("add", 0.06)], "bounds": (0.5, 0.95),
             "why": "more GPU memory for the KV cache reduces preemptions"},
            {"knob": "max_num_seqs", "flag": "--max-num-seqs", "default": 256,
             "moves": [("mul", 0.875), ("mul", 0.75), ("mul", 0.5)], "bounds": (8, 4096),
             "why": "fewer concurrent sequences need fewer KV blocks at once"},
            {"knob": "kv_cache_dtype", "flag": "--kv-cache-dtype", "default": "auto",
             "moves": [None, None, ("set", "fp8")], "bounds": None,
             "why": "an fp8 KV cache halves its memory (small accuracy risk)"},
        ],
        "high_ttft": [
            {"knob": "max_num_batched_tokens", "flag": "--max-num-batched-tokens", "default": 2048,
             "moves": [("mul", 1.5), ("mul", 2), ("mul", 4)], "bounds": (512, 65536),
             "why": "higher values achieve better TTFT (more prefill per step)"},
            {"knob": "replicas", "flag": "(deployment replicas)", "default": 1,
             "moves": [None, ("add", 1), ("add", 2)], "bounds": (1, 64),
             "why": "queueing is part of TTFT: scale out"},
        ],
        "high_itl": [
            {"knob": "max_num_batched_tokens", "flag": "--max-num-batched-tokens", "default": 8192,
             "moves": [("mul", 0.75), ("mul", 0.5), ("mul", 0.25)], "bounds": (512, 65536),
             "why": "fewer prefill tokens per step slow decodes down less (lower ITL)"},
            {"knob": "max_num_seqs", "flag": "--max-num-seqs", "default": 256,
             "moves": [None, ("mul", 0.75), ("mul", 0.5)], "bounds": (8, 4096),
             "why": "smaller decode batches lower the time per token"},
        ],
        "low_prefix_cache_hit": [
            {"knob": "enable_prefix_caching", "flag": "--enable-prefix-caching", "default": True,
             "moves": [("set", True), ("set", True), ("set", True)], "bounds": None,
             "why": "prefix caching must be on for shared prompt prefixes to hit"},
            {"knob": "routing", "flag": "(router policy)", "default": "round_robin",
             "moves": [None, ("set", "prefix_aware"), ("set", "prefix_aware")], "bounds": None,
             "why": "prefix-aware routing sends requests sharing a prefix to the same replica"},
            {"knob": "kv_offloading_backend", "flag": "--kv-offloading-backend", "default": "none",
             "moves": [None, None, ("set", "lmcache")], "bounds": None,
             "why": "offloading KV to CPU keeps evicted prefixes reusable"},
        ],
        "under_batching": [
            {"knob": "max_num_seqs", "flag": "--max-num-seqs", "default": 256,
             "moves": [("mul", 1.25), ("mul", 1.5), ("mul", 2)], "bounds": (8, 4096),
             "why": "allow larger batches for throughput"},
            {"knob": "max_num_batched_tokens", "flag": "--max-num-batched-tokens", "default": 2048,
             "moves": [("mul", 1.5), ("mul", 2), ("mul", 4)], "bounds": (512, 65536),
             "why": "> 8192 is recommended for throughput"},
        ],
    },
    "tgi": {
        "queue_buildup": [
            {"knob": "replicas", "flag": "(deployment replicas)", "default": 1,
             "moves": [("add", 1), ("add", 2), ("mul", 2)], "bounds": (1, 64), "why": "scale out"},
            {"knob": "max_concurrent_requests", "flag": "--max-concurrent-requests", "default": 128,
             "moves": [None, ("mul", 1.5), ("mul", 2)], "bounds": (8, 4096),
             "why": "admit more requests instead of rejecting them as overloaded"},
        ],
        "kv_cache_pressure": [
            # TGI sizes --max-batch-total-tokens from the memory left after the weights: shrinking it only makes
            # the budget fill sooner. Room comes from a smaller KV cache per token.
            {"knob": "kv_cache_dtype", "flag": "--kv-cache-dtype", "default": "auto",
             "moves": [("set", "fp8_e4m3fn"), ("set", "fp8_e4m3fn"), ("set", "fp8_e4m3fn")], "bounds": None,
             "why": "an fp8 KV cache holds twice the tokens in the same memory"},
        ],
        "high_ttft": [
            # Waiting requests are considered for the running batch once waiting/running exceeds the ratio
            # (default 1.2): a lower ratio lets them join sooner.
            {"knob": "waiting_served_ratio", "flag": "--waiting-served-ratio", "default": 1.2,
             "moves": [("mul", 0.8), ("mul", 0.6), ("mul", 0.4)], "bounds": (0.1, 5.0),
             "why": "let waiting requests join the running batch sooner"},
        ],
        "high_itl": [
            {"knob": "max_batch_prefill_tokens", "flag": "--max-batch-prefill-tokens", "default": 4096,
             "moves": [("mul", 0.75), ("mul", 0.5), ("mul", 0.25)], "bounds": (256, 1_000_000),
             "why": "smaller prefill batches interrupt decoding less"},
        ],
        "low_prefix_cache_hit": [
            {"knob": "PREFIX_CACHING", "flag": "(env PREFIX_CACHING)", "default": "0",
             "moves": [("set", "1"), ("set", "1"), ("set", "1")], "bounds": None, "why": "enable prefix caching"},
        ],
        "under_batching": [
            # --max-batch-size is unset by default (the token budget alone bounds a batch); prefill batches are
            # what admits new requests into the running batch.
            {"knob": "max_batch_prefill_tokens", "flag": "--max-batch-prefill-tokens", "default": 4096,
             "moves": [("mul", 1.25), ("mul", 1.5), ("mul", 2)], "bounds": (256, 1_000_000),
             "why": "larger prefill batches admit more waiting requests per step"},
        ],
    },
    "sglang": {
        "queue_buildup": [
            {"knob": "replicas", "flag": "(deployment replicas / --dp-size)", "default": 1,
             "moves": [("add", 1), ("add", 2), ("mul", 2)], "bounds": (1, 64), "why": "scale out"},
            {"knob": "schedule_conservativeness", "flag": "--schedule-conservativeness", "default": 1.0,
             "moves": [None, ("mul", 0.6), ("mul", 0.3)], "bounds": (0.1, 2.0),
             "why": "if token usage < 0.9 while requests queue, schedule more eagerly"},
        ],
        "kv_cache_pressure": [
            {"knob": "mem_fraction_static", "flag": "--mem-fraction-static", "default": 0.88,
             "moves": [("add", 0.01), ("add", 0.02), ("add", 0.04)], "bounds": (0.5, 0.95),
             "why": "a larger static pool for the KV cache"},
            {"knob": "schedule_conservativeness", "flag": "--schedule-conservativeness", "default": 1.0,
             "moves": [("mul", 1.1), ("mul", 1.3), ("mul", 1.5)], "bounds": (0.1, 2.0),
             "why": "fewer retractions when the KV pool fills"},
        ],
        "high_ttft": [
            {"knob": "chunked_prefill_size", "flag": "--chunked-prefill-size", "default": 8192,
             "moves": [("mul", 1.5), ("mul", 2), ("mul", 2)], "bounds": (1024, 65536), "why": "more prefill per step"},
        ],
        "high_itl": [
            {"knob": "chunked_prefill_size", "flag": "--chunked-prefill-size", "default": 8192,
             "moves": [("mul", 0.5), ("mul", 0.5), ("mul", 0.25)], "bounds": (1024, 65536),
             "why": "smaller prefill chunks interrupt decoding less"},
            {"knob": "cuda_graph_max_bs", "flag": "--cuda-graph-max-bs", "default": 160,
             "moves": [None, ("mul", 1.5), ("mul", 2)], "bounds": (8, 1024), "why": "graphs for larger decode batches"},
        ],
        "low_prefix_cache_hit": [
            {"knob": "schedule_policy", "flag": "--schedule-policy", "default": "fcfs",
             "moves": [("set", "lpm"), ("set", "lpm"), ("set", "lpm")], "bounds": None,
             "why": "longest-prefix-match scheduling reuses the radix cache"},
        ],
        "under_batching": [
            {"knob": "max_running_requests", "flag": "--max-running-requests", "default": 256,
             "moves": [("mul", 1.25), ("mul", 1.5), ("mul", 2)], "bounds": (8, 4096), "why": "larger batches"},
        ],
    },
}
CONFIG_INFO_METRIC = {"vllm": "vllm:cache_config_info", "sglang": "sglang:cache_config_info"}


def _coerce(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def current_settings(prometheus: PrometheusClient | None, server_kind: str, instance: str
                     ) -> tuple[dict[str, Any], str]:
    """The server's exposed configuration (labels of its config-info gauge) and where it came from."""
    metric = CONFIG_INFO_METRIC.get(server_kind)
    if prometheus is None or not metric or not instance:
        return {}, "not available"
    selector = instance.replace("\\", "\\\\").replace('"', '\\"')
    try:
        series = prometheus.instant_query(f'{metric}{{instance="{selector}"}}')
    except SourceError as error:
        return {}, f"prometheus error: {error}"
    if not series:
        return {}, f"{metric} not found for instance {instance!r}"
    labels = series[0][0]
    return ({k: _coerce(v) for k, v in labels.items() if k not in ("__name__", "instance", "job", "engine")},
            metric)


def _move(current: Any, move: tuple[str, Any], bounds: tuple[float, float] | None) -> Any:
    how, amount = move
    if how == "set":
        return amount
    new = current * amount if how == "mul" else current + amount
    if bounds:
        new = min(max(new, bounds[0]), bounds[1])
    if isinstance(current, int) and not isinstance(current, bool):
        return int(round(new))
    return round(new, 4)


def recommend(server_kind: str, bottleneck: str, level: str, current: dict[str, Any]) -> dict[str, Any]:
    """Changes for one bottleneck at one optimization level, from the current settings."""
    entries = KNOBS.get(server_kind, {}).get(bottleneck, [])
    changes: dict[str, Any] = {}
    details = []
    for entry in entries:
        move = entry["moves"][LEVEL_INDEX[level]]
        if move is None:
            continue
        knob = entry["knob"]
        known = knob in current
        before = current.get(knob, entry["default"])
        after = _move(before, move, entry["bounds"])
        if after == before:
            continue
        changes[knob] = after
        details.append({"knob": knob, "flag": entry["flag"], "from": before, "to": after,
                        "from_source": "current" if known else "default", "why": entry["why"]})
    # The inverse change, for rollback steps: every changed knob back to its value before the change.
    previous = {d["knob"]: d["from"] for d in details}
    return {"server_kind": server_kind, "bottleneck": bottleneck, "level": level, "changes": changes,
            "previous": previous, "details": details}


# --- ranked recommendations from findings (POST /api/v1/optimization/recommend) ----------------------------------
#
# Findings (the export contract's) are grouped by what would answer them, per model (or instance): each group is
# one recommendation with the exact flags for each server kind, computed from the current settings where known
# (the request's `current`, else Prometheus: `vllm:cache_config_info` labels, `sglang:max_total_num_tokens` and
# `sglang:page_size` (SGLang >= 0.5.11 has no config-info gauge), `tgi_batch_max_total_tokens`), else the servers'
# documented defaults (reference/llm-servers.md §5). Memory figures are arithmetic on the model's architecture
# (rules_engine/data/models.yaml or `current`), never measured: each says how it was made.

SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}
PRIORITIES = ("low", "medium", "high", "critical")
SEVERITY_WEIGHT = {"low": 1.0, "medium": 2.0, "high": 4.0, "critical": 8.0}
SERVER_KINDS = ("vllm", "tgi", "sglang")
GIB = 1024 ** 3
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "auto": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
# Per GPU, besides weights and KV cache: activations, CUDA graphs, the runtime. vLLM measures it at start-up; a
# planning figure here, and every estimate that uses it says so.
OVERHEAD_GIB_PER_GPU = 2.0
MODEL_CATALOG = Path(__file__).resolve().parent.parent / "data" / "models.yaml"

# Defaults of the knobs (reference/llm-servers.md §5 and §9: vLLM's gpu_memory_utilization is 0.92 in current
# releases, 0.9 before; its batch defaults are 256 seqs / 2048 tokens off large GPUs).
DEFAULTS = {
    "vllm": {"gpu_memory_utilization": 0.92, "max_num_seqs": 256, "max_num_batched_tokens": 2048,
             "cache_dtype": "auto", "enable_prefix_caching": True},
    "tgi": {"max_batch_total_tokens": None, "max_batch_prefill_tokens": 4096, "max_concurrent_requests": 128,
            "cuda_memory_fraction": 1.0, "max_batch_size": None},
    "sglang": {"mem_fraction_static": 0.88, "max_running_requests": None, "chunked_prefill_size": 8192,
               "schedule_conservativeness": 1.0, "cuda_graph_max_bs": 160},
}
# What each optimization is, its risks, its preference among equals (lower-risk first) and which playbook
# bottleneck it is (to find a loaded playbook that applies it).
OPTIMIZATIONS: dict[str, dict[str, Any]] = {
    "scale_out": {"title": "Add a replica", "weight": 1.0, "bottleneck": "queue_buildup",
                  "risks": ["more GPUs (cost)", "a cold replica serves slower until warm (CUDA graphs, prefix "
                                                 "cache empty)"]},
    "kv_cache_sizing": {"title": "Give the KV cache more memory and admit fewer sequences at once", "weight": 1.0,
                        "bottleneck": "kv_cache_pressure",
                        "risks": ["a higher memory fraction leaves less headroom: out-of-memory at start-up or on "
                                  "long prompts", "fewer concurrent sequences lowers peak throughput"]},
    "kv_cache_dtype": {"title": "Store the KV cache in FP8", "weight": 0.9, "bottleneck": "kv_cache_pressure",
                       "risks": ["small accuracy loss (without calibrated scales, scale 1.0): check your evals",
                                 "FP8 attention kernels need Ada/Hopper or newer GPUs to be fast"]},
    "weight_quantization": {"title": "Quantize the weights", "weight": 0.7, "bottleneck": "kv_cache_pressure",
                            "risks": ["accuracy loss, larger for INT4: validate on your evals",
                                      "INT8/INT4 need a pre-quantized checkpoint (AWQ, GPTQ, compressed-tensors)",
                                      "a restart with a new model artifact (rollout, rollback plan)"]},
    "batching_limits": {"title": "Allow larger batches", "weight": 1.0, "bottleneck": "under_batching",
                        "risks": ["larger batches raise ITL per token", "more KV cache in use: watch preemptions"]},
    "prefill_budget_down": {"title": "Smaller prefill chunks per step (chunked prefill)", "weight": 1.0,
                            "bottleneck": "high_itl",
                            "risks": ["long prompts take more steps: TTFT rises for them"]},
    "prefill_budget_up": {"title": "Larger prefill budget per step", "weight": 0.8, "bottleneck": "high_ttft",
                          "risks": ["decodes share steps with more prefill: ITL rises"]},
    "prefix_caching": {"title": "Prefix caching on, and route requests sharing a prefix to the same replica",
                       "weight": 0.9, "bottleneck": "low_prefix_cache_hit",
                       "risks": ["cache-aware routing can unbalance load when few prefixes dominate (the routers "
                                 "fall back to least-loaded past their balance thresholds)"]},
}


def _latency_kind(finding: dict) -> str:
    """'itl' or 'ttft' for a latency or SLO finding, from its rule name and details."""
    text = (finding.get("rule", "") + " " + json.dumps(finding.get("details") or {}, default=str)).lower()
    return "itl" if any(word in text for word in ("itl", "inter_token", "intertoken", "tpot", "per_output_token",
                                                  "per_token")) else "ttft"


def optimizations_for(finding: dict) -> list[str]:
    """Which optimizations answer a finding, most direct first; [] for one no setting answers (errors)."""
    category = finding.get("category")
    if category == "memory_pressure":
        return ["kv_cache_sizing", "kv_cache_dtype", "weight_quantization", "scale_out"]
    if category == "queue_buildup":
        return ["scale_out", "prefill_budget_up"]
    if category in ("high_latency", "slo_burn"):
        return ["prefill_budget_down", "scale_out"] if _latency_kind(finding) == "itl" else \
            ["scale_out", "prefill_budget_up"]
    if category == "batch_size_suboptimal":
        return ["batching_limits"]
    if category == "low_throughput":
        return ["batching_limits", "weight_quantization"]
    if category == "cache_inefficiency":
        return ["prefix_caching"]
    return []


def model_catalog() -> dict[str, dict]:
    import yaml

    found = {}
    for name, entry in (yaml.safe_load(MODEL_CATALOG.read_text()) or {}).items():
        for alias in [name, *entry.get("aliases", [])]:
            found[alias.lower()] = {k: v for k, v in entry.items() if k != "aliases"} | {"catalog": name}
    return found


def architecture(model: str | None, current: dict, catalog: dict[str, dict]) -> dict | None:
    """params_billion, layers, kv_heads, head_dim of a model: `current` first, then the catalog; None if unknown."""
    keys = ("params_billion", "layers", "kv_heads", "head_dim")
    known = {k: current[k] for k in keys if current.get(k) is not None}
    if model:
        entry = catalog.get(model.split("/")[-1].lower())
        if entry:
            known = {**{k: entry[k] for k in keys}, **known}
            known.setdefault("source", f"catalog {entry['catalog']}")
    if not all(k in known for k in keys):
        return None
    known.setdefault("source", "request")
    return known


def kv_bytes_per_token(arch: dict, dtype_bytes: float) -> float:
    """2 (K and V) x layers x KV heads x head dim x bytes per element."""
    return 2 * arch["layers"] * arch["kv_heads"] * arch["head_dim"] * dtype_bytes


def kv_dtype_bytes(cache_dtype: Any) -> float:
    """Bytes per KV element: 1 for an FP8/INT8 cache, else 2 (`auto` keeps the 16-bit activation dtype, also
    under quantized weights)."""
    return 1.0 if str(cache_dtype or "auto").lower().startswith(("fp8", "int8")) else 2.0


def memory_plan(arch: dict, weight_dtype: str, kv_bytes: float, gpu_memory_gib: float, gpus: int,
                utilization: float) -> dict[str, Any]:
    """What fits: usable = GPU memory x GPUs x utilization; KV budget = usable - weights - overhead; tokens = KV
    budget / KV bytes per token."""
    weights = arch["params_billion"] * 1e9 * BYTES_PER_PARAM[weight_dtype]
    usable = gpu_memory_gib * GIB * gpus * utilization
    overhead = OVERHEAD_GIB_PER_GPU * GIB * gpus
    per_token = kv_bytes_per_token(arch, kv_bytes)
    budget = usable - weights - overhead
    return {"weights_gib": round(weights / GIB, 2), "usable_gib": round(usable / GIB, 2),
            "overhead_gib": round(overhead / GIB, 2), "kv_budget_gib": round(budget / GIB, 2),
            "kv_bytes_per_token": int(per_token), "kv_tokens": max(int(budget // per_token), 0),
            "fits": budget > 0,
            "method": (f"weights {arch['params_billion']:g}e9 params x {BYTES_PER_PARAM[weight_dtype]:g} B; "
                       f"KV per token 2 x {arch['layers']} layers x {arch['kv_heads']} KV heads x "
                       f"{arch['head_dim']} x {kv_bytes:g} B; usable {gpu_memory_gib:g} GiB x {gpus} GPU x "
                       f"{utilization:g}; overhead {OVERHEAD_GIB_PER_GPU:g} GiB per GPU (planning figure)")}


@dataclass
class Target:
    """One model (or instance) the findings are about, with what is known of its servers."""

    key: str
    model: str | None
    instances: list[str]
    server_kind: str | None
    current: dict[str, Any]  # knob -> value (merged over the instances: the first instance's that has it)
    sources: dict[str, str]  # knob -> where its value came from
    replicas: int | None
    arch: dict | None
    hardware: dict[str, Any]  # gpus, gpu_memory_gib, weight_dtype


def _value(target: Target, kind: str, knob: str) -> tuple[Any, str]:
    if kind == target.server_kind and knob in target.current:
        return target.current[knob], target.sources.get(knob, "current")
    return DEFAULTS[kind].get(knob), "default"


def _scaled(value: Any, factor: float, low: float, high: float) -> int | None:
    return None if value is None else int(min(max(round(float(value) * factor), low), high))


def _setting(kind: str, flag: str, value: Any, current: Any = None, source: str = "default", component: str = "server",
             note: str = "") -> dict[str, Any]:
    return {"server": kind, "component": component, "flag": flag, "value": value, "current": current,
            "current_source": source, **({"note": note} if note else {})}


def settings_for(optimization: str, target: Target) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """The flags per server kind, and the estimated improvement (metric, amount, method)."""
    v = {kind: (lambda knob, kind=kind: _value(target, kind, knob)) for kind in SERVER_KINDS}
    s: dict[str, list[dict]] = {kind: [] for kind in SERVER_KINDS}
    estimate: dict[str, Any] = {"metric": "", "amount": None, "unit": "", "method": ""}
    if optimization == "scale_out":
        n = target.replicas or len(target.instances) or 1
        for kind in SERVER_KINDS:
            s[kind].append(_setting(kind, "replicas", n + 1, n, "prometheus" if target.replicas else
                                    "instances in the findings", component="deployment"))
        s["vllm"].append(_setting("vllm", "--data-parallel-size", 2, None, note="or, on one multi-GPU host: "
                                  "a second engine behind vLLM's own load balancer"))
        s["sglang"].append(_setting("sglang", "--dp-size", 2, None, note="or data parallelism inside one "
                                    "server (the SGLang router balances across them)"))
        estimate = {"metric": "load per replica (queue length, TTFT)", "amount": round(-100.0 / (n + 1), 1),
                    "unit": "percent", "method": f"requests spread evenly over {n} -> {n + 1} replicas: each "
                    f"receives {n}/{n + 1} of its load; queueing falls faster than load near saturation"}
    elif optimization == "kv_cache_sizing":
        util, util_src = v["vllm"]("gpu_memory_utilization")
        seqs, seqs_src = v["vllm"]("max_num_seqs")
        new_util = round(min(float(util) + 0.03, 0.95), 2)
        s["vllm"] += [_setting("vllm", "--gpu-memory-utilization", new_util, util, util_src),
                      _setting("vllm", "--max-num-seqs", _scaled(seqs, 0.75, 8, 4096), seqs, seqs_src)]
        total, total_src = v["tgi"]("max_batch_total_tokens")
        if total is not None:  # otherwise TGI infers the largest value at start-up: nothing exact to say
            s["tgi"].append(_setting("tgi", "--max-batch-total-tokens", _scaled(total, 0.85, 1024, 10_000_000),
                                     total, total_src))
        s["tgi"].append(_setting("tgi", "--max-concurrent-requests", 96, *v["tgi"]("max_concurrent_requests")))
        frac, frac_src = v["sglang"]("mem_fraction_static")
        cons, cons_src = v["sglang"]("schedule_conservativeness")
        s["sglang"] += [_setting("sglang", "--mem-fraction-static", round(min(float(frac) + 0.02, 0.95), 2), frac,
                                 frac_src),
                        _setting("sglang", "--schedule-conservativeness", round(float(cons) * 1.3, 2), cons,
                                 cons_src)]
        estimate = _kv_sizing_estimate(target, float(util), new_util)
    elif optimization == "kv_cache_dtype":
        dtype, dtype_src = v["vllm"]("cache_dtype")
        s["vllm"].append(_setting("vllm", "--kv-cache-dtype", "fp8", dtype, dtype_src))
        s["tgi"].append(_setting("tgi", "--kv-cache-dtype", "fp8_e4m3fn", "auto", "default"))
        s["sglang"].append(_setting("sglang", "--kv-cache-dtype", "fp8_e4m3", "auto", "default"))
        before = kv_dtype_bytes(target.current.get("cache_dtype"))
        estimate = {"metric": "KV-cache capacity (tokens)", "amount": round(100.0 * (before / 1.0 - 1.0), 1),
                    "unit": "percent", "method": f"KV bytes per token = 2 x layers x KV heads x head dim x dtype "
                    f"bytes: {before:g} B -> 1 B per element, the same memory holds {before:g}x the tokens"}
        if target.arch:
            per = kv_bytes_per_token(target.arch, before)
            estimate["method"] += f" ({int(per):,} -> {int(per / before):,} bytes per token for {target.model})"
    elif optimization == "weight_quantization":
        for kind, flag in (("vllm", "--quantization"), ("tgi", "--quantize"), ("sglang", "--quantization")):
            s[kind].append(_setting(kind, flag, "fp8", target.hardware["weight_dtype"], "assumed" if
                                    "weight_dtype" not in target.current else "current",
                                    note="INT8/INT4: awq or gptq with a pre-quantized checkpoint; see memory"))
        estimate = _quantization_estimate(target)
    elif optimization == "batching_limits":
        seqs, seqs_src = v["vllm"]("max_num_seqs")
        tokens, tokens_src = v["vllm"]("max_num_batched_tokens")
        s["vllm"] += [_setting("vllm", "--max-num-seqs", _scaled(seqs, 1.5, 8, 4096), seqs, seqs_src),
                      _setting("vllm", "--max-num-batched-tokens", max(_scaled(tokens, 2, 512, 65536), 8192),
                               tokens, tokens_src)]
        size, size_src = v["tgi"]("max_batch_size")
        s["tgi"].append(_setting("tgi", "--max-batch-size", _scaled(size, 1.5, 1, 4096) if size else 64, size,
                                 size_src))
        running, running_src = v["sglang"]("max_running_requests")
        graphs, graphs_src = v["sglang"]("cuda_graph_max_bs")
        s["sglang"] += [_setting("sglang", "--max-running-requests", _scaled(running, 1.5, 8, 4096) if running
                                 else 384, running, running_src),
                        _setting("sglang", "--cuda-graph-max-bs", _scaled(graphs, 1.5, 8, 1024), graphs, graphs_src)]
        estimate = {"metric": "throughput at saturation (tokens/s)", "amount": 50.0, "unit": "percent, at most",
                    "method": "batch capacity x1.5 (max sequences); decode throughput grows at most in proportion "
                              "while the GPU is not compute-bound, and less once it is"}
    elif optimization in ("prefill_budget_down", "prefill_budget_up"):
        down = optimization == "prefill_budget_down"
        factor = 0.5 if down else 2.0
        tokens, tokens_src = v["vllm"]("max_num_batched_tokens")
        s["vllm"].append(_setting("vllm", "--max-num-batched-tokens", _scaled(tokens, factor, 512, 65536), tokens,
                                  tokens_src, note="chunked prefill is always on in the V1 engine; older "
                                  "engines also need --enable-chunked-prefill"))
        prefill, prefill_src = v["tgi"]("max_batch_prefill_tokens")
        s["tgi"].append(_setting("tgi", "--max-batch-prefill-tokens", _scaled(prefill, factor, 256, 1_000_000),
                                 prefill, prefill_src))
        chunk, chunk_src = v["sglang"]("chunked_prefill_size")
        s["sglang"].append(_setting("sglang", "--chunked-prefill-size", _scaled(chunk, factor, 1024, 65536), chunk,
                                    chunk_src))
        estimate = ({"metric": "ITL p95", "amount": None, "unit": "lower", "method": "a decode step shares the "
                     "GPU with at most half the prefill tokens it did; the gain depends on the prompt mix "
                     "(verify with the playbook's ITL check)"} if down else
                    {"metric": "TTFT p95", "amount": None, "unit": "lower", "method": "twice the prefill tokens "
                     "per step: a long prompt needs half the steps to its first token"})
    elif optimization == "prefix_caching":
        enabled, enabled_src = v["vllm"]("enable_prefix_caching")
        s["vllm"].append(_setting("vllm", "--enable-prefix-caching", True, enabled, enabled_src))
        s["tgi"].append(_setting("tgi", "PREFIX_CACHING", "1", None, component="environment"))
        s["sglang"] += [_setting("sglang", "--disable-radix-cache", False, None, note="the radix cache is on "
                                 "unless this flag is given: remove it"),
                        _setting("sglang", "--schedule-policy", "lpm", "fcfs", "default")]
        for kind, router in (("vllm", "vllm-router"), ("tgi", "sglang-router (any OpenAI-compatible backend)"),
                             ("sglang", "sglang-router")):
            s[kind].append(_setting(kind, "--policy", "cache_aware", None, component=router,
                                    note="routing affinity: requests sharing a prefix go to the replica that "
                                         "holds it"))
        estimate = {"metric": "prefix-cache hit rate, prefill tokens computed", "amount": None, "unit": "higher",
                    "method": "with N replicas and random routing a shared prefix is cached on one replica in N "
                              "tries; affinity routing sends it where it is cached"}
    return s, estimate


def _kv_sizing_estimate(target: Target, util: float, new_util: float) -> dict[str, Any]:
    hardware = target.hardware
    base = {"metric": "KV-cache capacity (tokens)", "unit": "tokens", "amount": None}
    if not target.arch or not hardware.get("gpu_memory_gib"):
        return {**base, "method": f"--gpu-memory-utilization {util:g} -> {new_util:g}: {100 * (new_util - util):.0f}% "
                "of GPU memory more for the KV cache (give `current` gpu_memory_gib and the model's architecture "
                "for a token count)"}
    kv = kv_dtype_bytes(target.current.get("cache_dtype"))
    extra = (new_util - util) * hardware["gpu_memory_gib"] * GIB * hardware["gpus"]
    per = kv_bytes_per_token(target.arch, kv)
    tokens = int(extra // per)
    capacity = target.current.get("kv_capacity_tokens")
    method = (f"({new_util:g} - {util:g}) x {hardware['gpu_memory_gib']:g} GiB x {hardware['gpus']} GPU = "
              f"{extra / GIB:.2f} GiB more KV cache / {int(per):,} bytes per token (2 x {target.arch['layers']} "
              f"layers x {target.arch['kv_heads']} KV heads x {target.arch['head_dim']} x {kv:g} B)")
    if capacity:
        method += f"; now {capacity:,} tokens (num_gpu_blocks x block_size): +{100 * tokens / capacity:.1f}%"
    return {**base, "amount": tokens, "method": method}


def _quantization_estimate(target: Target) -> dict[str, Any]:
    hardware = target.hardware
    if not target.arch or not hardware.get("gpu_memory_gib"):
        return {"metric": "GPU memory for weights", "amount": -50.0, "unit": "percent", "method": "16-bit -> 8-bit "
                "weights: params x 2 B -> params x 1 B (give `current` gpu_memory_gib and the model's architecture "
                "for what fits)"}
    util = float(target.current.get("gpu_memory_utilization") or DEFAULTS["vllm"]["gpu_memory_utilization"])
    kv = kv_dtype_bytes(target.current.get("cache_dtype"))
    options = {dtype: memory_plan(target.arch, dtype, kv, hardware["gpu_memory_gib"], hardware["gpus"], util)
               for dtype in (hardware["weight_dtype"], "fp8", "int8", "int4")}
    now, fp8 = options[hardware["weight_dtype"]], options["fp8"]
    gained = fp8["kv_tokens"] - now["kv_tokens"]
    return {"metric": "KV-cache capacity (tokens)", "amount": gained, "unit": "tokens",
            "method": f"FP8 weights free {now['weights_gib'] - fp8['weights_gib']:.2f} GiB for the KV cache: "
                      f"{now['kv_tokens']:,} -> {fp8['kv_tokens']:,} tokens; " + fp8["method"],
            "memory": options}


def rank(findings: list[dict], targets: dict[str, Target], playbooks: list | None = None) -> tuple[list[dict],
                                                                                                  list[dict]]:
    """Recommendations, ranked (priority, then score), and the findings no setting answers."""
    groups: dict[tuple[str, str], list[dict]] = {}
    unanswered = []
    for finding in findings:
        labels = finding.get("labels") or {}
        key = labels.get("model_name") or labels.get("instance") or "fleet"
        found = optimizations_for(finding)
        if not found:
            unanswered.append({"rule": finding.get("rule"), "labels": labels, "reason": f"no setting answers "
                               f"category {finding.get('category')!r}: look for its cause (errors, clients)"})
        for optimization in found:
            groups.setdefault((optimization, key), []).append(finding)
    recommendations = []
    for (optimization, key), answered in groups.items():
        target = targets[key]
        info = OPTIMIZATIONS[optimization]
        settings, estimate = settings_for(optimization, target)
        if target.server_kind:  # the kind that runs these instances first
            settings = {target.server_kind: settings[target.server_kind],
                        **{k: v for k, v in settings.items() if k != target.server_kind}}
        worst = max(answered, key=lambda f: SEVERITY_RANK.get(f.get("severity"), 0))["severity"]
        hours = [max(float(f.get("duration_seconds") or 0.0), 0.0) / 3600.0 for f in answered]
        score = info["weight"] * sum(SEVERITY_WEIGHT.get(f.get("severity"), 1.0) * (1.0 + min(h, 24.0))
                                     for f, h in zip(answered, hours))
        recommendations.append({
            "optimization": optimization, "title": info["title"], "priority": worst,
            "score": round(score, 3), "model": target.model, "instances": target.instances,
            "server_kind": target.server_kind, "estimated_improvement": estimate, "risks": list(info["risks"]),
            "settings": settings, "playbook": _playbook(answered, info["bottleneck"], target.server_kind, playbooks),
            "findings": [{"rule": f.get("rule"), "severity": f.get("severity"), "category": f.get("category"),
                          "labels": f.get("labels") or {}, "start": f.get("start"), "end": f.get("end")}
                         for f in answered]})
    recommendations.sort(key=lambda r: (-SEVERITY_RANK[r["priority"]], -r["score"], r["optimization"],
                                        str(r["model"])))
    for index, recommendation in enumerate(recommendations, 1):
        recommendation["rank"] = index
    return recommendations, unanswered


def _playbook(findings: list[dict], bottleneck: str, server_kind: str | None, playbooks: list | None) -> str | None:
    """A loaded playbook whose recommend step fixes this bottleneck on this server kind (a finding's own playbook
    first), or None."""
    applying = []
    for playbook in playbooks or []:
        kinds = {step.server_kind or playbook.server_kind for step in playbook.steps if step.type == "recommend"}
        bottlenecks = {b for step in playbook.steps if step.type == "recommend"
                       for b in (step.bottleneck, *step.bottleneck_by_alertname.values())}
        if bottleneck in bottlenecks and (server_kind is None or server_kind in kinds):
            applying.append(playbook.name)
    named = [f.get("playbook") for f in findings if f.get("playbook") in applying]
    return named[0] if named else (applying[0] if applying else None)


# --- current settings read from Prometheus ------------------------------------------------------------------------
# kind -> (query template, how its answer becomes settings). Each is `last_over_time(...[1h])` at the findings' time,
# so history backtested days ago still has its settings.
EXPOSED = {
    "vllm": "vllm:cache_config_info",  # labels: gpu_memory_utilization, cache_dtype, block_size, num_gpu_blocks, ...
    "sglang": "sglang:max_total_num_tokens",  # value: KV pool tokens (0.5.11+ has no cache_config_info)
    "tgi": "tgi_batch_max_total_tokens",  # value: --max-batch-total-tokens as inferred or set
}
RUNNING = {"vllm": "vllm:num_requests_running", "sglang": "sglang:num_running_reqs", "tgi": "tgi_batch_current_size"}


def _quoted(value: str) -> str:
    return json.dumps(value)  # PromQL double-quoted strings take Go escapes, which JSON's are a subset of


def read_exposed(prometheus: PrometheusClient, instance: str, at: float) -> tuple[str | None, dict, dict]:
    """(server kind, settings, knob -> source) as the instance's servers expose them at `at`; (None, {}, {}).
    Raises SourceError when Prometheus does not answer."""
    for kind, metric in EXPOSED.items():
        series = prometheus.instant_query(f"last_over_time({metric}{{instance={_quoted(instance)}}}[1h])", at)
        if not series:
            continue
        labels, value = series[0]
        where = f"prometheus {metric}"
        if kind == "vllm":
            found = {k: _coerce(v) for k, v in labels.items()
                     if k not in ("__name__", "instance", "job", "engine", "model_name")}
            if isinstance(found.get("num_gpu_blocks"), int) and isinstance(found.get("block_size"), int):
                found["kv_capacity_tokens"] = found["num_gpu_blocks"] * found["block_size"]
        elif kind == "sglang":
            found = {"kv_capacity_tokens": int(value)}
        else:
            found = {"max_batch_total_tokens": int(value)}
        return kind, found, {knob: where for knob in found}
    return None, {}, {}


def count_replicas(prometheus: PrometheusClient, kind: str, model: str, at: float) -> int | None:
    """Instances serving `model` at `at` (None for TGI, whose series carry no model label). Raises SourceError."""
    metric = RUNNING.get(kind)
    if metric is None or kind == "tgi":
        return None
    series = prometheus.instant_query(f"count(count by (instance) (last_over_time({metric}"
                                      f"{{model_name={_quoted(model)}}}[10m])))", at)
    return int(series[0][1]) if series else None


def _finding_time(finding: dict) -> float | None:
    for key in ("end", "start"):
        value = finding.get(key)
        if value:
            try:
                return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _kind_from_rule(finding: dict, pack_servers: dict[str, str]) -> str | None:
    if pack_servers.get(finding.get("pack") or "") in SERVER_KINDS:
        return pack_servers[finding["pack"]]
    name = (finding.get("rule") or "").lower()
    return next((kind for kind in SERVER_KINDS if name.startswith(kind)), None)


def build_targets(findings: list[dict], current: dict[str, dict], prometheus: PrometheusClient | None,
                  pack_servers: dict[str, str] | None = None, notes: list[str] | None = None) -> dict[str, Target]:
    """One Target per model (or instance) of the findings, with what the request and Prometheus say of it. The
    first Prometheus failure is noted in `notes` and Prometheus is not asked again for this request: an answer
    without current settings now beats one that waits on every instance's timeouts."""
    catalog = model_catalog()
    notes = notes if notes is not None else []

    def asked(question, *arguments):
        nonlocal prometheus
        if prometheus is None:
            return None
        try:
            return question(prometheus, *arguments)
        except SourceError as error:
            notes.append(f"current settings not read from Prometheus: {error}")
            prometheus = None
            return None

    by_key: dict[str, list[dict]] = {}
    for finding in findings:
        labels = finding.get("labels") or {}
        by_key.setdefault(labels.get("model_name") or labels.get("instance") or "fleet", []).append(finding)
    targets = {}
    for key, members in by_key.items():
        instances = sorted({(f.get("labels") or {}).get("instance") for f in members} - {None})
        model = next(((f.get("labels") or {}).get("model_name") for f in members
                      if (f.get("labels") or {}).get("model_name")), None)
        times = [t for t in map(_finding_time, members) if t is not None]
        at = max(times) if times else time.time()
        kind, values, sources, given = None, {}, {}, {}
        for instance in instances:  # the request's word first, then what the servers expose
            given = {**current.get(instance, {}), **given}
            if not values:
                kind, values, sources = asked(read_exposed, instance, at) or (None, {}, {})
        settings = dict(given.get("settings") or {})
        values = {**values, **settings}
        sources.update({knob: "request" for knob in settings})
        kind = given.get("server") or kind or next(filter(None, (_kind_from_rule(f, pack_servers or {})
                                                                  for f in members)), None)
        replicas = given.get("replicas")
        if replicas is None and model and kind:
            replicas = asked(count_replicas, kind, model, at)
        hardware = {"gpus": int(given.get("gpus") or 1), "gpu_memory_gib": given.get("gpu_memory_gib"),
                    "weight_dtype": given.get("weight_dtype") or "bf16"}
        targets[key] = Target(key=key, model=model, instances=instances, server_kind=kind, current=values,
                              sources=sources, replicas=replicas,
                              arch=architecture(given.get("model") or model, given, catalog), hardware=hardware)
    return targets


def recommend_findings(findings: list[dict], current: dict[str, dict] | None = None,
                       prometheus: PrometheusClient | None = None, playbooks: list | None = None,
                       pack_servers: dict[str, str] | None = None) -> dict[str, Any]:
    """POST /api/v1/optimization/recommend: {"recommendations": [...ranked...], "unanswered": [...], "notes"}."""
    notes: list[str] = []
    targets = build_targets(findings, current or {}, prometheus, pack_servers, notes)
    recommendations, unanswered = rank(findings, targets, playbooks)
    return {"recommendations": recommendations, "unanswered": unanswered, "notes": notes}
