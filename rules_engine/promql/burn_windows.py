"""The multiwindow multi-burn-rate alert catalog: which window pairs alert at what share of the error budget.

The catalog is data (rules_engine/data/burn_windows/<period>.yaml, or an SLO's own `alerting.windows` file); the
SLO evaluation and the SLO compiler both read it from here. A pair spends `budget_percent` of the period's budget
within its long window: factor = budget% / 100 × period / long window (Sloth's formula). A catalog is written for
one period and an SLO only uses a catalog of its own period: rescaling another period's percentages silently
changes what an alert means (30d shares on a 7d SLO put both tickets below a factor of 1, firing within budget).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rules_engine.spec.models import Duration, SeverityName
from rules_engine.spec.models import format_duration
from rules_engine.spec.slo import BURN_WINDOW_CATALOGS, SLO, no_catalog, shipped_catalogs

DEFAULT_WINDOWS = BURN_WINDOW_CATALOGS / "30d.yaml"


class _Pair(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, arbitrary_types_allowed=True)
    error_budget_percent: float = Field(alias="errorBudgetPercent", gt=0, le=100)
    short_window: Duration = Field(alias="shortWindow")
    long_window: Duration = Field(alias="longWindow")
    severity: SeverityName


class _Speeds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quick: _Pair
    slow: _Pair


class _CatalogSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, arbitrary_types_allowed=True)
    slo_period: Duration = Field(alias="sloPeriod")
    burn_windows: list[Duration] = Field(alias="burnWindows", min_length=1)
    page: _Speeds
    ticket: _Speeds


class _Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["AlertWindows"]
    spec: _CatalogSpec


@dataclass(frozen=True)
class AlertPair:
    alert: str  # page | ticket
    speed: str  # quick | slow
    budget_percent: float
    short: pd.Timedelta
    long: pd.Timedelta
    severity: str

    def factor(self, period: pd.Timedelta) -> float:
        """The burn rate that spends `budget_percent` of the period's budget within the long window."""
        return self.budget_percent / 100.0 * (period / self.long)


@dataclass(frozen=True)
class WindowCatalog:
    period: pd.Timedelta  # the period the catalog was written for, the only one it serves
    burn_windows: tuple[pd.Timedelta, ...]
    pairs: tuple[AlertPair, ...]

    @property
    def windows(self) -> list[pd.Timedelta]:
        """Every window burn rates are needed for: the reported ones and those of the alert pairs."""
        found = set(self.burn_windows) | {p.short for p in self.pairs} | {p.long for p in self.pairs}
        return sorted(found)


def load_windows(path: str | Path | None = None) -> WindowCatalog:
    """Read an AlertWindows catalog; a bad file raises ValueError naming the file and the field."""
    where = Path(path) if path is not None else DEFAULT_WINDOWS
    try:
        document = yaml.safe_load(where.read_text())
        spec = _Catalog.model_validate(document).spec
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{where}: cannot read the alert window catalog: {error}") from None
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise ValueError(f"{where}: invalid alert window catalog: {problems}") from None
    pairs = tuple(AlertPair(alert, speed, pair.error_budget_percent, pair.short_window, pair.long_window, pair.severity)
                  for alert, speeds in (("page", spec.page), ("ticket", spec.ticket))
                  for speed, pair in (("quick", speeds.quick), ("slow", speeds.slow)))
    for pair in pairs:
        if pair.short >= pair.long:
            raise ValueError(f"{where}: spec.{pair.alert}.{pair.speed}: shortWindow must be shorter than longWindow")
    return WindowCatalog(spec.slo_period, tuple(spec.burn_windows), pairs)


@lru_cache(maxsize=None)
def shipped_catalog(period: pd.Timedelta) -> WindowCatalog:
    """The shipped catalog for `period`; ValueError naming the shipped periods when there is none."""
    path = shipped_catalogs().get(period)
    if path is None:
        raise ValueError(no_catalog(period))
    return load_windows(path)


def slo_catalog(slo: SLO) -> WindowCatalog:
    """The SLO's own catalog (`alerting.windows`) or the shipped one for its period; ValueError when the catalog
    was written for another period."""
    if not slo.alerting.windows:
        return shipped_catalog(slo.period)
    catalog = load_windows(slo.alerting.windows)
    if catalog.period != slo.period:
        raise ValueError(f"{slo.alerting.windows}: the catalog is for sloPeriod {format_duration(catalog.period)}, "
                         f"the SLO's period is {format_duration(slo.period)}: its factors would not mean what they "
                         f"say; write a catalog for {format_duration(slo.period)}")
    return catalog
