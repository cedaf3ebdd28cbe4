"""What a kind of rule brings, declared once: its spec model, its meaning in PromQL, its pandas evaluator and its
promtool case builder. rules_engine/kinds.py registers one RuleKind per kind; the engines and the compiler take
that registry and never switch on a rule's type.

The fields are plain callables so this layer names no upper layer: the evaluator (evaluate/) and the case builder
(compile/) are plugged in where the registry is built.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

from rules_engine.promql.levels import AlertCondition
from rules_engine.spec.models import RulePack


def _no_earliest_sample(rule) -> pd.Timestamp | None:
    return None


@dataclass(frozen=True)
class RuleKind:
    name: str  # the rule's `type:`
    model: type  # spec: the pydantic model of the rule's YAML (a member of spec.models.Rule)
    # -- semantics (rules_engine/promql/<kind>.py) ---------------------------------------------------------------
    signals: Callable[[Any, RulePack], list[str]]  # the expressions it reads: signal, then guard (recorded when compiled)
    queries: Callable[..., dict[str, str]]  # (rule, pack, pushdown_step=None) -> range query by role
    warmup: Callable[[Any], pd.Timedelta]  # history needed before the range start
    alert_condition: Callable[[Any, RulePack, pd.Timedelta], AlertCondition]  # PromQL per severity level
    # -- the pandas engine (rules_engine/evaluate/<kind>.py) -----------------------------------------------------
    evaluate: Callable  # (rule, pack, frames by role, RangeWindow) -> [Finding]
    # -- promtool tests of the compiled alerts (rules_engine/compile/promtool_cases.py) --------------------------
    promtool: Any  # a compile.promtool_tests.CaseBuilder (instances in compile/promtool_cases.py)
    earliest_sample: Callable[[Any], pd.Timestamp | None] = _no_earliest_sample  # history at an absolute time
    # Severity of an episode from its peak, when the kind grades peaks (a threshold ladder); the PromQL engine
    # otherwise takes the highest compiled level that held during the episode.
    grade_peaks: Callable | None = None
    # Whether the compiled alerts mean exactly what the engine evaluates. A kind that is not (the trend fit-quality
    # filter, the regression Mann-Whitney test have no PromQL form) is what `rules-engine monitor` evaluates by
    # default, and what `generate --monitor` leaves out of the alerting rules, so nothing fires twice.
    exact_in_promql: bool = True
