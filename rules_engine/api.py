"""The engine's Python API: what the CLI, the live monitor and the analysis API call.

    import rules_engine
    ruleset = rules_engine.load_ruleset(["rules/"])
    with rules_engine.PrometheusSource("http://prometheus:9090") as source:
        result = rules_engine.backtest(ruleset, source, "2026-11-18T00:00:00Z", "2026-11-20T00:00:00Z", "30s")
        sweep = rules_engine.tune(ruleset, source, "VLLMKVCacheNearlyFull", "2026-11-18T00:00:00Z",
                                  "2026-11-20T00:00:00Z", incidents=rules_engine.load_incidents("truth.json"))
    result.findings            # [Finding]: rule, kind, category, severity, labels, start, end, value, ...
    result.slos, result.health(), result.failed
    sweep.candidates           # [Candidate]: threshold, for_, alerts_per_day, firing_share, detected, delays

    files = rules_engine.generate(ruleset).files   # path -> text of every compiled file

Every function passes the shipped rule-kind registry (rules_engine.kinds.RULE_KINDS) to the engine or the
compiler, which take it as an argument and never switch on a rule's type themselves.
"""
from __future__ import annotations

from typing import Callable, Iterable, Literal

import pandas as pd

from rules_engine.compile.generate import Generated, GenerateOptions
from rules_engine.compile.generate import generate as generate_files
from rules_engine.evaluate import engine as pandas_engine
from rules_engine.evaluate.engine import DEFAULT_CONCURRENCY, Backtest
from rules_engine.evaluate.local import LocalSource
from rules_engine.evaluate.promql_engine import run_promql_backtest
from rules_engine.evaluate.tune import DEFAULT_GRACE, Sweep, run_tune
from rules_engine.kinds import RULE_KINDS
from rules_engine.source.base import Source
from rules_engine.source.prometheus import PrometheusSource
from rules_engine.spec.incidents import Incident
from rules_engine.spec.loader import RuleSet
from rules_engine.spec.models import parse_duration
from rules_engine.spec.timerange import parse_time

Time = pd.Timestamp | str | float
Step = pd.Timedelta | str | float


def backtest(ruleset: RuleSet, source: Source, start: Time, end: Time, step: Step = "30s", *,
             rules: Iterable[str] | None = None, engine: Literal["pandas", "promql"] = "pandas",
             concurrency: int = DEFAULT_CONCURRENCY, pushdown: bool = True,
             on_query: Callable[[str], None] | None = None, keep_signals: bool = False,
             reader: Literal["auto", "remote-read", "range-vector", "query"] = "auto") -> Backtest:
    """What the rules (and SLOs) would have fired over [start, end] evaluated every `step`.

    `rules` selects rules or SLOs by name. `engine="promql"` range-queries the compiled alert conditions in
    Prometheus instead of evaluating in pandas (what the live path in Prometheus would do).
    `reader` says how the pandas engine reads a PrometheusSource: "auto" reads raw samples by remote read and
    computes each query it supports locally (rules_engine.evaluate.local) when the server serves remote read,
    "remote-read" insists on it, "range-vector" reads raw samples through `selector[Δ]` queries, "query" has
    Prometheus range-query every expression. Each rule's `RuleOutcome.reads` says how its queries were answered.
    Times are pandas
    Timestamps (naive ones are UTC), RFC 3339 text with a zone, unix seconds or `now-1h`; `step` a Timedelta, a Prometheus duration or seconds.
    `keep_signals` keeps on each rule outcome the value it compared over the range and its levels, for plots
    (rules_engine.report.html); the pandas engine only.
    Raises EvaluationError for an empty range or unknown rule names; a rule whose data cannot be fetched or
    evaluated is reported in `Backtest.failed`, not raised.
    """
    start_at, end_at, step_at = _timestamp(start), _timestamp(end), parse_duration(step)
    if engine == "promql":
        return run_promql_backtest(ruleset, source, start_at, end_at, step_at, RULE_KINDS, rules)
    return pandas_engine.run_backtest(ruleset, _computing(source, reader), start_at, end_at, step_at, RULE_KINDS, rules,
                                      on_query=on_query, concurrency=concurrency, pushdown=pushdown,
                                      keep_signals=keep_signals)


def _computing(source: Source, reader: str = "auto") -> Source:
    """The source the pandas engine reads: one that computes supported queries from raw samples when it can
    (Prometheus serving remote read; a snapshot holding raw samples), else `source` itself."""
    if isinstance(source, PrometheusSource) and reader != "query":
        return LocalSource(source, reader)  # not closed here: the caller's source owns the connection
    if getattr(source, "raw_reader", None) is not None:  # a snapshot holding raw samples
        return LocalSource(source, source.raw_reader)
    return source


def tune(ruleset: RuleSet, source: Source, rule: str, start: Time, end: Time, step: Step = "30s", *,
         thresholds: Iterable[float] | None = None, fors: Iterable[Step] | None = None,
         incidents: Iterable[Incident] = (), grace: Step = DEFAULT_GRACE) -> Sweep:
    """A threshold rule's alerts over [start, end] for many thresholds (default: around its own) and `for`
    durations (default: its own) at once, scored against labelled incidents when given (spec.incidents).
    Raises EvaluationError for an unknown or non-threshold rule, or data that cannot be fetched."""
    return run_tune(ruleset, _computing(source), rule, _timestamp(start), _timestamp(end), parse_duration(step), RULE_KINDS,
                    thresholds=list(thresholds) if thresholds is not None else None,
                    fors=[parse_duration(f) for f in fors] if fors else None, incidents=list(incidents),
                    grace=parse_duration(grace))


def fetch_plan(ruleset: RuleSet, start: Time, step: Step, rules: Iterable[str] | None = None
               ) -> tuple[list[str], pd.Timestamp]:
    """The distinct range queries a backtest from `start` sends, and how early they start (warm-up)."""
    return pandas_engine.fetch_plan(ruleset, _timestamp(start), parse_duration(step), RULE_KINDS, rules)


def recording_plan(ruleset: RuleSet, start: Time, end: Time, step: Step, rules: Iterable[str] | None = None
                   ) -> tuple[list[str], pd.Timestamp]:
    """What a snapshot must hold to replay the rules and SLOs over [start, end]."""
    return pandas_engine.recording_plan(ruleset, _timestamp(start), _timestamp(end), parse_duration(step), RULE_KINDS, rules)


def generate(ruleset: RuleSet, options: GenerateOptions = GenerateOptions()) -> Generated:
    """Every compiled file (Prometheus rules, promtool tests, Alertmanager fragment, dashboards) as text."""
    return generate_files(ruleset, RULE_KINDS, options)


def _timestamp(value: Time) -> pd.Timestamp:
    if isinstance(value, pd.Timestamp):
        return value.tz_localize("UTC") if value.tzinfo is None else value.tz_convert("UTC")
    return parse_time(value)
