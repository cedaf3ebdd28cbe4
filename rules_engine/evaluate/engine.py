"""Backtest a RuleSet over a range: fetch every query once, evaluate every rule on the shared frames.

The rule kinds come in as a registry (name -> promql.kinds.RuleKind, built in rules_engine/kinds.py): the engine
asks a rule's kind for its queries, warm-up and evaluation and never switches on the type itself. Front ends call
`rules_engine.backtest(...)`, which passes the shipped registry.
"""
from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import promql_parser

from rules_engine.evaluate.findings import Finding, severity_rank
from rules_engine.evaluate.health import Check, Health, health_scores
from rules_engine.evaluate.series import EvaluationError, RangeWindow
from rules_engine.evaluate.slo import SLOResult, evaluate_slos, slo_fetch_start, slo_findings
from rules_engine.promql.burn_windows import slo_catalog
from rules_engine.promql.kinds import RuleKind
from rules_engine.promql.slo import slo_queries
from rules_engine.source.base import Source, SourceError
from rules_engine.source.frame import RangeFrame, partial_data
from rules_engine.spec.loader import RuleSet

# Queries in flight at once: enough to keep a few Prometheus cores busy, few enough not to crowd a shared server.
DEFAULT_CONCURRENCY = 4



@dataclass
class RuleOutcome:
    pack: str
    rule: str
    kind: str
    category: str
    queries: dict[str, str]
    series: int = 0
    findings: int = 0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # Prometheus' warnings about its queries: partial data
    # With keep_signals: the value the rule compared over the range (one column per series), its thresholds by
    # severity where the kind compares that value itself, and whether the query returned only the samples past
    # the threshold (a comparison pushed down into Prometheus).
    signal: RangeFrame | None = field(default=None, repr=False)
    levels: list[tuple[str, float]] = field(default_factory=list)
    signal_filtered: bool = False
    # role -> how its query was answered ("local (remote-read, STREAMED_XOR_CHUNKS)", "query (<why not local>)"),
    # when the source says
    reads: dict[str, str] = field(default_factory=dict)


@dataclass
class Backtest:
    start: pd.Timestamp
    end: pd.Timestamp
    step: pd.Timedelta
    findings: list[Finding] = field(default_factory=list)
    outcomes: list[RuleOutcome] = field(default_factory=list)
    slos: list[SLOResult] = field(default_factory=list)
    instances: dict[str, dict[str, str]] = field(default_factory=dict)  # instance -> its other labels (model_name, ...)

    @property
    def failed(self) -> list[RuleOutcome]:
        return [outcome for outcome in self.outcomes if outcome.error]

    def checks(self) -> list[Check]:
        """Every rule and SLO tried, by category: what the health score can speak for."""
        return ([Check(outcome.category, bool(outcome.error)) for outcome in self.outcomes]
                + [Check("slo_burn", bool(result.error)) for result in self.slos])

    def health(self) -> Health:
        return health_scores(self.findings, self.checks(), self.slos, self.instances)

    def sort_findings(self) -> None:
        """Most severe first, then longest, then by rule and start: the order reports and exports show."""
        self.findings.sort(key=lambda f: (-severity_rank(f.severity), -(f.duration(self.end) / self.step), f.rule,
                                          f.start))


