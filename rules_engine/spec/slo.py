"""SLO documents (`kind: SLO`): an objective over a rolling period for one SLI.

SLI types:
- `ratio`: good (or error) events over total events, each a PromQL expression returning **counters**
  (e.g. `vllm:request_success_total{finished_reason=~"stop|length"}`); the engine takes increases itself,
  per series with counter-reset handling, then sums them by `group_by`;
- `latency`: the share of a classic histogram's observations at or under `threshold`, which must be one of its
  bucket boundaries (`le`); good = `<metric>_bucket{le="<threshold>"}`, total = `<metric>_count`;
- `timeslices`: a signal compared with a target in every slice (OpenSLO thresholdMetric + Timeslices budgeting):
  "p99 TTFT <= 0.5 s in 99% of 5-minute slices". The seeds' SLO targets (p50/p95/p99 latency, availability,
  throughput with `<`, `<=`, `>`, `>=`) are timeslice SLIs with the slice equal to the evaluation step unless set.
  A group (`group_by`) holding several series of the signal counts one slice per series.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field, ValidationInfo, field_validator, model_validator

from rules_engine.spec.models import (Duration, MetricName, PromQL, RuleName, Selector, ServerKind, SpecModel,
                                      format_duration,
                                      parse_duration)

Comparison = Literal["<", "<=", ">", ">="]


class RatioSLI(SpecModel):
    good: PromQL | None = None
    errors: PromQL | None = None
    total: PromQL

    @model_validator(mode="after")
    def _one(self) -> "RatioSLI":
        if (self.good is None) == (self.errors is None):
            raise ValueError("give exactly one of `good` or `errors` beside `total`")
        if (self.good or self.errors) == self.total:
            raise ValueError("the event query and `total` are the same expression")
        return self


class LatencySLI(SpecModel):
    histogram: str = Field(pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    # Older names of the same histogram, read as `histogram or fallback` (see HistogramSignal.fallback).
    fallback: list[MetricName] = Field(default_factory=list)
    threshold: float = Field(gt=0)
    selector: str = ""  # matchers added to the histogram's series, beside the SLO's own selector

    @field_validator("histogram")
    @classmethod
    def _base_name(cls, name: str) -> str:
        for suffix in ("_bucket", "_count", "_sum"):
            if name.endswith(suffix):
                raise ValueError(f"give the histogram's base name without {suffix!r} (e.g. "
                                 f"{name[: -len(suffix)]!r})")
        return name


class TimesliceSLI(SpecModel):
    signal: PromQL
    op: Comparison
    target: float
    slice: Duration | None = None  # the evaluation step when not given
    slice_stat: Literal["last", "mean", "max", "min"] = "last"


class SLI(SpecModel):
    ratio: RatioSLI | None = None
    latency: LatencySLI | None = None
    timeslices: TimesliceSLI | None = None

    @model_validator(mode="after")
    def _one(self) -> "SLI":
        given = [name for name in ("ratio", "latency", "timeslices") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"an SLI is exactly one of `ratio`, `latency` or `timeslices` (got {given or 'none'})")
        return self

    @property
    def type(self) -> Literal["ratio", "latency", "timeslices"]:
        return "ratio" if self.ratio else ("latency" if self.latency else "timeslices")


class SLOAlerting(SpecModel):
    page: bool = True
    ticket: bool = True
    # Below this many events per second over an alert's long window no burn alert fires: a handful of errors
    # among a handful of requests is not a budget burn worth a page.
    min_event_rate: float = Field(default=0.05, ge=0)
    # Path of an AlertWindows catalog for the SLO's period, relative to the SLO's file; by default the shipped
    # catalog for the period (BURN_WINDOW_CATALOGS).
    windows: str | None = None


# The shipped AlertWindows catalogs, one per SLO period, each file named after its period (30d.yaml). The burn
# factors of a catalog only mean "on track to exhaust the budget" for its own period, so they are never rescaled.
BURN_WINDOW_CATALOGS = Path(__file__).resolve().parent.parent / "data" / "burn_windows"


def shipped_catalogs() -> dict[pd.Timedelta, Path]:
    """period -> its shipped burn-window catalog, shortest period first."""
    return dict(sorted((parse_duration(path.stem), path) for path in BURN_WINDOW_CATALOGS.glob("*.yaml")))


def no_catalog(period: pd.Timedelta) -> str:
    """What to say about a period no shipped catalog serves."""
    shipped = ", ".join(path.stem for path in shipped_catalogs().values())
    return (f"no shipped burn-window catalog for a {format_duration(period)} period (shipped: {shipped}); use one of "
            f"those periods, or set alerting.windows to an AlertWindows catalog with sloPeriod: {format_duration(period)}")


class SLO(SpecModel):
    kind: Literal["SLO"]
    name: RuleName
    description: str = ""
    server: ServerKind = "generic"
    objective: float = Field(gt=0, lt=100, description="percent of good events (or good slices), e.g. 99.5")
    alerting: SLOAlerting = SLOAlerting()  # before `period`, whose check reads it
    period: Duration = pd.Timedelta(days=30)
    selector: Selector = ""
    group_by: list[str] = Field(default_factory=list)
    sli: SLI
    labels: dict[str, str] = Field(default_factory=dict)
    recommendation: str = ""
    playbook: str | None = None
    runbook_url: str = ""  # the burn-rate alerts' runbook_url annotation, as a rule's annotations.runbook_url

    @field_validator("period")
    @classmethod
    def _period(cls, period: pd.Timedelta, info: ValidationInfo) -> pd.Timedelta:
        if period < pd.Timedelta(hours=1):
            raise ValueError("an SLO period shorter than 1h leaves no room for burn-rate windows")
        alerting = info.data.get("alerting")
        if alerting is not None and alerting.windows is None and period not in shipped_catalogs():
            raise ValueError(no_catalog(period))
        return period

    @property
    def target(self) -> float:
        """The objective as a fraction (99.5 -> 0.995)."""
        return self.objective / 100.0

    @property
    def error_budget(self) -> float:
        return 1.0 - self.target


def resolve_paths(slo: SLO, base: Path) -> SLO:
    """The SLO with a relative `alerting.windows` path made relative to `base`, the folder of its file."""
    windows = slo.alerting.windows
    if windows is None or Path(windows).is_absolute():
        return slo
    return slo.model_copy(update={"alerting": slo.alerting.model_copy(update={"windows": str(base / windows)})})
