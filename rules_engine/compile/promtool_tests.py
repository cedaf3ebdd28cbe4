"""`promtool test rules` files generated from the rule spec: for every alert, input series that make it fire
(at each severity level), and ones that keep it silent (safe side of the threshold, still pending, guard absent).

Inputs are the recorded series the alerts read (a constant value per test), so a test judges the alert — window
statistic, comparison, severity ladder, `for`, guard matching, labels and annotations — independently of the
raw metrics a signal is recorded from. Expected annotations are rendered from the templates the way Prometheus
renders them; the supported template forms are `$labels.<name>`, `$value`, and `$value | humanize`,
`humanizePercentage`, `humanizeDuration`-free forms listed in TEMPLATE_FILTERS. An alert whose annotations use
anything else gets no firing test, and the generator says so.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pandas as pd

from rules_engine.compile.prometheus import AlertingRule, CompiledPack, number
from rules_engine.evaluate.windows import QUANTILES
from rules_engine.spec.models import format_duration


class Unrenderable(ValueError):
    """An annotation template the generator cannot render the way Prometheus would."""


def go_value(value: float) -> str:
    """Go's `%v` of a float64 (what `{{ $value }}` prints): shortest digits, exponent form outside 1e-4..1e21."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    digits = repr(value).lstrip("-").split("e")[0].replace(".", "").lstrip("0").rstrip("0") or "0"
    exponent = math.floor(math.log10(abs(value)))
    if exponent < -4 or exponent >= 21:
        text = f"{value:.{max(len(digits) - 1, 0)}e}"
        mantissa, power = text.split("e")
        return f"{mantissa}e{power[0]}{power[1:].lstrip('0').rjust(2, '0')}"
    text = f"{value:.{max(len(digits) - exponent - 1, 0)}f}"
    return text


def go_g4(value: float) -> str:
    return f"{value:.4g}"


def humanize(value: float) -> str:
    """Prometheus' `humanize` template function (SI prefixes, 4 significant digits)."""
    if value == 0 or math.isnan(value) or math.isinf(value):
        return go_g4(value)
    prefix = ""
    if abs(value) >= 1:
        for candidate in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(value) < 1000:
                break
            prefix = candidate
            value /= 1000
        return go_g4(value) + prefix
    for candidate in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(value) >= 1:
            break
        prefix = candidate
        value *= 1000
    return go_g4(value) + prefix


TEMPLATE_FILTERS = {
    "humanize": humanize,
    "humanizePercentage": lambda v: f"{v * 100:.4g}%",
}
_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}")


def render_template(text: str, labels: dict[str, str], value: float) -> str:
    def action(match: re.Match) -> str:
        body = match.group(1)
        if body.startswith("$labels."):
            return labels.get(body[len("$labels."):], "")
        parts = [part.strip() for part in body.split("|")]
        if parts[0] != "$value" or len(parts) > 2:
            raise Unrenderable(f"template action {{{{ {body} }}}}")
        if len(parts) == 1:
            return go_value(value)
        if parts[1] not in TEMPLATE_FILTERS:
            raise Unrenderable(f"template function {parts[1]!r}")
        return TEMPLATE_FILTERS[parts[1]](value)

    return _ACTION.sub(action, text)


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


def _holds(value: float, alert: AlertingRule) -> bool:
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
    """One input series of a recorded signal, held at a constant value."""

    record: str
    labels: dict[str, str]
    value: float


@dataclass
class PackTests:
    """Every case of every rule of a pack, evaluated in one promtool test group."""

    pack: str
    interval: pd.Timedelta
    cases: list[Case] = field(default_factory=list)
    guards: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (recorded guard, labels)
    checks: list[dict] = field(default_factory=list)
    steps: int = 0
    notes: list[str] = field(default_factory=list)


def _labels(alert: AlertingRule, pack: str, case: str) -> dict[str, str]:
    labels = {label: f"{label}-{alert.rule}-{case}" for label in alert.series_labels}
    if not labels:  # a signal aggregated to one series: a label of its own keeps the cases apart
        labels["test_case"] = f"{alert.rule}-{case}"
    return {**labels, "rule_pack": pack}


