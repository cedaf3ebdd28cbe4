"""Hugging Face TGI (v3 router, metrics-exporter-prometheus 0.15) as the simulator exposes it
(reference/llm-servers.md §3 and §9).

What a rule written for TGI must cope with, and what this module therefore writes:
- no model or engine label: a series carries only the scrape labels (`job`, `instance`);
- counters without a `_total` suffix (`tgi_request_count`, `tgi_request_failure{err}`, ...);
- every `*_duration` histogram has 35 geometric buckets 0.0001 x 1.5^k, computed by repeated multiplication as
  router/src/server.rs does, so `le` values are odd floats (`0.49878850951194753`, `2.5251168294042348`);
- no TTFT histogram (queue + prefill stand in) and no KV gauge (the batch token budget stands in);
- `--max-concurrent-requests` (default 128): requests beyond it are refused at once as `err="overloaded"`, so
  the queue is capped and an overload shows as failures, not as an ever longer queue.
To keep files small, only the histograms rules and dashboards read are written: request, queue and mean
time-per-token durations, prefill batch inference (`tgi_batch_inference_duration{method="prefill"}`) and decode
forward steps (`tgi_batch_forward_duration{method="decode"}`); TGI also writes validation and per-method
inference, forward, decode, filter and concat durations. The token-length histograms (`tgi_request_input_length`,
`tgi_request_generated_tokens`) have 100 linear buckets in TGI; only their `+Inf` bucket, `_count` and `_sum` are
written (the sums are the token counters rules use).
"""
from __future__ import annotations

import numpy as np

from rules_engine.simulate import catalog
from rules_engine.simulate.fleet import FleetSpec, Histogram, InstanceSeries
from rules_engine.simulate.incidents import Modifiers
from rules_engine.simulate.server_series import Family, ServerSeries, series_fields


def duration_buckets() -> tuple[float, ...]:
    value, bounds = 0.0001, []
    for _ in range(35):
        value *= 1.5  # the same float operations as TGI, so the same `le` text
        bounds.append(value)
    return tuple(bounds)


DURATION_BUCKETS = duration_buckets()

QUEUE_SIZE = "tgi_queue_size"
BATCH_SIZE = "tgi_batch_current_size"
BATCH_MAX_TOKENS = "tgi_batch_current_max_tokens"
BATCH_TOTAL_TOKENS = "tgi_batch_max_total_tokens"
REQUEST_COUNT = "tgi_request_count"
REQUEST_SUCCESS = "tgi_request_success"
REQUEST_FAILURE = "tgi_request_failure"
BATCH_CONCAT = "tgi_batch_concat"
REQUEST_DURATION = "tgi_request_duration"
QUEUE_DURATION = "tgi_request_queue_duration"
TIME_PER_TOKEN = "tgi_request_mean_time_per_token_duration"
BATCH_INFERENCE_DURATION = "tgi_batch_inference_duration"
BATCH_FORWARD_DURATION = "tgi_batch_forward_duration"
GENERATED_TOKENS = "tgi_request_generated_tokens"
INPUT_LENGTH = "tgi_request_input_length"

FAMILIES = (
    Family(QUEUE_SIZE, "gauge", "Current queue size"),
    Family(BATCH_SIZE, "gauge", "Current batch size"),
    Family(BATCH_MAX_TOKENS, "gauge", "Maximum tokens for the current batch"),
    Family(BATCH_TOTAL_TOKENS, "gauge", "Maximum amount of tokens in total."),
    Family(REQUEST_COUNT, "counter", "Total number of requests received"),
    Family(REQUEST_SUCCESS, "counter", "Number of successful requests"),
    Family(REQUEST_FAILURE, "counter", "Number of failed requests"),
    Family(BATCH_CONCAT, "counter", "Number of batch concatenates"),
    Family(REQUEST_DURATION, "histogram", "Request duration", buckets=DURATION_BUCKETS),
    Family(QUEUE_DURATION, "histogram", "Request queue duration", buckets=DURATION_BUCKETS),
    Family(TIME_PER_TOKEN, "histogram", "Mean time per token per request", buckets=DURATION_BUCKETS),
    Family(BATCH_INFERENCE_DURATION, "histogram", "Batch inference duration", buckets=DURATION_BUCKETS),
    Family(BATCH_FORWARD_DURATION, "histogram", "Batch forward duration per method (prefill or decode)",
           buckets=DURATION_BUCKETS),
    Family(GENERATED_TOKENS, "histogram", "Maximum number of tokens for generation"),
    Family(INPUT_LENGTH, "histogram", "Input sequence length"),
)

# Incident kind -> the TGI series that show it (the truth file's expected_signals).
EXPECTED_SIGNALS = {
    "queue_buildup": (QUEUE_SIZE, QUEUE_DURATION, REQUEST_FAILURE, REQUEST_DURATION),
    "kv_pressure": (BATCH_MAX_TOKENS, BATCH_TOTAL_TOKENS),
    "kv_linear_climb": (BATCH_MAX_TOKENS, BATCH_TOTAL_TOKENS),
    "ttft_spike": (BATCH_INFERENCE_DURATION, REQUEST_DURATION),
    "itl_regression": (BATCH_FORWARD_DURATION, TIME_PER_TOKEN, REQUEST_DURATION),
    "error_burst": (REQUEST_FAILURE,),
    "restart": (),
}
UNSUPPORTED_INCIDENTS = {"low_cache_hit": "TGI exposes no prefix-cache metric"}

