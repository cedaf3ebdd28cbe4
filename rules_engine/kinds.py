"""The registry of rule kinds: one line per kind, naming everything it brings (promql.kinds.RuleKind says what).

A new kind is its files (spec model, promql semantics, pandas evaluator, promtool cases) plus one line here (and
its model in the `Rule` union of spec/models.py, which pydantic needs at class definition; a test checks the two
agree). The engines and the compiler take this registry as an argument; `rules_engine.api` passes it.
"""
from __future__ import annotations

from types import MappingProxyType

from rules_engine.compile import promtool_cases
from rules_engine.evaluate import regression, threshold, trend
from rules_engine.promql import regression as regression_semantics
from rules_engine.promql import threshold as threshold_semantics
from rules_engine.promql import trend as trend_semantics
from rules_engine.promql.kinds import RuleKind
from rules_engine.spec.models import ThresholdRule
from rules_engine.spec.regression import RegressionRule
from rules_engine.spec.trend import TrendRule


def _kind(name: str, model: type, semantics, evaluator, promtool, **extra) -> RuleKind:
    return RuleKind(name=name, model=model, signals=semantics.signals, queries=semantics.queries,
                    warmup=semantics.warmup, alert_condition=semantics.alert_condition, evaluate=evaluator.evaluate,
                    promtool=promtool, **extra)


RULE_KINDS = MappingProxyType({kind.name: kind for kind in (
    _kind("threshold", ThresholdRule, threshold_semantics, threshold, promtool_cases.THRESHOLD,
          grade_peaks=threshold.severity_of),
    _kind("trend", TrendRule, trend_semantics, trend, promtool_cases.TREND, exact_in_promql=False),
    _kind("regression", RegressionRule, regression_semantics, regression, promtool_cases.REGRESSION,
          earliest_sample=regression_semantics.earliest_sample, exact_in_promql=False),
)})
