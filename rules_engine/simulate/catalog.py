"""vLLM V1 metric names, types and histogram buckets as stored in Prometheus (reference/llm-servers.md §1).

Legacy instances (vLLM before 0.9 / 0.11) expose the old names of the KV-usage gauge and the ITL histogram;
everything else is the same family under the same name.
"""
from __future__ import annotations

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

TTFT = "vllm:time_to_first_token_seconds"
ITL = "vllm:inter_token_latency_seconds"
ITL_LEGACY = "vllm:time_per_output_token_seconds"
E2E = "vllm:e2e_request_latency_seconds"
QUEUE_TIME = "vllm:request_queue_time_seconds"

FINISHED_REASONS = ("stop", "length", "abort")

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


def current_name(name: str, legacy: bool) -> str:
    """The name an instance exposes for a signal: the pre-rename name on legacy instances."""
    if not legacy:
        return name
    return {KV_USAGE: KV_USAGE_LEGACY, ITL: ITL_LEGACY}.get(name, name)


def le_label(bound: float) -> str:
    """`le` as prometheus_client writes it (Go-style float: 1.0, 2.5, 2560.0), so label matchers in rules
    written against a real vLLM scrape (`le="1.0"`) match the simulated series too."""
    return repr(float(bound))
