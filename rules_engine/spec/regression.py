"""Regression rules: the signal's distribution in a current window against a baseline, judged by effect and test.

A regression fires when the window statistic moved past a relative bound (`ratio_above: 2.0` = twice the
baseline, `ratio_below: 0.8` = 20% lower) **and** a two-sided Mann-Whitney U test of the current samples against
the baseline samples is significant at `alpha`, each side holding at least `min_samples` samples.

The signal is PromQL, or built from a vLLM-style classic histogram with `histogram:`, because coarse buckets
(ITL: 10/25/50 ms) let `histogram_quantile` hide a 30% shift inside one bucket: `measure: mean` uses
rate(_sum)/rate(_count), `measure: share_above` the share of observations above the bucket boundary `le`,
`measure: quantile` histogram_quantile(`q`). The finding says which.
"""
from __future__ import annotations

from typing import Literal

import pandas as pd
from pydantic import AwareDatetime, Field, model_validator

from rules_engine.spec.models import (Duration, MetricName, PromQL, RuleBase, SeverityLadder, SeverityName,
                                      SpecModel)

RegressionStat = Literal["mean", "p50", "p95", "p99"]


class Baseline(SpecModel):
    """What the current window is compared with: exactly one of an offset, the preceding window, or a time."""

    offset: Duration | None = None
    preceding: bool = False
    at: AwareDatetime | None = None
    window: Duration | None = None  # the baseline window's length; the rule's window by default

    @model_validator(mode="after")
    def _one(self) -> "Baseline":
        given = [name for name, on in (("offset", self.offset is not None), ("preceding", self.preceding),
                                       ("at", self.at is not None)) if on]
        if len(given) != 1:
            raise ValueError("give exactly one of `offset: 1d`, `preceding: true` or `at: <RFC 3339 time>` "
                             f"(got {given or 'none'})")
        if self.offset is not None and self.offset <= pd.Timedelta(0):
            raise ValueError("`offset` must be longer than 0s")
        if self.window is not None and self.window <= pd.Timedelta(0):
            raise ValueError("`window` must be longer than 0s")
        return self

    @property
    def kind(self) -> Literal["offset", "preceding", "at"]:
        return "offset" if self.offset is not None else ("preceding" if self.preceding else "at")


class HistogramSignal(SpecModel):
    """A signal built from a classic histogram's _sum/_count/_bucket series."""

    metric: str = Field(pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    # Older names of the same histogram (a renamed family): each series is read as `metric or fallback`, so a
    # server exposing both names is counted once and one exposing only the old name is still judged.
    fallback: list[MetricName] = Field(default_factory=list)
    measure: Literal["mean", "share_above", "quantile"] = "mean"
    le: float | None = None
    q: float | None = Field(default=None, gt=0, lt=1)
    rate_window: Duration = pd.Timedelta(minutes=5)
    by: list[str] = Field(default_factory=lambda: ["instance"])

    @model_validator(mode="after")
    def _measure_needs(self) -> "HistogramSignal":
        if self.measure == "share_above" and self.le is None:
            raise ValueError("`measure: share_above` needs `le`, an existing bucket boundary (e.g. 0.025)")
        if self.measure == "quantile" and self.q is None:
            raise ValueError("`measure: quantile` needs `q`, e.g. 0.95")
        if self.measure != "share_above" and self.le is not None:
            raise ValueError("`le` applies to `measure: share_above` only")
        if self.measure != "quantile" and self.q is not None:
            raise ValueError("`q` applies to `measure: quantile` only")
        return self


class RegressionRule(RuleBase):
    type: Literal["regression"]
    signal: PromQL | None = None
    histogram: HistogramSignal | None = None
    stat: RegressionStat = "mean"
    window: Duration
    baseline: Baseline
    ratio_above: float | None = Field(default=None, gt=1)
    ratio_below: float | None = Field(default=None, gt=0, lt=1)
    alpha: float = Field(default=0.01, gt=0, lt=0.5)
    min_samples: int = Field(default=20, ge=5)
    every: Duration = pd.Timedelta(minutes=5)  # how often the comparison runs (the live rule's interval)
    guard: PromQL | None = None
    severity: SeverityName | SeverityLadder = "medium"

    @model_validator(mode="after")
    def _consistent(self) -> "RegressionRule":
        if (self.signal is None) == (self.histogram is None):
            raise ValueError("give exactly one of `signal` (PromQL) or `histogram` (a classic histogram to build it from)")
        if (self.ratio_above is None) == (self.ratio_below is None):
            raise ValueError("give exactly one of `ratio_above` (e.g. 2.0 = twice the baseline) or `ratio_below` "
                             "(e.g. 0.8 = 20% under the baseline)")
        if self.window <= pd.Timedelta(0) or self.every <= pd.Timedelta(0):
            raise ValueError("`window` and `every` must be longer than 0s")
        return self

    @property
    def direction(self) -> Literal["above", "below"]:
        return "above" if self.ratio_above is not None else "below"

    @property
    def ratio(self) -> float:
        return self.ratio_above if self.ratio_above is not None else self.ratio_below  # type: ignore[return-value]

    @property
    def baseline_window(self) -> pd.Timedelta:
        return self.baseline.window if self.baseline.window is not None else self.window

    @property
    def measure(self) -> str:
        """What the compared samples are, as the finding reports it."""
        if self.histogram is None:
            return "signal"
        if self.histogram.measure == "share_above":
            return f"share_above:{self.histogram.le!r}"
        if self.histogram.measure == "quantile":
            return f"quantile:{self.histogram.q!r}"
        return "mean"
