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


@dataclass
class RuleTests:
    rule: str
    groups: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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


def rule_tests(pack_name: str, alerts: list[AlertingRule], interval: pd.Timedelta, stat: str | None,
               window: pd.Timedelta | None) -> RuleTests:
    """Test groups for the alerts of one rule (all its severity levels share the alert name)."""
    first = alerts[0]
    tests = RuleTests(rule=first.rule)
    series = {label: f"test-{label}" for label in first.series_labels}
    series_with_pack = {**series, "rule_pack": pack_name}
    for_ = first.for_
    steps = int(max(for_ + interval, window or pd.Timedelta(0)) // interval) + 2
    eval_time = interval * steps
    samples = steps + 2

    def input_series(value: float, with_guard: bool = True) -> list[dict]:
        found = [{"series": _selector(first.inputs["signal"], series_with_pack), "values": f"{number(value)}x{samples}"}]
        if "guard" in first.inputs and with_guard:
            guard_labels = {label: series[label] for label in (first.guard_on or ()) if label in series}
            guard_labels["rule_pack"] = pack_name
            found.append({"series": _selector(first.inputs["guard"], guard_labels), "values": f"1x{samples}"})
        return found

    def group(name: str, value: float, at: pd.Timedelta, expected: list[dict], with_guard: bool = True) -> dict:
        return {
            "name": f"{first.rule}: {name}",
            "interval": format_duration(interval),
            "input_series": input_series(value, with_guard),
            "alert_rule_test": [{"eval_time": format_duration(at), "alertname": first.alert, "exp_alerts": expected}],
        }

    for value in firing_values(alerts):
        observed = window_value(value, stat, window, interval)
        try:
            expected = [{"exp_labels": {**series_with_pack, **alert.labels},
                         "exp_annotations": {key: render_template(text, series_with_pack, observed)
                                             for key, text in alert.annotations.items()}}
                        for alert in alerts if _holds(value, alert)]
        except Unrenderable as error:
            tests.notes.append(f"{pack_name}/{first.rule}: no firing test: annotations use {error}, which the "
                               "generator cannot render as Prometheus would")
            break
        severities = ", ".join(alert.severity for alert in alerts if _holds(value, alert))
        tests.groups.append(group(f"fires at {number(value)} ({severities})", value, eval_time, expected))
    else:
        value = firing_values(alerts)[0]
        if for_ >= 2 * interval:
            tests.groups.append(group(f"pending at {number(value)} before `for` ({format_duration(for_)})", value,
                                      for_ - interval, []))
        if "guard" in first.inputs:
            tests.groups.append(group(f"silent at {number(value)} without its guard", value, eval_time, [], with_guard=False))
    safe = safe_value(first)
    tests.groups.append(group(f"silent at {number(safe)}", safe, eval_time, []))
    return tests


def _selector(name: str, labels: dict[str, str]) -> str:
    inner = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return f"{name}{{{inner}}}"


def pack_tests(compiled: CompiledPack, rule_file: str) -> tuple[dict, list[str]]:
    """The promtool test document for one compiled pack (`rule_file` as the test file should name it), and notes."""
    by_rule: dict[str, list[AlertingRule]] = {}
    for alert in compiled.alerts:
        by_rule.setdefault(alert.rule, []).append(alert)
    rules = {rule.name: rule for rule in compiled.pack.rules}
    groups: list[dict] = []
    notes: list[str] = []
    for name, alerts in by_rule.items():
        rule = rules[name]
        if alerts[0].kind != "threshold":
            notes.append(f"{compiled.pack.name}/{name}: no promtool test generated for {alerts[0].kind} alerts yet")
            continue
        tests = rule_tests(compiled.pack.name, alerts, compiled.interval, rule.stat, rule.window)
        groups.extend(tests.groups)
        notes.extend(tests.notes)
    document = {"rule_files": [rule_file], "evaluation_interval": format_duration(compiled.interval), "tests": groups}
    return document, notes
