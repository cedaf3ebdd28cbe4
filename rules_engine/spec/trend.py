"""Trend rules: a least-squares fit of the signal over a window predicts a limit crossing, or bounds the slope.

`above: 0.98, horizon: 30m` fires while `predict_linear((signal)[window:step], horizon) > 0.98` would, i.e. while
the fitted line reaches the limit within the horizon (or is already past it); `slope_above: 0.01, per: 1m` fires
while `deriv((signal)[window:step]) * 60 > 0.01`. Flat or noisy series are not trends: a fit needs `min_samples`
points and an R² of at least `min_r2`.
"""
from __future__ import annotations

from typing import Literal

import pandas as pd
from pydantic import Field, model_validator

from rules_engine.spec.models import Duration, PromQL, RuleBase, SeverityLadder, SeverityName, SpecModel


class LeadTimeLadder(SpecModel):
    """Severity of a predicted crossing by how soon it comes, as fractions of the horizon.

    A crossing predicted within `critical` × horizon is critical, within `high` × horizon high, else medium.
    """

    by: Literal["lead_time"]
    critical: float = Field(default=0.25, gt=0, le=1)
    high: float = Field(default=0.5, gt=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> "LeadTimeLadder":
        if self.critical > self.high:
            raise ValueError("`critical` must be a shorter lead time than `high` (critical <= high)")
        return self


class TrendRule(RuleBase):
    type: Literal["trend"]
    signal: PromQL
    window: Duration
    horizon: Duration | None = None
    above: float | None = None
    below: float | None = None
    slope_above: float | None = None
    slope_below: float | None = None
    per: Duration = pd.Timedelta(seconds=1)
    min_samples: int = Field(default=10, ge=3)
    min_r2: float = Field(default=0.3, ge=0, le=1)
    guard: PromQL | None = None
    severity: SeverityName | LeadTimeLadder | SeverityLadder | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "TrendRule":
        limits = [name for name in ("above", "below", "slope_above", "slope_below") if getattr(self, name) is not None]
        if len(limits) != 1:
            raise ValueError("give exactly one of `above`/`below` (a predicted crossing, with `horizon`) or "
                             f"`slope_above`/`slope_below` (a slope bound per `per`); got {limits or 'none'}")
        if self.window <= pd.Timedelta(0):
            raise ValueError("`window` must be longer than 0s")
        if self.mode == "crossing":
            if self.horizon is None or self.horizon <= pd.Timedelta(0):
                raise ValueError("a predicted crossing (`above`/`below`) needs `horizon`, e.g. `horizon: 30m`")
            if isinstance(self.severity, SeverityLadder):
                raise ValueError("a predicted crossing grades severity by lead time: use `severity: {by: lead_time}` "
                                 "or a fixed severity")
        else:
            if self.horizon is not None:
                raise ValueError("`horizon` applies to `above`/`below` crossings, not to slope bounds")
            if isinstance(self.severity, LeadTimeLadder):
                raise ValueError("a slope bound has no lead time: use a fixed severity or a ratio ladder")
            if self.per <= pd.Timedelta(0):
                raise ValueError("`per` must be longer than 0s")
            if isinstance(self.severity, SeverityLadder) and self.severity.by == "ratio" and self.threshold <= 0:
                raise ValueError("a ratio severity ladder needs a slope bound > 0; use a fixed severity")
        return self

    @property
    def mode(self) -> Literal["crossing", "slope"]:
        return "crossing" if self.above is not None or self.below is not None else "slope"

    @property
    def direction(self) -> Literal["above", "below"]:
        return "above" if self.above is not None or self.slope_above is not None else "below"

    @property
    def threshold(self) -> float:
        for value in (self.above, self.below, self.slope_above, self.slope_below):
            if value is not None:
                return value
        raise AssertionError("validated rule has a limit")