def add_rule_cases(tests: PackTests, alerts: list[AlertingRule], window: pd.Timedelta | None) -> list[str]:
    """The rule's cases: one series per severity band, one on the safe side, one without its guard."""
    first = alerts[0]
    names = []
    guard_on = tuple(first.guard_on or ())
    shared_guard = "guard" in first.inputs and not guard_on
    values = [(f"band{band}", value) for band, value in enumerate(firing_values(alerts))] + [("safe", safe_value(first))]
    if "guard" in first.inputs and guard_on:
        values.append(("noguard", firing_values(alerts)[0]))
    for case, value in values:
        labels = _labels(first, tests.pack, case)
        tests.cases.append(Case(first.inputs["signal"], labels, value))
        if "guard" in first.inputs and guard_on and case != "noguard":
            tests.guards.append((first.inputs["guard"], {**{l: labels[l] for l in guard_on if l in labels}, "rule_pack": tests.pack}))
        names.append(f"{case}={number(value)}")
    if shared_guard:
        tests.guards.append((first.inputs["guard"], {"rule_pack": tests.pack}))
        tests.notes.append(f"{tests.pack}/{first.rule}: its guard matches on no label (one series for all), so the "
                           "promtool test cannot hold one case without it")
    steps = int(max(first.for_ + tests.interval, window or pd.Timedelta(0)) // tests.interval) + 2
    tests.steps = max(tests.steps, steps)
    return names


def _guarded(tests: PackTests, alert: AlertingRule, case: Case) -> bool:
    """Whether `(...) and on(<guard_on>) (guard)` keeps the case's series, as Prometheus matches."""
    if "guard" not in alert.inputs:
        return True
    on = alert.guard_on or ()
    return any(record == alert.inputs["guard"] and all(labels.get(l, "") == case.labels.get(l, "") for l in on)
               for record, labels in tests.guards)


def add_rule_checks(tests: PackTests, alerts: list[AlertingRule], stat: str | None, window: pd.Timedelta | None,
                    cases: list[str]) -> None:
    """What the rule's alert must show: at its firing time, every case series (of any rule) on its signal that
    passes a level, with the level's labels and rendered annotations; before `for` has elapsed, nothing."""
    first = alerts[0]
    steps = int(max(first.for_ + tests.interval, window or pd.Timedelta(0)) // tests.interval) + 2
    expected = []
    try:
        for case in tests.cases:
            if case.record != first.inputs["signal"] or not _guarded(tests, first, case):
                continue
            observed = window_value(case.value, stat, window, tests.interval)
            expected.extend({"exp_labels": {**case.labels, **alert.labels},
                             "exp_annotations": {key: render_template(text, case.labels, observed)
                                                 for key, text in alert.annotations.items()}}
                            for alert in alerts if _holds(case.value, alert))
    except Unrenderable as error:
        tests.notes.append(f"{tests.pack}/{first.rule}: no promtool check: annotations use {error}, which the "
                           "generator cannot render as Prometheus would")
        return
    if first.for_ >= 2 * tests.interval:
        tests.checks.append({"eval_time": format_duration(first.for_ - tests.interval), "alertname": first.alert,
                             "exp_alerts": []})
    tests.checks.append({"eval_time": format_duration(tests.interval * steps), "alertname": first.alert,
                         "exp_alerts": expected})


def _selector(name: str, labels: dict[str, str]) -> str:
    inner = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return f"{name}{{{inner}}}"


def pack_tests(compiled: CompiledPack, rule_file: str) -> tuple[dict, list[str]]:
    """The promtool test document for one compiled pack (`rule_file` as the test file should name it), and notes.

    promtool evaluates every rule of the file at every step of every test group, so cases share groups: a group
    holds the cases of rules that read different recorded signals (rules sharing a signal go to different groups,
    so expected alert lists stay per rule), which keeps a pack of 50 rules' tests to a few groups. Expectations
    still account for every series a rule can see in its group (guards shared between rules included).
    """
    by_rule: dict[str, list[AlertingRule]] = {}
    for alert in compiled.alerts:
        by_rule.setdefault(alert.rule, []).append(alert)
    rules = {rule.name: rule for rule in compiled.pack.rules}
    notes: list[str] = []
    partitions: list[tuple[set[str], list]] = []  # (signals used, [(alerts, rule)])
    for name, alerts in by_rule.items():
        if alerts[0].kind != "threshold":
            notes.append(f"{compiled.pack.name}/{name}: no promtool test generated for {alerts[0].kind} alerts yet")
            continue
        signal = alerts[0].inputs["signal"]
        target = next((p for p in partitions if signal not in p[0]), None)
        if target is None:
            target = (set(), [])
            partitions.append(target)
        target[0].add(signal)
        target[1].append((alerts, rules[name]))
    groups = []
    for index, (_, members) in enumerate(partitions, start=1):
        tests = PackTests(compiled.pack.name, compiled.interval)
        tested = [(alerts, rule, add_rule_cases(tests, alerts, rule.window)) for alerts, rule in members]
        for alerts, rule, cases in tested:
            add_rule_checks(tests, alerts, rule.stat, rule.window, cases)
        notes.extend(tests.notes)
        if not tests.checks:
            continue
        samples = tests.steps + 2
        series = [{"series": _selector(case.record, case.labels), "values": f"{number(case.value)}x{samples}"}
                  for case in tests.cases]
        unique_guards: list = []
        for record, labels in tests.guards:
            if (record, labels) not in unique_guards:
                unique_guards.append((record, labels))
        series += [{"series": _selector(record, labels), "values": f"1x{samples}"} for record, labels in unique_guards]
        names = ", ".join(rule.name for _, rule in members)
        groups.append({"name": f"{compiled.pack.name} #{index} ({names}): each alert fires at every severity band, "
                               "and stays silent on the safe side, without its guard and before `for` has elapsed",
                       "interval": format_duration(compiled.interval),
                       "input_series": series,
                       "alert_rule_test": tests.checks})
    document = {"rule_files": [rule_file], "evaluation_interval": format_duration(compiled.interval), "tests": groups}
    return document, notes
