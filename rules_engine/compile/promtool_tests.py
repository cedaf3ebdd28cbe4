"""`promtool test rules` files generated from the rule spec: for every alert, input series that make it fire
(at each severity level), and ones that keep it silent (safe side of the threshold, still pending, guard absent).

Inputs are the recorded series the alerts read (constant values; straight lines for trend rules), so a test judges
the alert — window statistic, comparison, severity ladder, `for`, guard matching, labels and annotations —
independently of the raw metrics a signal is recorded from. Expected annotations are rendered from the templates
the way Prometheus renders them (rules_engine/promql/templates.py); an alert whose annotations use anything that
renderer cannot render exactly gets no firing check, and the generator says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import pandas as pd

from rules_engine.compile.prometheus import AlertingRule, CompiledPack
from rules_engine.promql.kinds import RuleKind
from rules_engine.promql.windows import QUANTILES
from rules_engine.promql.templates import Unrenderable, render_template
from rules_engine.spec.models import format_duration


def window_value(alert_value: float, stat: str | None, window: pd.Timedelta | None, interval: pd.Timedelta) -> float:
    """The value Prometheus computes for a constant input: exact except for quantile interpolation, which is
    replayed with Prometheus' own formula so `$value` renders to the same digits."""
    if stat not in QUANTILES:
        return alert_value
    points = int(window // interval) + 1
    rank = QUANTILES[stat] * (points - 1)
    weight = rank - math.floor(rank)
    return alert_value * (1 - weight) + alert_value * weight


def _nice_between(low: float, high: float) -> float:
    """A value strictly between low and high with as few significant digits as possible (readable tests)."""
    middle = (low + high) / 2
    for digits in range(1, 13):
        candidate = float(f"{middle:.{digits}g}")
        if low < candidate < high:
            return candidate
    return middle


def holds(value: float, alert: AlertingRule) -> bool:
    """Whether `value` meets the alert's comparison."""
    return {"<": value < alert.bound, "<=": value <= alert.bound, ">": value > alert.bound,
            ">=": value >= alert.bound}[alert.comparison]


def _step(value: float, scale: float) -> float:
    return abs(value) * scale if value != 0 else scale


def firing_values(alerts: list[AlertingRule]) -> list[float]:
    """One input value per severity band: past each level's bound and short of the next one."""
    above = ">" in alerts[0].comparison
    bounds = sorted({a.bound for a in alerts}, reverse=not above)
    values = []
    for index, bound in enumerate(bounds):
        if index + 1 < len(bounds):
            low, high = sorted((bound, bounds[index + 1]))
        else:
            low, high = (bound, bound + 2 * _step(bound, 0.25)) if above else (bound - 2 * _step(bound, 0.25), bound)
        values.append(_nice_between(low, high))
    return values


def safe_value(alert: AlertingRule) -> float:
    above = ">" in alert.comparison
    bound = alert.bound
    low, high = (bound - 2 * _step(bound, 0.5), bound) if above else (bound, bound + 2 * _step(bound, 0.5))
    return _nice_between(low, high)


@dataclass(frozen=True)
class Case:
    """One input series of a recorded signal and what its rule's alerts must show at the check time.

    Rules in one test group read different signals, so a case is seen by its own rule only (guards aside).
    """

    record: str
    labels: dict[str, str]
    values: str  # promtool series notation
    firing: tuple[AlertingRule, ...]  # the levels that must fire at the check time
    observed: float  # $value at the check time (NaN: not renderable)


@dataclass
class PackTests:
    """The cases of a group of rules, evaluated in one promtool test group."""

    pack: str
    interval: pd.Timedelta
    cases: list[Case] = field(default_factory=list)
    guards: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (recorded guard, labels)
    checks: list[dict] = field(default_factory=list)
    samples: int = 0
    notes: list[str] = field(default_factory=list)


def _labels(alert: AlertingRule, pack: str, case: str) -> dict[str, str]:
    labels = {label: f"{label}-{alert.rule}-{case}" for label in alert.series_labels}
    if not labels:  # a signal aggregated to one series: a label of its own keeps the cases apart
        labels["test_case"] = f"{alert.rule}-{case}"
    return {**labels, "rule_pack": pack}


def check_step(rule, interval: pd.Timedelta, warm: pd.Timedelta = pd.Timedelta(0)) -> int:
    """Evaluations until the check: `for` (after `warm`, e.g. a trend's minimum samples) has elapsed and the
    rule's window is full."""
    return int(max(rule.for_ + interval + warm, getattr(rule, "window", None) or pd.Timedelta(0)) // interval) + 2


def pending_step(rule, interval: pd.Timedelta) -> int | None:
    """An evaluation at which every case is active but still pending (None when `for` is shorter than 2 steps)."""
    if rule.for_ < 2 * interval:
        return None
    return int((rule.for_ - interval) // interval)


def _testable(rule, interval: pd.Timedelta) -> str | None:
    return None


def _pack_interval(rule, pack_interval: pd.Timedelta) -> pd.Timedelta:
    return pack_interval


# (case name, promtool input values, levels firing at the check, $value at the check) per case of one rule.
Cases = list[tuple[str, str, tuple[AlertingRule, ...], float]]


@dataclass(frozen=True)
class CaseBuilder:
    """How a rule kind's compiled alerts are tested: the input series per case and when to check them."""

    cases: Callable[..., Cases]  # (rule, alerts, interval, check step, samples) -> Cases
    check_step: Callable[[object, pd.Timedelta], int] = check_step
    pending_step: Callable[[object, pd.Timedelta], int | None] = pending_step
    untestable: Callable[[object, pd.Timedelta], str | None] = _testable  # why no step input can test it
    interval: Callable[[object, pd.Timedelta], pd.Timedelta] = _pack_interval  # the test's evaluation interval


def add_rule_cases(tests: PackTests, rule, alerts: list[AlertingRule], builder: CaseBuilder) -> None:
    """The rule's cases: a series per severity band, one on the safe side, one without its guard."""
    first = alerts[0]
    guard_on = tuple(first.guard_on or ())
    steps = builder.check_step(rule, tests.interval)
    samples = steps + 2
    tests.samples = max(tests.samples, samples)
    built = builder.cases(rule, alerts, tests.interval, steps, samples)
    if "guard" in first.inputs and guard_on:
        firing = [case for case in built if case[2]]
        if firing:
            name, values, _, observed = firing[0]
            built.append(("noguard", values, (), observed))
    for case, values, firing, observed in built:
        labels = _labels(first, tests.pack, case)
        tests.cases.append(Case(first.inputs["signal"], labels, values, firing, observed))
        if "guard" in first.inputs and guard_on and case != "noguard":
            tests.guards.append((first.inputs["guard"], {**{l: labels[l] for l in guard_on if l in labels}, "rule_pack": tests.pack}))
    if "guard" in first.inputs and not guard_on:
        tests.guards.append((first.inputs["guard"], {"rule_pack": tests.pack}))
        tests.notes.append(f"{tests.pack}/{first.rule}: its guard matches on no label (one series for all), so the "
                           "promtool test cannot hold one case without it")


def _guarded(tests: PackTests, alert: AlertingRule, case: Case) -> bool:
    """Whether `(...) and on(<guard_on>) (guard)` keeps the case's series, as Prometheus matches."""
    if "guard" not in alert.inputs:
        return True
    on = alert.guard_on or ()
    return any(record == alert.inputs["guard"] and all(labels.get(l, "") == case.labels.get(l, "") for l in on)
               for record, labels in tests.guards)


def add_rule_checks(tests: PackTests, rule, alerts: list[AlertingRule], builder: CaseBuilder) -> None:
    """What the rule's alert must show: at the check time, the levels each of its cases passes, with the level's
    labels and rendered annotations; before `for` has elapsed, nothing."""
    first = alerts[0]
    expected = []
    try:
        for case in tests.cases:
            if case.record != first.inputs["signal"] or not _guarded(tests, first, case):
                continue
            for alert in case.firing:
                if math.isnan(case.observed) and any(ref in text for text in alert.annotations.values()
                                                     for ref in ("$value", ".Value")):
                    raise Unrenderable("$value of a fitted line")
                expected.append({"exp_labels": {**case.labels, **alert.labels},
                                 "exp_annotations": {key: render_template(text, case.labels, case.observed)
                                                     for key, text in alert.annotations.items()}})
    except Unrenderable as error:
        tests.notes.append(f"{tests.pack}/{first.rule}: no promtool check: annotations use {error}, which the "
                           "generator cannot render as Prometheus would")
        return
    pending = builder.pending_step(rule, tests.interval)
    if pending is not None:
        tests.checks.append({"eval_time": format_duration(tests.interval * pending), "alertname": first.alert,
                             "exp_alerts": []})
    tests.checks.append({"eval_time": format_duration(tests.interval * builder.check_step(rule, tests.interval)),
                         "alertname": first.alert, "exp_alerts": expected})


def _selector(name: str, labels: dict[str, str]) -> str:
    inner = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return f"{name}{{{inner}}}"


def pack_tests(compiled: CompiledPack, rule_file: str, kinds: Mapping[str, RuleKind]) -> tuple[dict[str, dict], list[str]]:
    """The promtool test documents for one compiled pack (`rule_file` as the test file names it), and notes.

    Returns {file suffix: document}: "" for threshold and trend alerts, evaluated at the pack's interval, and
    "regression" (or "regression-<every>") for regression alerts, evaluated at their `every` so a baseline a day
    back costs hundreds of evaluations, not thousands.

    promtool evaluates every rule of the file at every step of every test group, so cases share groups: a group
    holds the cases of rules that read different recorded signals, which keeps a pack of 50 rules' tests to a few
    groups while each case is seen by its own rule only (guards, which rules may share, are matched as
    Prometheus matches them).
    """
    by_rule: dict[str, list[AlertingRule]] = {}
    for alert in compiled.alerts:
        by_rule.setdefault(alert.rule, []).append(alert)
    rules = {rule.name: rule for rule in compiled.pack.rules}
    notes: list[str] = []
    by_interval: dict[pd.Timedelta, list] = {}
    for name, alerts in by_rule.items():
        rule = rules[name]
        builder = kinds[rule.type].promtool
        interval = builder.interval(rule, compiled.interval)
        reason = builder.untestable(rule, interval)
        if reason:
            notes.append(f"{compiled.pack.name}/{name}: no promtool test: {reason}")
            continue
        by_interval.setdefault(interval, []).append((rule, alerts, builder))
    others = [interval for interval in by_interval if interval != compiled.interval]
    documents = {}
    for interval, members in sorted(by_interval.items()):
        if interval == compiled.interval:
            suffix = ""  # regression rules whose `every` is the pack's interval join the main file
        else:
            suffix = "regression" if len(others) == 1 else f"regression-{format_duration(interval)}"
        groups = _groups(compiled, members, interval, notes)
        if groups:
            documents[suffix] = {"rule_files": [rule_file], "evaluation_interval": format_duration(interval), "tests": groups}
    return documents, notes


def _groups(compiled: CompiledPack, members: list, interval: pd.Timedelta, notes: list[str]) -> list[dict]:
    partitions: list[tuple[set[str], list]] = []  # (signals used, [(rule, alerts, builder)])
    for rule, alerts, builder in members:
        signal = alerts[0].inputs["signal"]
        target = next((p for p in partitions if signal not in p[0]), None)
        if target is None:
            target = (set(), [])
            partitions.append(target)
        target[0].add(signal)
        target[1].append((rule, alerts, builder))
    groups = []
    for index, (_, part) in enumerate(partitions, start=1):
        tests = PackTests(compiled.pack.name, interval)
        for rule, alerts, builder in part:
            add_rule_cases(tests, rule, alerts, builder)
        for rule, alerts, builder in part:
            add_rule_checks(tests, rule, alerts, builder)
        notes.extend(tests.notes)
        if not tests.checks:
            continue
        series = [{"series": _selector(case.record, case.labels), "values": case.values} for case in tests.cases]
        unique_guards: list = []
        for record, labels in tests.guards:
            if (record, labels) not in unique_guards:
                unique_guards.append((record, labels))
        series += [{"series": _selector(record, labels), "values": f"1x{tests.samples}"} for record, labels in unique_guards]
        names = ", ".join(rule.name for rule, _, _ in part)
        groups.append({"name": f"{compiled.pack.name} #{index} ({names}): each alert fires at every severity band, "
                               "and stays silent on the safe side, without its guard and before `for` has elapsed",
                       "interval": format_duration(interval),
                       "input_series": series,
                       "alert_rule_test": tests.checks})
    return groups


# -- promtool tests from a backtest ------------------------------------------------------------------------------

def backtest_checks(labeler, findings, times: list[pd.Timestamp], origin: pd.Timestamp, alertnames: list[str]
                    ) -> list[dict]:
    """`alert_rule_test` entries saying that at each of `times` exactly the alerts of the backtest's episodes
    firing then fire (labels and annotations as compile/alerts.py gives them, from the generated rules), for
    each of `alertnames`; `origin` is the test's time 0 (the first input sample).

    With the backtest's input series as the test's input (raw metrics: the recording rules run too, as a rule
    group evaluates them), `promtool test rules` then proves the generated files against the engine step by
    step. Severity is per episode in the engine (graded by its peak), per level in Prometheus: the rules checked
    this way have one level each; annotations that print `$value` are not comparable (the engine reports the
    episode's peak) and raise Unrenderable."""
    checks = []
    for at in times:
        for alertname in alertnames:
            expected = []
            for finding in findings:
                if finding.rule != alertname or finding.start > at or (finding.end is not None and at >= finding.end):
                    continue
                if any(ref in text for text in labeler.shape(finding).annotations.values()
                       for ref in ("$value", ".Value")):
                    raise Unrenderable(f"{alertname}: $value in an annotation")
                labels, annotations = labeler.alert(finding)
                expected.append({"exp_labels": {k: v for k, v in labels.items() if k != "alertname"},
                                 "exp_annotations": annotations})
            checks.append({"eval_time": format_duration(at - origin), "alertname": alertname,
                           "exp_alerts": sorted(expected, key=lambda alert: sorted(alert["exp_labels"].items()))})
    return checks
