"""The load model of a vLLM fleet: per-instance latent state per scrape step, vectorized over time.

Causality, per instance and step (all numpy over the whole range, no per-step Python):
arrivals (diurnal x weekly x AR(1) noise x short spikes x incidents) -> queue backlog (Lindley recursion
against capacity) -> served rate -> running requests (Little's law) -> KV usage -> preemptions; queue time
from waiting / served; TTFT = queue time + prefill; ITL grows with batch size and KV pressure;
e2e = TTFT + generated tokens x ITL. Per-step observation counts are Poisson draws from the served rate;
latency histograms come from a lognormal whose mean the model sets (see `histogram_counts`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import lfilter
from scipy.special import ndtr

from rules_engine.simulate import catalog
from rules_engine.simulate.incidents import Modifiers

DAY = 86400.0


@dataclass(frozen=True)
class ModelProfile:
    """How one served model behaves on one instance (numbers of the order seen on a single modern GPU node)."""

    name: str
    capacity_rps: float  # completed requests/s when saturated
    itl_s: float  # mean inter-token latency at light load
    prefill_s: float  # mean prefill time at light load
    prompt_tokens: float  # mean per request
    generation_tokens: float
    prefix_hit_rate: float
    num_gpu_blocks: int
    block_size: int = 16
    max_num_seqs: int = 256


MODELS = (
    ModelProfile("llama-3.1-8b-instruct", capacity_rps=24.0, itl_s=0.012, prefill_s=0.06, prompt_tokens=900,
                 generation_tokens=220, prefix_hit_rate=0.45, num_gpu_blocks=27_000),
    ModelProfile("qwen2.5-32b-instruct", capacity_rps=9.0, itl_s=0.028, prefill_s=0.18, prompt_tokens=1200,
                 generation_tokens=300, prefix_hit_rate=0.35, num_gpu_blocks=9_500),
    ModelProfile("llama-3.1-70b-instruct", capacity_rps=4.5, itl_s=0.045, prefill_s=0.35, prompt_tokens=1500,
                 generation_tokens=350, prefix_hit_rate=0.30, num_gpu_blocks=5_200),
)

# Lognormal shape per latency histogram: queue times are the most skewed (most requests barely wait).
LATENCY_SIGMA = {catalog.TTFT: 0.5, catalog.ITL: 0.3, catalog.E2E: 0.45, catalog.QUEUE_TIME: 1.0}

KV_AT_CAPACITY = 0.8  # KV usage when the instance serves at full capacity without incident
BASE_ABORT_SHARE = 0.01  # client aborts (a chat UI's stop button, client timeouts)
BASE_ERROR_SHARE = 0.0005  # internal engine errors (HTTP 500)
BASE_LENGTH_SHARE = 0.12


@dataclass(frozen=True)
class FleetSpec:
    """What to simulate. Times are unix seconds; `step` is the scrape interval in whole seconds."""

    start: float
    end: float
    instances: int = 8
    step: int = 30
    seed: int = 0
    utilization: float = 0.42  # mean arrivals / capacity over a day (peaks reach ~0.8)
    legacy_fraction: float = 0.0  # share of instances on the oldest generation (catalog.OLDEST)
    # vLLM generations (catalog.GENERATIONS) the other instances run, assigned round-robin; `instance_generations`
    # pins single instances ({"vllm-3:8000": "0.9.2-0.10.1"}).
    generations: tuple[str, ...] = (catalog.NEWEST,)
    instance_generations: tuple[tuple[str, str], ...] = ()
    gpu: bool = True  # also write the node's DCGM exporter series (instance `vllm-N:9400`)
    restarts_per_day: float = 0.15  # random restarts per instance
    gap_probability: float = 0.002  # chance a single scrape is missed
    long_gaps_per_day: float = 0.3  # runs of 2-20 missed scrapes per instance
    spikes_per_day: float = 3.0  # short (1-3 min) load spikes per instance
    models: tuple[ModelProfile, ...] = MODELS
    # TGI and SGLang instances after the vLLM ones (simulate/servers.py).
    tgi_instances: int = 0
    sglang_instances: int = 0

    def __post_init__(self) -> None:
        if min(self.instances, self.tgi_instances, self.sglang_instances) < 0 or \
                self.instances + self.tgi_instances + self.sglang_instances < 1:
            raise ValueError(f"instances must be >= 1, got {self.instances}")
        if self.step < 1 or int(self.step) != self.step:
            raise ValueError(f"step must be a whole number of seconds >= 1, got {self.step}")
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if not 0.0 <= self.legacy_fraction <= 1.0:
            raise ValueError(f"legacy_fraction must be within [0, 1], got {self.legacy_fraction}")
        unknown = [g for g in (*self.generations, *(g for _, g in self.instance_generations))
                   if g not in catalog.GENERATIONS]
        if unknown or not self.generations:
            raise ValueError(f"unknown vLLM generation(s) {', '.join(unknown) or '(none given)'}; known: "
                             f"{', '.join(catalog.GENERATIONS)}")


@dataclass(frozen=True)
class Instance:
    index: int
    name: str  # the `instance` label
    model: ModelProfile
    generation: str  # a key of catalog.GENERATIONS
    scale: float  # share of traffic relative to its peers
    phase_hours: float  # shift of its diurnal peak (users in other time zones)
    scrape_offset: int  # seconds past the step grid at which Prometheus scrapes it
    server: str = "vllm"  # vllm | tgi | sglang (simulate/servers.py)

    @property
    def legacy(self) -> bool:
        """Exposes only the pre-0.9.2 names of the renamed families."""
        return self.generation == catalog.OLDEST

    def labels(self) -> dict[str, str]:
        return {"job": "vllm", "instance": self.name, "model_name": self.model.name, "engine": "0"}

    def gpu_labels(self) -> dict[str, str]:
        """Labels of the DCGM exporter on the instance's node (dcgm-exporter's defaults, one GPU a node)."""
        host = self.name.split(":")[0]
        return {"job": "dcgm", "instance": f"{host}:9400", "gpu": "0", "UUID": f"GPU-{self.index:08x}-sim",
                "device": "nvidia0", "modelName": "NVIDIA H100 80GB HBM3", "Hostname": host}


def fleet_instances(spec: FleetSpec) -> list[Instance]:
    """The fleet: models assigned round-robin, per-instance jitter drawn from the seed."""
    rng = np.random.default_rng([spec.seed, 0])
    scales = rng.uniform(0.85, 1.15, spec.instances)
    phases = rng.uniform(-1.5, 1.5, spec.instances)
    offsets = rng.integers(0, spec.step, spec.instances)
    legacy = set(rng.permutation(spec.instances)[:int(round(spec.legacy_fraction * spec.instances))].tolist())
    pinned = dict(spec.instance_generations)

    def generation(i: int) -> str:
        name = f"vllm-{i}:8000"
        if name in pinned:
            return pinned[name]
        return catalog.OLDEST if i in legacy else spec.generations[i % len(spec.generations)]

    return [Instance(index=i, name=f"vllm-{i}:8000", model=spec.models[i % len(spec.models)],
                     generation=generation(i), scale=float(scales[i]), phase_hours=float(phases[i]),
                     scrape_offset=int(offsets[i]))
            for i in range(spec.instances)]


def scrape_times(spec: FleetSpec, instance: Instance) -> np.ndarray:
    """Whole unix seconds at which this instance is scraped within [start, end]."""
    first = int(np.ceil(spec.start / spec.step)) * spec.step + instance.scrape_offset
    if first - spec.step >= spec.start:
        first -= spec.step
    return np.arange(first, int(spec.end) + 1, spec.step, dtype=np.int64)


@dataclass
class Histogram:
    mean: np.ndarray  # mean latency per step (seconds)
    observations: np.ndarray  # observations per step (int64)
    sigma: np.ndarray | float  # lognormal shape, per step or constant
    uniform: np.ndarray  # per-step rounding offsets in [0, 1), so bucket counts stay integers and cumulative


@dataclass
class InstanceSeries:
    """One instance's simulated state per scrape step; counters as per-step increments."""

    instance: Instance
    times: np.ndarray
    present: np.ndarray  # the scrape succeeded (bool)
    restart: np.ndarray  # first step of a new process: counters start over here (bool)
    running: np.ndarray
    waiting: np.ndarray
    kv_usage: np.ndarray
    gpu: dict[str, np.ndarray]  # DCGM gauge name -> value per step
    increments: dict[str, np.ndarray] = field(default_factory=dict)  # counter series key -> int64 per step
    histograms: dict[str, Histogram] = field(default_factory=dict)  # catalog name (current) -> Histogram

    @property
    def finished_requests(self) -> np.ndarray:
        """Requests that reached the engine and finished per step, whatever the reason (stop, length, abort, error)."""
        inc = self.increments
        return inc["success_stop"] + inc["success_length"] + inc["success_abort"] + inc["success_error"]


