"""A finding: one episode of a rule firing on one series, as the backtest reports it."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

SEVERITIES = ("low", "medium", "high", "critical")


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class Finding:
    rule: str
    kind: str  # threshold | trend | regression | slo
    category: str
    severity: str
    labels: dict[str, str]
    start: pd.Timestamp
    end: pd.Timestamp | None  # None while still firing at the end of the evaluated range
    value: float  # the peak (or trough, for a `below` rule) while firing
    threshold: float
    recommendation: str
    playbook: str | None
    pack: str = ""
    summary: str = ""
    description: str = ""
    runbook_url: str = ""
    rule_labels: dict[str, str] = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # kind-specific facts: window stat, predicted crossing, p-value, ...

    @property
    def instance(self) -> str:
        return self.labels.get("instance", "")

    def duration(self, range_end: pd.Timestamp) -> pd.Timedelta:
        return (self.end if self.end is not None else range_end) - self.start
