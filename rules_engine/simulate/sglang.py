"""SGLang (0.5.x, `--enable-metrics`) as the simulator exposes it (reference/llm-servers.md §4 and §9).

What a rule written for SGLang must cope with, and what this module therefore writes:
- scheduler metrics (`sglang:num_queue_reqs`, `sglang:token_usage`, `sglang:num_retracted_requests_total`, ...)
  carry `model_name, engine_type, tp_rank, pp_rank, moe_ep_rank`, one series per pipeline rank: an instance
  served with `--pp-size 2` (here: the largest model) writes each of them twice, so a `sum` double counts and
  the rules take `max` over ranks;
- tokenizer metrics (tokens, requests, TTFT/ITL/e2e/queue-time histograms) carry `model_name, engine_type` only;
- `sglang:cache_hit_rate` and `sglang:gen_throughput` are gauges already averaged over the scheduler's logging
  interval (written here per scrape step): rules must not `rate` them; the counters serve windowed rates;
- counters are declared with their `_total` suffix; histogram buckets are SGLang's defaults.
"""
from __future__ import annotations

import numpy as np

from rules_engine.simulate import catalog
from rules_engine.simulate.fleet import FleetSpec, Histogram, InstanceSeries
from rules_engine.simulate.incidents import Modifiers
from rules_engine.simulate.server_series import Family, ServerSeries, series_fields

RUNNING = "sglang:num_running_reqs"
QUEUE = "sglang:num_queue_reqs"
TOKEN_USAGE = "sglang:token_usage"
USED_TOKENS = "sglang:num_used_tokens"
MAX_TOTAL_TOKENS = "sglang:max_total_num_tokens"
GEN_THROUGHPUT = "sglang:gen_throughput"
CACHE_HIT_RATE = "sglang:cache_hit_rate"
RETRACTED_REQS = "sglang:num_retracted_reqs"
PROMPT_TOKENS = "sglang:prompt_tokens"
GENERATION_TOKENS = "sglang:generation_tokens"
CACHED_TOKENS = "sglang:cached_tokens"
REQUESTS = "sglang:num_requests"
ABORTED = "sglang:num_aborted_requests"
RETRACTIONS = "sglang:num_retracted_requests"
TTFT = "sglang:time_to_first_token_seconds"
ITL = "sglang:inter_token_latency_seconds"
E2E = "sglang:e2e_request_latency_seconds"
QUEUE_TIME = "sglang:queue_time_seconds"

TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0, 400.0)
ITL_BUCKETS = (0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08, 0.1, 0.2, 0.4,
               0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0)
E2E_BUCKETS = TTFT_BUCKETS + (600.0, 1200.0, 1800.0, 2400.0)
QUEUE_TIME_BUCKETS = ((0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 15.0, 20.0)
                      + tuple(float(v) for v in range(30, 101, 10)) + tuple(float(v) for v in range(200, 1001, 100))
                      + tuple(float(v) for v in range(1200, 2001, 200)) + (2500.0, 3000.0))

FAMILIES = (
    Family(RUNNING, "gauge", "The number of running requests."),
    Family(QUEUE, "gauge", "The number of requests in the waiting queue."),
    Family(TOKEN_USAGE, "gauge", "The token usage.", decimals=4),
    Family(USED_TOKENS, "gauge", "The number of used tokens."),
    Family(MAX_TOTAL_TOKENS, "gauge", "Maximum total number of tokens in the KV cache pool."),
    Family(GEN_THROUGHPUT, "gauge", "The generation throughput (token/s).", decimals=2),
    Family(CACHE_HIT_RATE, "gauge", "The prefix cache hit rate.", decimals=4),
    Family(RETRACTED_REQS, "gauge", "The number of retracted requests."),
    Family(PROMPT_TOKENS, "counter", "Number of prefill tokens processed.", "_total"),
    Family(GENERATION_TOKENS, "counter", "Number of generation tokens processed.", "_total"),
    Family(CACHED_TOKENS, "counter", "Number of cached prompt tokens.", "_total"),
    Family(REQUESTS, "counter", "Number of requests processed.", "_total"),
    Family(ABORTED, "counter", "Number of requests aborted.", "_total"),
    Family(RETRACTIONS, "counter", "Total number of retracted requests.", "_total"),
    Family(TTFT, "histogram", "Histogram of time to first token in seconds.", buckets=TTFT_BUCKETS),
    Family(ITL, "histogram", "Histogram of inter-token latency in seconds.", buckets=ITL_BUCKETS),
    Family(E2E, "histogram", "Histogram of End-to-end request latency in seconds", buckets=E2E_BUCKETS),
    Family(QUEUE_TIME, "histogram", "Histogram of queueing time in seconds.", buckets=QUEUE_TIME_BUCKETS),
)