def _ar1(rng: np.random.Generator, n: int, phi: float, sd: float) -> np.ndarray:
    """Stationary AR(1) noise: slow wander rather than white noise, like real traffic."""
    return lfilter([1.0], [1.0, -phi], rng.normal(0.0, sd * np.sqrt(1 - phi * phi), n))


def _windows(rng: np.random.Generator, n: int, count: int, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` random [start, stop) step windows of length low..high, as a boolean mask and a per-window id."""
    mask = np.zeros(n, bool)
    starts = rng.integers(0, n, count)
    lengths = rng.integers(low, high + 1, count)
    window_id = np.full(n, -1)
    for k, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist())):  # per window, not per sample
        mask[start:start + length] = True
        window_id[start:start + length] = k
    return mask, window_id


def lindley(increments: np.ndarray, reset: np.ndarray) -> np.ndarray:
    """Queue backlog Q_t = max(0, Q_{t-1} + x_t), emptied where `reset`, without a Python loop:
    Q = S - running minimum of S (S the cumulative sum, starting from 0)."""
    x = increments.copy()
    # A step that empties the queue: an increment more negative than anything that could have accumulated.
    x[reset] = -(np.abs(increments).sum() + 1.0)
    s = np.cumsum(x)
    return s - np.minimum(np.minimum.accumulate(s), 0.0)


def steps_since(flags: np.ndarray) -> np.ndarray:
    """Steps since the last True in `flags` (a large number before the first)."""
    idx = np.arange(flags.size)
    last = np.maximum.accumulate(np.where(flags, idx, -10 ** 9))
    return idx - last


def cumulative(increments: np.ndarray, restart: np.ndarray) -> np.ndarray:
    """Counter values from per-step increments (axis 0), starting over from 0 at each restart step."""
    total = np.cumsum(increments, axis=0)
    before = total - increments
    flags = restart.reshape((-1,) + (1,) * (increments.ndim - 1))
    offset = np.maximum.accumulate(np.where(flags, before, 0), axis=0)
    return total - offset


def histogram_counts(hist: Histogram, bounds: tuple[float, ...], restart: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative `_bucket` counts (steps x (len(bounds)+1), last column +Inf), `_count` and `_sum`.

    Each step's n observations are spread over buckets by the lognormal CDF with floor(n*F(le) + u): the same u
    for every bucket keeps the counts non-decreasing in `le`, and F(+Inf) = 1 makes the +Inf bucket equal n.
    """
    sigma = np.broadcast_to(np.asarray(hist.sigma, dtype=np.float64), hist.mean.shape)
    median = hist.mean * np.exp(-0.5 * sigma ** 2)
    z = (np.log(np.asarray(bounds))[None, :] - np.log(median)[:, None]) / sigma[:, None]
    cdf = np.concatenate([ndtr(z), np.ones((median.size, 1))], axis=1)
    n = hist.observations.astype(np.float64)[:, None]
    per_step = np.floor(n * cdf + hist.uniform[:, None]).astype(np.int64)
    per_step[:, -1] = hist.observations  # exact, whatever floating point does to F = 1
    buckets = cumulative(per_step, restart)
    count = buckets[:, -1]
    sums = cumulative(hist.observations * hist.mean, restart)
    return buckets, count, sums


def simulate_instance(spec: FleetSpec, instance: Instance, times: np.ndarray, mods: Modifiers
                      ) -> InstanceSeries:
    """Run the load model for one instance over its scrape times, with incident modifiers applied."""
    rng = np.random.default_rng([spec.seed, instance.index + 1])
    model = instance.model
    n = times.size
    dt = float(spec.step)
    days = (times[-1] - times[0]) / DAY if n > 1 else 0.0
    t = times.astype(np.float64)

    # Availability: incident downtime plus random restarts (the process is gone for 1-4 scrapes).
    random_down, _ = _windows(rng, n, rng.poisson(spec.restarts_per_day * days), 1, 4)
    down = mods.down | random_down
    restart = np.zeros(n, bool)
    restart[1:] = down[:-1] & ~down[1:]
    gaps, _ = _windows(rng, n, rng.poisson(spec.long_gaps_per_day * days), 2, 20)
    gaps |= rng.random(n) < spec.gap_probability
    present = ~down & ~gaps

    # Arrivals.
    hours = (t % DAY) / 3600.0
    diurnal = 1.0 + 0.35 * np.sin(2 * np.pi * (hours - 8.0 - instance.phase_hours) / 24.0)  # peak ~14:00 UTC
    weekly = 1.0 - 0.1 * np.cos(2 * np.pi * ((t / DAY - 2.5) % 7.0) / 7.0)  # unix day 2.5 = Saturday noon
    noise = np.exp(_ar1(rng, n, 0.97, 0.06))
    # Short bursts stay below what a `for: 5m` rule would catch: they are noise, not incidents.
    spike_mask, spike_id = _windows(rng, n, rng.poisson(spec.spikes_per_day * days), 2, 4)
    spike_factor = rng.uniform(1.15, 1.5, max(1, spike_id.max() + 1))
    spikes = np.where(spike_mask, spike_factor[spike_id], 1.0)
    nominal = model.capacity_rps
    running_at_capacity = nominal * (model.prefill_s * 1.8 + model.generation_tokens * model.itl_s * 1.6)
    # A hung engine (capacity 0) or a slow GPU (a fraction) serves less than it should; a batch capped below what
    # the load needs (a too-low --max-num-seqs) serves in proportion to the slots it has.
    capacity = np.maximum(nominal * mods.capacity_factor * np.minimum(1.0, mods.running_cap / running_at_capacity),
                          1e-6)
    arrivals = nominal * spec.utilization * instance.scale * diurnal * weekly * noise * spikes
    arrivals = np.maximum(arrivals, mods.load_floor * nominal)
    # After a restart the load balancer sends traffic back gradually.
    since_restart = steps_since(restart)
    arrivals *= np.where(since_restart < 10 ** 8, 1.0 - np.exp(-(since_restart + 1) / 2.0), 1.0)
    arrivals[down] = 0.0

    # Queue and service.
    backlog = lindley((arrivals - capacity) * dt, down)
    drained = np.diff(backlog, prepend=0.0) / dt
    served = np.clip(arrivals - drained, 0.0, capacity)
    served[down] = 0.0
    rho = served / capacity
    offered = np.minimum(arrivals / capacity, 0.97)
    steady_waiting = 0.5 * offered ** 8 / (1.0 - offered)  # batching absorbs load until close to capacity

    itl = model.itl_s * (1.0 + 0.6 * rho ** 2) * mods.itl_factor
    prefill = model.prefill_s * (1.0 + 0.8 * rho ** 2) * mods.prefill_factor
    service = prefill + model.generation_tokens * itl
    # Requests of a hung engine keep their batch slots (and KV blocks) while nothing completes.
    in_flight = np.where(mods.capacity_factor < 1.0, np.minimum(arrivals, nominal), served)
    running = np.minimum(np.minimum(in_flight * service, model.max_num_seqs), mods.running_cap)
    kv = KV_AT_CAPACITY * running / running_at_capacity * np.exp(rng.normal(0.0, 0.02, n))
    kv = np.maximum(kv, mods.kv_floor * (1.0 + rng.normal(0.0, 0.006, n)))
    kv = np.where(np.isnan(mods.kv_override), kv, mods.kv_override + rng.normal(0.0, 0.004, n))
    kv = np.clip(kv, 0.0, 1.0)
    kv[down] = 0.0
    pressure = np.clip((kv - 0.9) / 0.1, 0.0, 1.0)  # preemptions start when free KV blocks run out
    itl = itl * (1.0 + 0.3 * pressure)
    preempt_rate = served * 0.3 * pressure ** 2
    running_now = np.rint(running * np.exp(rng.normal(0.0, 0.05, n))).astype(np.int64)
    waiting_now = (np.rint(backlog) + rng.poisson(steady_waiting + 0.05 * pressure * running)).astype(np.int64)
    waiting_now[down] = 0
    running_now[down] = 0
    queue_time = 0.002 + waiting_now / np.maximum(served, 0.05)
    ttft = queue_time + prefill * (1.0 + 0.5 * pressure)
    e2e = ttft + model.generation_tokens * itl

    # Per-step counts.
    requests = rng.poisson(served * dt)
    generated = rng.poisson(requests * model.generation_tokens)
    prompt = rng.poisson(requests * model.prompt_tokens)
    # GPU framebuffer: vLLM preallocates its share at start; another process (or a leak) can take the rest, and
    # then CUDA allocations inside the engine fail: internal errors.
    fb_used = (catalog.GPU_MEMORY_MIB * catalog.GPU_MEMORY_UTILIZATION + catalog.CUDA_CONTEXT_MIB
               + mods.fb_extra) + rng.normal(0.0, 4.0, n)
    fb_used = np.clip(fb_used, 0.0, catalog.GPU_MEMORY_MIB)
    fb_used[down] = 380.0  # the CUDA context of the exporter's own probes only
    oom = np.clip((fb_used / catalog.GPU_MEMORY_MIB - 0.985) / 0.015, 0.0, 1.0) * 0.2
    error_share = np.where(np.isnan(mods.error_share), BASE_ERROR_SHARE, mods.error_share) + oom
    abort_share = np.where(np.isnan(mods.abort_share), BASE_ABORT_SHARE, mods.abort_share)
    errored = rng.binomial(requests, np.clip(error_share, 0.0, 1.0))
    aborted = rng.binomial(requests - errored, np.clip(abort_share, 0.0, 1.0))
    truncated = rng.binomial(requests - errored - aborted,
                             np.clip(BASE_LENGTH_SHARE / (1.0 - abort_share), 0.0, 1.0))
    if not catalog.GENERATIONS[instance.generation].error_reason:  # before 0.13 an internal error is an abort
        aborted, errored = aborted + errored, np.zeros_like(errored)
    hit_rate = np.clip(model.prefix_hit_rate * mods.hit_factor * np.exp(_ar1(rng, n, 0.9, 0.05)), 0.0, 1.0)
    hits = rng.binomial(prompt, hit_rate)
    increments = {
        "preemptions": rng.poisson(preempt_rate * dt),
        "prompt_tokens": prompt,
        "generation_tokens": generated,
        "success_stop": requests - errored - aborted - truncated,
        "success_length": truncated,
        "success_abort": aborted,
        "success_error": errored,
        "prefix_queries": prompt,
        "prefix_hits": hits,
    }
    for values in increments.values():
        values[down] = 0

    def jitter(mean: np.ndarray) -> np.ndarray:
        return mean * np.exp(rng.normal(0.0, 0.05, n))

    # Generations that expose both ITL names fill both from the same observations, as vLLM does.
    itl_hist = Histogram(jitter(itl), np.maximum(generated - requests, 0), LATENCY_SIGMA[catalog.ITL], rng.random(n))
    histograms = {
        catalog.TTFT: Histogram(jitter(ttft), requests, LATENCY_SIGMA[catalog.TTFT], rng.random(n)),
        **{name: itl_hist for name in catalog.GENERATIONS[instance.generation].itl},
        catalog.E2E: Histogram(jitter(e2e), requests, LATENCY_SIGMA[catalog.E2E], rng.random(n)),
        # A saturated FIFO queue makes every request wait about backlog / capacity: the spread narrows.
        catalog.QUEUE_TIME: Histogram(jitter(queue_time), requests,
                                      np.where(backlog > 1.0, 0.3, LATENCY_SIGMA[catalog.QUEUE_TIME]),
                                      rng.random(n)),
    }
    busy = np.where(down, 0.0, np.clip(served / nominal * 1.1 + rng.normal(0.0, 0.03, n), 0.0, 1.0))
    gpu = {
        catalog.GPU_UTIL: np.rint(100.0 * busy),
        catalog.GPU_FB_USED: np.rint(fb_used),
        catalog.GPU_FB_FREE: np.rint(catalog.GPU_MEMORY_MIB - fb_used),
        catalog.GPU_XID: mods.xid.copy(),
    } if spec.gpu else {}
    return InstanceSeries(instance=instance, times=times, present=present, restart=restart, running=running_now,
                          waiting=waiting_now, kv_usage=kv, gpu=gpu, increments=increments, histograms=histograms)
