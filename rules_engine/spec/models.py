"""The rule spec an SRE writes: rule packs of threshold rules (trend, regression and SLO kinds build on these)."""
from __future__ import annotations

import math
from datetime import timedelta
from typing import Annotated, Any, Literal, Union, get_args

import pandas as pd
import promql_parser
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from rules_engine.spec.promql import check_promql, check_selector

Category = Literal[
    "high_latency",
    "low_throughput",
    "queue_buildup",
    "cache_inefficiency",
    "memory_pressure",
    "batch_size_suboptimal",
    "error_rate",
    "slo_burn",
]
CATEGORIES = get_args(Category)
SeverityName = Literal["low", "medium", "high", "critical"]
WindowStat = Literal["mean", "min", "max", "last", "p50", "p90", "p95", "p99"]
ServerKind = Literal["vllm", "tgi", "sglang", "generic"]


def parse_duration(value: Any) -> pd.Timedelta:
    """A Prometheus duration ("30s", "5m", "1h30m", "7d") or a number of seconds."""
    if isinstance(value, pd.Timedelta):
        return value
    if isinstance(value, timedelta):
        return pd.Timedelta(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"duration must be a finite number of seconds >= 0, got {value}")
        return pd.Timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip()
        if text in ("0", "0s"):
            return pd.Timedelta(0)
        try:
            return pd.Timedelta(promql_parser.parse_duration(text))
        except ValueError:
            raise ValueError(f"invalid duration {value!r}: use Prometheus durations like 30s, 5m, 1h30m, 7d") from None
        except BaseException as error:  # the parser's Rust code panics on "inf", "nan", "1e30" (pyo3 PanicException)
            if type(error).__name__ != "PanicException":
                raise
            raise ValueError(f"invalid duration {value!r}: use Prometheus durations like 30s, 5m, 1h30m, 7d") from None
    raise ValueError(f"invalid duration {value!r}: use Prometheus durations like 30s, 5m, 1h30m, 7d")


def format_duration(value: pd.Timedelta) -> str:
    """The Prometheus spelling of a duration ("1h30m"), as rule files and PromQL want it."""
    if value == pd.Timedelta(0):
        return "0s"
    return promql_parser.display_duration(value.to_pytimedelta())


Duration = Annotated[pd.Timedelta, BeforeValidator(parse_duration)]
PromQL = Annotated[str, BeforeValidator(lambda v: check_promql(v) if isinstance(v, str) else v)]
Selector = Annotated[str, AfterValidator(check_selector)]  # label matchers injected into every query, or ""


class SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True, populate_by_name=True)


class SeverityLadder(SpecModel):
    """Severity by how far past the threshold the value is.

    `by: ratio` compares value/threshold (threshold/value for `below` rules) with each level; `by: value` compares
    the value itself. Below the first level the severity is `low`.
    """

    by: Literal["ratio", "value"] = "ratio"
    medium: float | None = 1.2
    high: float | None = 1.5
    critical: float | None = 2.0

    def levels(self) -> list[tuple[SeverityName, float]]:
        return [(name, bound) for name, bound in (("medium", self.medium), ("high", self.high), ("critical", self.critical)) if bound is not None]


class Annotations(SpecModel):
    summary: str = ""
    description: str = ""
    runbook_url: str = ""


RuleName = Annotated[str, Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$", max_length=200)]
MetricName = Annotated[str, Field(pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$", max_length=200)]


class RuleBase(SpecModel):
    """What every rule kind has: identity, routing and what to tell the operator."""

    name: RuleName
    category: Category
    recommendation: str = ""
    playbook: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: Annotations = Annotations()
    for_: Duration = Field(default=pd.Timedelta(0), alias="for")
    keep_firing_for: Duration = pd.Timedelta(0)

    @field_validator("labels")
    @classmethod
    def _label_names(cls, labels: dict[str, str]) -> dict[str, str]:
        reserved = {"alertname", "severity", "category", "rule_pack"}
        for name in labels:
            if name in reserved:
                raise ValueError(f"label {name!r} is set by the engine; choose another name")
            if not name.replace("_", "a").isalnum() or name[0].isdigit():
                raise ValueError(f"invalid label name {name!r}")
        return labels


class ThresholdRule(RuleBase):
    """Fires while a signal (optionally a window statistic of it) is above or below a threshold, for a duration."""

    type: Literal["threshold"] = "threshold"
    signal: PromQL
    stat: WindowStat | None = None
    window: Duration | None = None
    above: float | None = None
    below: float | None = None
    guard: PromQL | None = None
    severity: SeverityName | SeverityLadder = SeverityLadder()

    @model_validator(mode="after")
    def _consistent(self) -> "ThresholdRule":
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of `above` or `below`")
        if (self.stat is None) != (self.window is None):
            raise ValueError("`stat` and `window` go together: a window statistic needs both, a plain threshold neither")
        if self.window is not None and self.window <= pd.Timedelta(0):
            raise ValueError("`window` must be longer than 0s")
        if isinstance(self.severity, SeverityLadder) and self.severity.by == "ratio" and self.threshold <= 0:
            raise ValueError(
                f"a ratio severity ladder needs a threshold > 0 (got {self.threshold}); use `severity: {{by: value, ...}}` "
                "with absolute levels or a fixed severity"
            )
        return self

    @property
    def threshold(self) -> float:
        return self.above if self.above is not None else self.below  # type: ignore[return-value]

    @property
    def direction(self) -> Literal["above", "below"]:
        return "above" if self.above is not None else "below"


def _rule_type(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("type", "threshold")
    return getattr(value, "type", "threshold")


# Rule kinds are tagged by `type:`; threshold is the default. New kinds join this union.
from rules_engine.spec.regression import RegressionRule  # noqa: E402  (kind modules build on RuleBase above)
from rules_engine.spec.trend import TrendRule  # noqa: E402

Rule = Annotated[Union[Annotated[ThresholdRule, Tag("threshold")], Annotated[TrendRule, Tag("trend")],
                       Annotated[RegressionRule, Tag("regression")]], Discriminator(_rule_type)]

RULE_DEFAULT_KEYS = ("for", "keep_firing_for", "severity")


class RulePack(SpecModel):
    """A file of rules sharing a server kind, a selector injected into every query, and the labels to keep."""

    kind: Literal["RulePack"]
    name: RuleName
    server: ServerKind = "generic"
    selector: Selector = ""
    keep_labels: list[str] = Field(default_factory=lambda: ["instance"])
    defaults: dict[str, Any] = Field(default_factory=dict)
    rules: list[Rule] = Field(min_length=1)

    @field_validator("defaults")
    @classmethod
    def _defaults(cls, defaults: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(defaults) - set(RULE_DEFAULT_KEYS))
        if unknown:
            raise ValueError(f"unknown default(s) {unknown}; allowed: {list(RULE_DEFAULT_KEYS)}")
        return defaults

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        # Pack defaults fill in what a rule leaves out, before the rule is validated.
        if not isinstance(data, dict) or not isinstance(data.get("defaults"), dict) or not isinstance(data.get("rules"), list):
            return data
        defaults = {k: v for k, v in data["defaults"].items() if k in RULE_DEFAULT_KEYS}
        rules = [{**defaults, **rule} if isinstance(rule, dict) else rule for rule in data["rules"]]
        return {**data, "rules": rules}