# Incident kind -> the SGLang series that show it (the truth file's expected_signals; counters with `_total`).
EXPECTED_SIGNALS = {
    "queue_buildup": (QUEUE, QUEUE_TIME, TTFT, E2E),
    "kv_pressure": (TOKEN_USAGE, RETRACTIONS + "_total", ITL),
    "kv_linear_climb": (TOKEN_USAGE, RETRACTIONS + "_total"),
    "ttft_spike": (TTFT, E2E),
    "itl_regression": (ITL, E2E),
    "error_burst": (ABORTED + "_total",),
    "low_cache_hit": (CACHED_TOKENS + "_total", CACHE_HIT_RATE),
    "restart": (),
}
UNSUPPORTED_INCIDENTS: dict[str, str] = {}

BASE_ABORT_SHARE = 0.005
STREAMING_SHARE = 0.8


def pipeline_ranks(series: InstanceSeries) -> int:
    """The largest model is served with --pp-size 2: its scheduler metrics come twice."""
    return 2 if series.instance.model.capacity_rps < 5 else 1


def labels(series: InstanceSeries) -> dict[str, str]:
    return {"job": "sglang", "instance": series.instance.name, "model_name": series.instance.model.name,
            "engine_type": "unified"}


def derive(spec: FleetSpec, base: InstanceSeries, mods: Modifiers) -> ServerSeries:
    """SGLang's exposition of one instance's load-model state."""
    instance, model = base.instance, base.instance.model
    rng = np.random.default_rng([spec.seed, instance.index + 1, 202])
    n, dt = base.times.size, float(spec.step)
    inc = base.increments
    requests = base.finished_requests
    # SGLang counts an internal error as an abort; client aborts on top of the base share.
    share = np.where(np.isnan(mods.abort_share), BASE_ABORT_SHARE, mods.abort_share)
    aborted = inc["success_error"] + rng.binomial(requests - inc["success_error"], np.clip(share, 0.0, 1.0))
    streaming = rng.binomial(requests, STREAMING_SHARE)
    total_tokens = model.num_gpu_blocks * model.block_size
    prompt = inc["prompt_tokens"]
    cached = inc["prefix_hits"]

    ranks = pipeline_ranks(base)

    def per_rank(values: np.ndarray, spread: float = 0.0) -> list[tuple[dict[str, str], np.ndarray]]:
        """One series per pipeline rank; later stages hold their own share of the KV pool, so usage differs a
        little by rank."""
        out = []
        for rank in range(ranks):
            rank_values = values if rank == 0 or not spread else np.clip(
                values + rng.normal(0.0, spread, n), 0.0, 1.0)
            out.append(({"tp_rank": "0", "pp_rank": str(rank), "moe_ep_rank": "0"}, rank_values))
        return out

    def hist(name: str, observations: np.ndarray) -> Histogram:
        source = base.histograms[name]
        return Histogram(source.mean, observations.astype(np.int64), source.sigma, source.uniform)

    return ServerSeries(
        **series_fields(base), labels=labels(base),
        gauge_values={
            RUNNING: per_rank(base.running), QUEUE: per_rank(base.waiting),
            TOKEN_USAGE: per_rank(base.kv_usage, 0.004),
            USED_TOKENS: per_rank(np.rint(base.kv_usage * total_tokens)),
            MAX_TOTAL_TOKENS: per_rank(np.full(n, float(total_tokens))),
            GEN_THROUGHPUT: per_rank(inc["generation_tokens"] / dt),
            CACHE_HIT_RATE: per_rank(np.where(prompt > 0, cached / np.maximum(prompt, 1), 0.0)),
            RETRACTED_REQS: per_rank(inc["preemptions"]),
        },
        counter_increments={
            PROMPT_TOKENS: [({}, prompt)], GENERATION_TOKENS: [({}, inc["generation_tokens"])],
            CACHED_TOKENS: [({"cache_source": "device"}, cached)],
            REQUESTS: [({"is_streaming": "true"}, streaming), ({"is_streaming": "false"}, requests - streaming)],
            ABORTED: [({}, aborted)],
            RETRACTIONS: per_rank(inc["preemptions"]),
        },
        histogram_values={
            TTFT: [({"is_streaming": "true"}, hist(catalog.TTFT, streaming)),
                   ({"is_streaming": "false"}, hist(catalog.TTFT, requests - streaming))],
            ITL: [({}, hist(catalog.ITL, base.histograms[catalog.ITL].observations))],
            E2E: [({}, hist(catalog.E2E, requests))],
            QUEUE_TIME: [({}, hist(catalog.QUEUE_TIME, requests))],
        })