def align(start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Put the range on multiples of the step, where Prometheus evaluates subqueries, so windows agree with it;
    a range with no evaluation left is an error."""
    start, end = start.floor(step), end.floor(step)
    if end <= start:
        raise EvaluationError(f"empty range: start {start.isoformat()} is not before end {end.isoformat()}")
    return start, end


def select_rules(ruleset: RuleSet, names: Iterable[str] | None = None):
    """(pack, rule) pairs to evaluate; unknown names are an error that lists what exists (rules and SLOs)."""
    pairs = ruleset.rules()
    if not names:
        return pairs
    wanted = set(names)
    known = {rule.name for _, rule in pairs} | {slo.name for slo in ruleset.slos}
    unknown = wanted - known
    if unknown:
        raise EvaluationError(f"no rule or SLO named {sorted(unknown)}; have: {sorted(known)}")
    return [(pack, rule) for pack, rule in pairs if rule.name in wanted]


def select_slos(ruleset: RuleSet, names: Iterable[str] | None = None) -> list:
    return [slo for slo in ruleset.slos if not names or slo.name in set(names)]


def rule_queries(pairs, step: pd.Timedelta, kinds: Mapping[str, RuleKind], pushdown: bool = True
                 ) -> dict[str, dict[str, str]]:
    """rule name -> its queries by role. With `pushdown`, a kind may compute part of a rule inside Prometheus (a
    threshold rule's cheap window statistic) unless another rule needs the same raw signal anyway (then the window
    is free here). Planned over the whole rule set, not a --rule selection, so a rule's queries (and a snapshot's)
    do not change with what else is evaluated."""
    planned = {rule.name: kinds[rule.type].queries(rule, pack) for pack, rule in pairs}
    if not pushdown:
        return planned
    every = [query for queries in planned.values() for query in queries.values()]
    needed = Counter(every) + Counter(comparison.base for comparison in filtered_queries(every).values())
    for pack, rule in pairs:
        if needed[planned[rule.name]["signal"]] == 1:
            planned[rule.name] = kinds[rule.type].queries(rule, pack, step)
    return planned


def fetch_plan(ruleset: RuleSet, start: pd.Timestamp, step: pd.Timedelta, kinds: Mapping[str, RuleKind],
               names: Iterable[str] | None = None, pushdown: bool = True) -> tuple[list[str], pd.Timestamp]:
    """Every distinct query the selected rules need, and how early fetching must start for their warm-up."""
    pairs = select_rules(ruleset, names)
    planned = rule_queries(ruleset.rules(), step, kinds, pushdown)
    queries = {q for _, rule in pairs for q in planned[rule.name].values()}
    warmup = max((kinds[rule.type].warmup(rule) for _, rule in pairs), default=pd.Timedelta(0))
    fetch_start = start - warmup
    # A kind may also need history at an absolute time (a regression baseline at a deploy).
    for _, rule in pairs:
        earliest = kinds[rule.type].earliest_sample(rule)
        if earliest is not None:
            fetch_start = min(fetch_start, earliest)
    return sorted(queries), fetch_start.floor(step)


def recording_plan(ruleset: RuleSet, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta,
                   kinds: Mapping[str, RuleKind], names: Iterable[str] | None = None
                   ) -> tuple[list[str], pd.Timestamp]:
    """What a snapshot must hold to replay rules and SLOs over [start, end]: their queries from the earliest start."""
    queries, fetch_start = fetch_plan(ruleset, start, step, kinds, names)
    derived = filtered_queries(queries)  # replay computes these from their base query, as a live run does
    queries = [query for query in queries if query not in derived]
    for slo in select_slos(ruleset, names):
        queries.extend(slo_queries(slo).values())
        fetch_start = min(fetch_start, slo_fetch_start(slo, slo_catalog(slo), start, end, step))
    return sorted(set(queries)), fetch_start


def instance_labels(frames: Iterable[RangeFrame]) -> dict[str, dict[str, str]]:
    """Each instance seen in the frames, with the labels that have one value for it across all of them."""
    tables = [frame.labels for frame in frames if "instance" in frame.labels.columns and frame.series_count]
    if not tables:
        return {}
    labels = pd.concat(tables, ignore_index=True).fillna("")
    labels = labels[labels["instance"] != ""].drop(columns=["__name__"], errors="ignore")
    found: dict[str, dict[str, str]] = {}
    for instance, rows in labels.groupby("instance"):
        found[instance] = {name: values.iloc[0] for name, values in rows.drop(columns="instance").items()
                           if values.nunique() == 1 and values.iloc[0] != ""}
    return found


def keep_signal(outcome: RuleOutcome, kind: RuleKind, rule, pack, frames: dict[str, RangeFrame],
                window: RangeWindow) -> None:
    """Keep on the outcome what a report plots for the rule: its compared value over the range, and its levels."""
    role, frame = next(iter(frames.items()))
    values = frame.values
    if kind.compared_values is not None:
        values = kind.compared_values(rule, pack, frames, window)
        outcome.levels = [(level.severity, level.bound) for level in kind.alert_condition(rule, pack, window.step).levels]
    outcome.signal = RangeFrame(query=frame.query, values=values.loc[window.start:window.end], labels=frame.labels,
                                warnings=frame.warnings)
    outcome.signal_filtered = is_filtering(frame.query)


def is_filtering(query: str) -> bool:
    """Whether a query returns only the samples past a number (`expr > 2`, also `... and on(...) guard`)."""
    tree = promql_parser.parse(query)
    if isinstance(tree, promql_parser.BinaryExpr) and str(tree.op) == "and":
        tree = tree.lhs
    return (isinstance(tree, promql_parser.BinaryExpr) and str(tree.op) in NUMPY_COMPARISONS
            and not (tree.modifier is not None and tree.modifier.return_bool)
            and isinstance(tree.rhs, promql_parser.NumberLiteral))


@dataclass(frozen=True)
class Filtered:
    """A query that is a filtering comparison (`expr > 2`) of another query fetched anyway: computed locally."""

    base: str
    op: str
    value: float

    def apply(self, frame: RangeFrame, query: str) -> RangeFrame:
        with np.errstate(invalid="ignore"):
            kept = frame.values.where(NUMPY_COMPARISONS[self.op](frame.values, self.value))
        present = kept.notna().any().to_numpy()  # Prometheus returns only series with a sample
        values = kept.loc[:, present]
        values.columns = pd.RangeIndex(values.shape[1])
        labels = frame.labels.loc[present].reset_index(drop=True)
        return RangeFrame(query=query, values=values, labels=labels, warnings=frame.warnings)


NUMPY_COMPARISONS = {">": np.greater, "<": np.less, ">=": np.greater_equal, "<=": np.less_equal, "==": np.equal,
               "!=": np.not_equal}


def filtered_queries(queries: Iterable[str]) -> dict[str, Filtered]:
    """Queries that compare another query of the same set with a number, without `bool` or vector matching."""
    canonical = {}
    for query in queries:
        canonical.setdefault(str(promql_parser.parse(query)), query)
    found = {}
    for query in queries:
        tree = promql_parser.parse(query)
        if not (isinstance(tree, promql_parser.BinaryExpr) and str(tree.op) in NUMPY_COMPARISONS and tree.modifier is None
                and isinstance(tree.rhs, promql_parser.NumberLiteral)):
            continue
        lhs = tree.lhs
        while isinstance(lhs, promql_parser.ParenExpr):
            lhs = lhs.expr
        base = canonical.get(str(lhs))
        if base is not None and base != query:
            found[query] = Filtered(base, str(tree.op), float(tree.rhs.val))
    return {query: comparison for query, comparison in found.items() if comparison.base not in found}


def fetch_all(source: Source, queries: list[str], start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta,
              concurrency: int = DEFAULT_CONCURRENCY, on_query: Callable[[str], None] | None = None,
              ) -> tuple[dict[str, RangeFrame], dict[str, str]]:
    """Fetch every query once, a few at a time since Prometheus computes each query on one core; a comparison of a
    query fetched anyway is computed from it instead of asking Prometheus again."""
    frames: dict[str, RangeFrame] = {}
    errors: dict[str, str] = {}
    derived = filtered_queries(queries)
    prepare = getattr(source, "prepare", None)  # a source computing from raw samples plans its reads
    if prepare is not None:
        prepare([query for query in queries if query not in derived], start, end, step)
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        pending = {pool.submit(source.query_range, query, start, end, step): query
                   for query in queries if query not in derived}
        for done in as_completed(pending):
            query = pending[done]
            try:
                frames[query] = done.result()
            except SourceError as error:
                errors[query] = str(error)
            if on_query:
                on_query(query)
    for query, comparison in derived.items():
        if comparison.base in frames:
            frames[query] = comparison.apply(frames[comparison.base], query)
        else:
            errors[query] = errors[comparison.base]
        if on_query:
            on_query(query)
    return frames, errors


def run_backtest(ruleset: RuleSet, source: Source, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta,
                 kinds: Mapping[str, RuleKind], names: Iterable[str] | None = None,
                 on_query: Callable[[str], None] | None = None, concurrency: int = DEFAULT_CONCURRENCY,
                 pushdown: bool = True, keep_signals: bool = False) -> Backtest:
    start, end = align(start, end, step)
    queries, fetch_start = fetch_plan(ruleset, start, step, kinds, names, pushdown)
    frames, errors = fetch_all(source, queries, fetch_start, end, step, concurrency, on_query)

    window = RangeWindow(start=start, end=end, step=step)
    backtest = Backtest(start=start, end=end, step=step)
    pairs = select_rules(ruleset, names)
    planned = rule_queries(ruleset.rules(), step, kinds, pushdown)
    derived = filtered_queries(queries)
    for pack, rule in pairs:
        kind = kinds[rule.type]
        outcome = RuleOutcome(pack=pack.name, rule=rule.name, kind=rule.type, category=rule.category,
                              queries=planned[rule.name])
        backtest.outcomes.append(outcome)
        paths = getattr(source, "paths", None)
        if paths is not None:
            # A comparison computed from a query fetched anyway was read the way that query was.
            outcome.reads = {role: paths.get(q) or paths.get(derived[q].base if q in derived else q, "query")
                             for role, q in outcome.queries.items()}
        missing = [errors[q] for q in outcome.queries.values() if q in errors]
        if missing:
            outcome.error = missing[0]
            continue
        rule_frames = {role: frames[q] for role, q in outcome.queries.items()}
        outcome.series = next(iter(rule_frames.values())).series_count
        outcome.warnings = partial_data(rule_frames.values())
        try:
            found = kind.evaluate(rule, pack, rule_frames, window)
        except EvaluationError as error:
            outcome.error = str(error)
            continue
        outcome.findings = len(found)
        backtest.findings.extend(found)
        if keep_signals:
            keep_signal(outcome, kind, rule, pack, rule_frames, window)

    backtest.instances = instance_labels(frames.values())
    slos = select_slos(ruleset, names)
    if slos:
        backtest.slos = evaluate_slos(slos, source, start, end, step)
        backtest.findings.extend(slo_findings(backtest.slos))
        for result in backtest.slos:
            if result.labels.get("instance"):
                backtest.instances.setdefault(result.labels["instance"], {})
    backtest.sort_findings()
    return backtest
