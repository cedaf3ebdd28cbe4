"""The exposition of a TGI or SGLang instance: the shared load model's state, renamed and relabelled.

`fleet.simulate_instance` models load, queue, KV occupancy and latency the same way for every server; what differs
between servers is what they expose. A `ServerSeries` carries that exposition per instance (gauges, counters as
per-step increments, histograms with their own buckets, each with the label variants the server writes, e.g.
one series per SGLang pipeline rank) and `write_families` writes a list of families for a group of instances with
the same vectorized writers the vLLM side uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import BinaryIO, Literal

import numpy as np

from rules_engine.simulate.catalog import le_label
from rules_engine.simulate.fleet import Histogram, InstanceSeries, cumulative, histogram_counts
from rules_engine.simulate.openmetrics import family_header, series_prefix, write_series

Labels = dict[str, str]


@dataclass(frozen=True)
class Family:
    name: str
    type: Literal["gauge", "counter", "histogram"]
    help: str = ""
    sample_suffix: str = ""  # counters: what the server appends to the family name (SGLang "_total"; TGI nothing)
    decimals: int = 0  # gauges
    # Histograms; () writes only the +Inf bucket, `_count` and `_sum`. `le` is spelled as the shortest text that
    # reads back as the same float, as both prometheus_client (SGLang) and Rust's float Display (TGI) write it.
    buckets: tuple[float, ...] = ()


@dataclass
class ServerSeries(InstanceSeries):
    """An instance's load-model state plus what its server exposes (keys are family names)."""

    labels: Labels = field(default_factory=dict)  # the labels every series of the instance carries
    gauge_values: dict[str, list[tuple[Labels, np.ndarray]]] = field(default_factory=dict)
    counter_increments: dict[str, list[tuple[Labels, np.ndarray]]] = field(default_factory=dict)
    histogram_values: dict[str, list[tuple[Labels, Histogram]]] = field(default_factory=dict)


def series_fields(base: InstanceSeries) -> dict:
    """The load-model fields of `base`, to build a ServerSeries around them without copying arrays."""
    return {f.name: getattr(base, f.name) for f in fields(InstanceSeries)}


def write_families(out: BinaryIO, families: tuple[Family, ...], series: list[ServerSeries],
                   stamps: dict[str, np.ndarray]) -> int:
    """Write each family (contiguous, as OpenMetrics requires) for every instance that exposes it."""
    written = 0
    for family in families:
        members = [s for s in series if family.name in {"gauge": s.gauge_values, "counter": s.counter_increments,
                                                         "histogram": s.histogram_values}[family.type]]
        if not members:
            continue
        block = family_header(family.name, family.type, family.help)
        out.write(block)
        written += len(block)
        for s in members:
            ts = stamps[s.instance.name]
            if family.type == "gauge":
                for extra, values in s.gauge_values[family.name]:
                    written += write_series(out, series_prefix(family.name, {**s.labels, **extra}),
                                            values[s.present], ts, family.decimals)
            elif family.type == "counter":
                for extra, increments in s.counter_increments[family.name]:
                    values = cumulative(increments, s.restart)[s.present]
                    written += write_series(out, series_prefix(family.name + family.sample_suffix,
                                                               {**s.labels, **extra}), values, ts)
            else:
                les = [le_label(b) for b in family.buckets] + ["+Inf"]
                for extra, hist in s.histogram_values[family.name]:
                    with np.errstate(divide="ignore"):  # a bucket at le=0 (SGLang's queue time) is log(0)
                        buckets, count, sums = histogram_counts(hist, family.buckets or (np.inf,), s.restart)
                    labels = {**s.labels, **extra}
                    columns = range(len(les)) if family.buckets else [buckets.shape[1] - 1]
                    for column, le in zip(columns, les[-len(columns):]):
                        written += write_series(out, series_prefix(f"{family.name}_bucket", {**labels, "le": le}),
                                                buckets[s.present, column], ts)
                    written += write_series(out, series_prefix(f"{family.name}_count", labels), count[s.present], ts)
                    written += write_series(out, series_prefix(f"{family.name}_sum", labels), sums[s.present], ts, 3)
    return written
