"""vLLM V1 metric names, types and histogram buckets as stored in Prometheus (reference/llm-servers.md §1, §9).

A real fleet mixes vLLM generations, and each exposes its own set of names (§9, read from the released wheels):
`GENERATIONS` says which names of the renamed families each one shows. Everything else is the same family under
the same name in every generation.
"""
from __future__ import annotations

from dataclasses import dataclass

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
KV_USAGE_LEGACY = "vllm:gpu_cache_usage_perc"
CACHE_CONFIG_INFO = "vllm:cache_config_info"

PREEMPTIONS = "vllm:num_preemptions_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
REQUEST_SUCCESS = "vllm:request_success_total"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
PREFIX_QUERIES_LEGACY = "vllm:gpu_prefix_cache_queries_total"
PREFIX_HITS_LEGACY = "vllm:gpu_prefix_cache_hits_total"

TTFT = "vllm:time_to_first_token_seconds"
ITL = "vllm:inter_token_latency_seconds"
ITL_LEGACY = "vllm:time_per_output_token_seconds"
E2E = "vllm:e2e_request_latency_seconds"
QUEUE_TIME = "vllm:request_queue_time_seconds"

# NVIDIA dcgm-exporter, default counters (etc/default-counters.csv): all gauges.
GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"  # percent
GPU_FB_USED = "DCGM_FI_DEV_FB_USED"  # MiB
GPU_FB_FREE = "DCGM_FI_DEV_FB_FREE"  # MiB
GPU_XID = "DCGM_FI_DEV_XID_ERRORS"  # value of the last XID error (0: none)
GPU_GAUGES = (GPU_UTIL, GPU_FB_USED, GPU_FB_FREE, GPU_XID)
# The simulated card: an 80 GB GPU as DCGM reports its framebuffer, vLLM's default --gpu-memory-utilization
# preallocated at start, plus the CUDA context.
GPU_MEMORY_MIB = 81_559
GPU_MEMORY_UTILIZATION = 0.9
CUDA_CONTEXT_MIB = 420.0

FINISHED_REASONS = ("stop", "length", "abort", "error")


@dataclass(frozen=True)
class Generation:
    """The metric names one range of vLLM releases exposes by default for the families that were renamed."""

    name: str  # the release range, as `--generation` takes it
    kv_usage: tuple[str, ...]
    prefix_cache: tuple[tuple[str, str], ...]  # (queries, hits) counter pairs
    itl: tuple[str, ...]
    error_reason: bool  # finished_reason="error" for internal errors (0.13+); before, they are not counted
    prefix_unit_tokens: bool = True  # 0.8.5 counted prefix-cache blocks, not tokens

    def names(self) -> set[str]:
        return {*self.kv_usage, *(name for pair in self.prefix_cache for name in pair), *self.itl}


_NEW_PREFIX = (PREFIX_QUERIES, PREFIX_HITS)
_OLD_PREFIX = (PREFIX_QUERIES_LEGACY, PREFIX_HITS_LEGACY)
GENERATIONS = {g.name: g for g in (
    Generation("0.8.5-0.9.1", (KV_USAGE_LEGACY,), (_OLD_PREFIX,), (ITL_LEGACY,), False, prefix_unit_tokens=False),
    Generation("0.9.2-0.10.1", (KV_USAGE, KV_USAGE_LEGACY), (_NEW_PREFIX, _OLD_PREFIX), (ITL_LEGACY,), False),
    Generation("0.10.2-0.11", (KV_USAGE, KV_USAGE_LEGACY), (_NEW_PREFIX, _OLD_PREFIX), (ITL, ITL_LEGACY), False),
    Generation("0.12-0.14", (KV_USAGE,), (_NEW_PREFIX,), (ITL,), True),
    Generation("0.15+", (KV_USAGE,), (_NEW_PREFIX,), (ITL,), True),
)}
NEWEST = "0.15+"
OLDEST = "0.8.5-0.9.1"

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)
# vLLM's "request_latency" family: e2e, queue, prefill, decode and inference time share these.
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                           240.0, 480.0, 960.0, 1920.0, 7680.0)

HISTOGRAM_BUCKETS = {
    TTFT: TTFT_BUCKETS,
    ITL: ITL_BUCKETS,
    ITL_LEGACY: ITL_BUCKETS,
    E2E: REQUEST_LATENCY_BUCKETS,
    QUEUE_TIME: REQUEST_LATENCY_BUCKETS,
}


def exposed_names(name: str, generation: str) -> list[str]:
    """The names under which an instance of `generation` exposes the signal `name` (its newest name)."""
    gen = GENERATIONS[generation]
    renamed = {KV_USAGE: gen.kv_usage, ITL: gen.itl, PREFIX_QUERIES: tuple(q for q, _ in gen.prefix_cache),
               PREFIX_HITS: tuple(h for _, h in gen.prefix_cache)}
    return list(renamed.get(name, (name,)))


def le_label(bound: float) -> str:
    """`le` as prometheus_client writes it (Go-style float: 1.0, 2.5, 2560.0), so label matchers in rules
    written against a real vLLM scrape (`le="1.0"`) match the simulated series too."""
    return repr(float(bound))
