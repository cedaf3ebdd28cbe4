"""Concrete configuration changes per server kind and bottleneck (reference/llm-servers.md §5).

Each knob entry says how to move it at each optimization level; the current value comes from Prometheus where the
server exposes it (`vllm:cache_config_info`, `sglang:cache_config_info`), else from the playbook's `current:`,
else the server's documented default. The output is data for templates (`recommendation.changes`) and the audit.
"""
from __future__ import annotations

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
            {"knob": "max_batch_total_tokens", "flag": "--max-batch-total-tokens", "default": 16000,
             "moves": [("mul", 0.9), ("mul", 0.75), ("mul", 0.5)], "bounds": (1024, 10_000_000),
             "why": "a smaller token budget fits the KV cache"},
            {"knob": "kv_cache_dtype", "flag": "--kv-cache-dtype", "default": "auto",
             "moves": [None, None, ("set", "fp8_e4m3fn")], "bounds": None, "why": "fp8 KV cache"},
        ],
        "high_ttft": [
            {"knob": "waiting_served_ratio", "flag": "--waiting-served-ratio", "default": 0.3,
             "moves": [("mul", 1.5), ("mul", 2), ("mul", 3)], "bounds": (0.1, 5.0),
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
            {"knob": "max_batch_size", "flag": "--max-batch-size", "default": 32,
             "moves": [("mul", 1.25), ("mul", 1.5), ("mul", 2)], "bounds": (1, 4096), "why": "larger batches"},
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