MAX_CONCURRENT_REQUESTS = 128  # TGI's default --max-concurrent-requests
VALIDATION_ERROR_SHARE = 0.002  # bad input: refused before the queue
SIGMA = {QUEUE_DURATION: 1.0, REQUEST_DURATION: 0.45, TIME_PER_TOKEN: 0.3,
         "prefill": 0.5, "decode": 0.2}


def labels(series: InstanceSeries) -> dict[str, str]:
    return {"job": "tgi", "instance": series.instance.name}


def derive(spec: FleetSpec, base: InstanceSeries, mods: Modifiers) -> ServerSeries:
    """TGI's exposition of one instance's load-model state."""
    instance, model = base.instance, base.instance.model
    rng = np.random.default_rng([spec.seed, instance.index + 1, 101])
    n, dt = base.times.size, float(spec.step)
    inc = base.increments
    # Reached the model; a client that aborts mid-generation is not a failure to the router.
    requests = base.finished_requests
    served_rate = np.maximum(requests / dt, 0.05)

    # The router admits at most max_concurrent_requests in flight: the queue is capped, the rest is refused.
    running = np.minimum(base.running, MAX_CONCURRENT_REQUESTS)
    room = MAX_CONCURRENT_REQUESTS - running
    queue = np.minimum(base.waiting, room)
    growth = np.maximum(np.diff(base.waiting, prepend=base.waiting[:1]), 0)
    overloaded = np.where(base.waiting > room, growth, 0).astype(np.int64)
    generation_errors = inc["success_error"]  # engine errors (error_burst, CUDA OOM): err="generation"
    validation_errors = rng.binomial(requests, VALIDATION_ERROR_SHARE)
    success = requests - generation_errors
    received = requests + validation_errors + overloaded + np.maximum(np.diff(queue, prepend=queue[:1]), 0)

    total_tokens = model.num_gpu_blocks * model.block_size  # what warmup sets --max-batch-total-tokens to
    current_max_tokens = np.rint(base.kv_usage * total_tokens)

    itl = base.histograms[catalog.ITL].mean
    pressure = np.clip((base.kv_usage - 0.9) / 0.1, 0.0, 1.0)
    rho = np.clip(requests / dt / model.capacity_rps, 0.0, 1.0)
    prefill = model.prefill_s * (1.0 + 0.8 * rho ** 2) * mods.prefill_factor * (1.0 + 0.5 * pressure)
    queue_time = 0.002 + queue / served_rate
    tokens_per_request = np.where(requests > 0, inc["generation_tokens"] / np.maximum(requests, 1),
                                  model.generation_tokens)
    inference = prefill + tokens_per_request * itl
    validation = 0.003

    def jitter(mean: np.ndarray) -> np.ndarray:
        return mean * np.exp(rng.normal(0.0, 0.05, n))

    def hist(mean: np.ndarray, observations: np.ndarray, sigma) -> Histogram:
        return Histogram(jitter(mean), observations.astype(np.int64), sigma, rng.random(n))

    busy = base.running > 0
    decode_steps = np.where(busy, rng.poisson(np.where(busy, dt / np.maximum(itl, 1e-3), 0.0) * 0.9), 0)
    prefill_batches = rng.poisson(requests * 0.4)
    queue_sigma = np.where(queue > 1, 0.3, SIGMA[QUEUE_DURATION])
    histograms = {
        REQUEST_DURATION: [({}, hist(queue_time + validation + inference, success, SIGMA[REQUEST_DURATION]))],
        QUEUE_DURATION: [({}, hist(queue_time, success, queue_sigma))],
        TIME_PER_TOKEN: [({}, hist(inference / np.maximum(tokens_per_request, 1.0), success, SIGMA[TIME_PER_TOKEN]))],
        BATCH_INFERENCE_DURATION: [({"method": "prefill"}, hist(prefill * 1.05, prefill_batches, SIGMA["prefill"]))],
        BATCH_FORWARD_DURATION: [({"method": "decode"}, hist(itl, decode_steps, SIGMA["decode"]))],
        GENERATED_TOKENS: [({}, Histogram(tokens_per_request, success, 0.5, rng.random(n)))],
        INPUT_LENGTH: [({}, Histogram(np.where(requests > 0, inc["prompt_tokens"] / np.maximum(requests, 1),
                                               model.prompt_tokens), success, 0.5, rng.random(n)))],
    }
    concat = rng.poisson(prefill_batches * 0.5)
    backpressure = rng.binomial(concat, np.clip(0.3 + 0.5 * rho, 0.0, 1.0))
    return ServerSeries(
        **series_fields(base), labels=labels(base),
        gauge_values={QUEUE_SIZE: [({}, queue)], BATCH_SIZE: [({}, running)],
                      BATCH_MAX_TOKENS: [({}, current_max_tokens)],
                      BATCH_TOTAL_TOKENS: [({}, np.full(n, float(total_tokens)))]},
        counter_increments={
            REQUEST_COUNT: [({}, received)], REQUEST_SUCCESS: [({}, success)],
            REQUEST_FAILURE: [({"err": "overloaded"}, overloaded), ({"err": "validation"}, validation_errors),
                              ({"err": "generation"}, generation_errors)],
            BATCH_CONCAT: [({"reason": "backpressure"}, backpressure), ({"reason": "wait_exceeded"},
                                                                         concat - backpressure)]},
        histogram_values=histograms)
