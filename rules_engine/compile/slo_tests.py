"""`promtool test rules` files for the SLO burn-rate alerts.

Inputs are the recorded `slo:sli_error:ratio_rate<W>` series the alerts read (their windows are baked into the
recordings, so minutes of input stand for days), plus, for event SLIs with a minimum traffic, raw counters that
satisfy the event-rate guard. One test group per window pair: both windows above the pair's bound fires it (and
every other pair whose windows are then above its own bound); only the short window above, or no traffic, stays
silent. SLO alerts have no `for`, so the check comes after a few evaluations.
"""
from __future__ import annotations

import re

import pandas as pd
import promql_parser

from rules_engine.compile.alertmanager import SLO_PACK
from rules_engine.compile.promtool_tests import Unrenderable, render_template
from rules_engine.compile.slo import alert_annotations, burn_factor, sloth_labels
from rules_engine.promql.burn_windows import AlertPair, WindowCatalog
from rules_engine.promql.levels import number
from rules_engine.promql.selectors import inject_selector
from rules_engine.spec.models import format_duration

STEPS = 5  # evaluations before the check: enough samples for rate() in the traffic guard


def compiled_pairs(slo, catalog: WindowCatalog) -> list[tuple[AlertPair, float]]:
    """(pair, bound) of the pairs compile_slo turns into alerts (enabled, and able to fire)."""
    found = []
    for pair in catalog.pairs:
        factor = burn_factor(pair, slo.period)
        if getattr(slo.alerting, pair.alert) and factor * slo.error_budget <= 1:
            found.append((pair, factor * float(number(slo.error_budget))))
    return found


def _matching_value(matcher) -> str:
    """A label value the matcher accepts: its value for `=`, a literal alternative of a simple `=~` regex."""
    op = str(matcher.op)
    if op in ("=", "MatchOp.Equal"):
        return matcher.value
    if op in ("!=", "MatchOp.NotEqual"):
        return f"not-{matcher.value}" if matcher.value else "x"
    if op in ("=~", "MatchOp.Re"):
        for alternative in matcher.value.split("|"):
            if re.fullmatch(r"[\w.:-]+", alternative):
                return alternative
    if op in ("!~", "MatchOp.NotRe"):
        return "x-not-matched"
    raise Unrenderable(f"a series for the matcher {matcher}")


def traffic_series(slo, labels: dict[str, str]) -> list[str]:
    """Counter series the guard's `sum by (...) (rate(total[long]))` reads, for the given group_by labels."""
    if slo.sli.type == "ratio":
        total = inject_selector(slo.sli.ratio.total, slo.selector)
    elif slo.sli.type == "latency":
        latency = slo.sli.latency
        total = inject_selector(inject_selector(f"{latency.histogram}_count", latency.selector), slo.selector)
    else:
        return []
    found: list = []

    def collect(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(total), pre_visit=collect)
    series = []
    for selector in found[:1]:  # one series of the first selector carries the traffic
        values = {m.name: _matching_value(m) for m in selector.matchers.matchers if m.name != "__name__"}
        values.update({k: v for k, v in labels.items() if k in slo.group_by})
        inner = ", ".join(f'{k}="{v}"' for k, v in values.items())
        series.append(f"{selector.name}{{{inner}}}")
    return series


def slo_tests(slo, catalog: WindowCatalog, interval: pd.Timedelta, rule_file: str) -> tuple[dict, list[str]]:
    ids = sloth_labels(slo)
    user = {k: v for k, v in sorted(slo.labels.items()) if k != "service"}
    pairs = compiled_pairs(slo, catalog)
    notes: list[str] = []
    samples = STEPS + 2
    eval_time = format_duration(interval * STEPS)
    guarded = slo.sli.type != "timeslices" and slo.alerting.min_event_rate > 0
    groups = []

    def annotations_of(pair: AlertPair, labels: dict[str, str]) -> dict[str, str]:
        return {k: render_template(v, labels, 0.0)
                for k, v in alert_annotations(slo, pair, burn_factor(pair, slo.period)).items()}

    def case(tag: str, name: str, ratios: dict[pd.Timedelta, float], traffic: bool) -> dict:
        labels = {**user, **ids, **{label: f"{label}-{tag}" for label in slo.group_by}}
        series = [{"series": "slo:sli_error:ratio_rate" + format_duration(window) + "{"
                             + ", ".join(f'{k}="{v}"' for k, v in {**labels, "sloth_window": format_duration(window)}.items()) + "}",
                   "values": f"{number(value)}x{samples}"} for window, value in ratios.items()]
        if guarded and traffic:
            # rate() over the longest window divides by all of it: ten times the minimum traffic over that window
            # arrives within the test's few evaluations.
            longest = max(ratios).total_seconds()
            per_step = slo.alerting.min_event_rate * longest * 10 / STEPS
            series += [{"series": s, "values": f"0+{number(per_step)}x{samples}"} for s in traffic_series(slo, labels)]
        expected = []
        for pair, bound in pairs:
            fires = ratios.get(pair.short, 0) > bound and ratios.get(pair.long, 0) > bound and (traffic or not guarded)
            if fires:
                expected.append({"exp_labels": {**labels, "severity": pair.severity, "category": "slo_burn",
                                                "rule_pack": SLO_PACK, **user, "sloth_severity": pair.alert},
                                 "exp_annotations": annotations_of(pair, labels)})
        return {"name": f"SLO {slo.name}: {name}", "interval": format_duration(interval), "input_series": series,
                "alert_rule_test": [{"eval_time": eval_time, "alertname": slo.name, "exp_alerts": expected}]}

    try:
        for pair, bound in pairs:
            above = min(bound * 1.5, (bound + 1) / 2)
            tag = f"{pair.alert}-{pair.speed}"
            groups.append(case(f"{tag}", f"{tag} fires when both windows burn", {pair.short: above, pair.long: above}, True))
            groups.append(case(f"{tag}-short", f"{tag} stays silent when only the short window burns",
                               {pair.short: above, pair.long: bound * 0.5}, True))
            if guarded:
                groups.append(case(f"{tag}-quiet", f"{tag} stays silent without traffic",
                                   {pair.short: above, pair.long: above}, False))
    except Unrenderable as error:
        return {}, [f"SLO {slo.name}: no promtool test: cannot build {error}"]
    if not groups:
        return {}, notes
    return {"rule_files": [rule_file], "evaluation_interval": format_duration(interval), "tests": groups}, notes
