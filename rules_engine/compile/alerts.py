"""Findings as the alerts the generated rules would send: same alertname, labels and annotations.

`rules-engine monitor` sends these for the episodes it evaluates; the promtool tests made from a backtest
(promtool_tests.backtest_checks) expect them from the generated rule files.

The labels and annotation templates come from the compiler itself (compile/prometheus.py for rule packs,
compile/slo.py for SLO burn-rate alerts), never restated here: a finding of severity S takes the compiled alert
of its rule at level S (its SLO window pair), whose labels are added to the series' labels as Prometheus adds a
rule's labels, and whose annotations are rendered as Prometheus renders them (promql/templates.py) with the
series' labels and the finding's value (its peak so far, where Prometheus would show the value of the current
evaluation).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import pandas as pd

from rules_engine.compile.prometheus import compile_pack
from rules_engine.compile.slo import SLOCompileError, compile_slo, sloth_labels
from rules_engine.promql.burn_windows import slo_catalog
from rules_engine.promql.kinds import RuleKind
from rules_engine.promql.templates import Unrenderable, render_template
from rules_engine.spec.loader import RuleSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlertShape:
    """What a compiled alert adds to a series: its name, labels, annotation templates, and the labels its
    expression's result carries beside the finding's own (the recorded series' rule_pack, an SLO's sloth ids)."""

    alertname: str
    labels: dict[str, str]
    annotations: dict[str, str]
    series_labels: dict[str, str]


class AlertLabeler:
    """Finding -> (labels, annotations) of the alert the generated rule sends for it."""

    def __init__(self, ruleset: RuleSet, kinds: Mapping[str, RuleKind], interval: pd.Timedelta) -> None:
        self._shapes: dict[tuple[str, str, str], AlertShape] = {}
        self._first: dict[str, AlertShape] = {}
        for pack in ruleset.packs:
            for alert in compile_pack(pack, kinds, interval).alerts:
                # The alert the engine sends has none of the caveats about what PromQL leaves out.
                annotations = {k: v for k, v in alert.annotations.items() if k not in alert.caveats}
                self._add(alert.rule, "", alert.severity, AlertShape(alert.alert, alert.labels, annotations,
                                                                    {"rule_pack": pack.name}))
        for slo in ruleset.slos:
            try:
                document, _ = compile_slo(slo, slo_catalog(slo), interval)
            except (SLOCompileError, ValueError) as error:  # evaluate reports the SLO's error; nothing to label
                log.warning("SLO %s: no alert labels: %s", slo.name, error)
                continue
            ids = {**{k: v for k, v in sorted(slo.labels.items()) if k != "service"}, **sloth_labels(slo)}
            for group in document["groups"]:
                for rule in group["rules"]:
                    if "alert" in rule:
                        labels = rule["labels"]
                        self._add(slo.name, labels["sloth_severity"], labels["severity"],
                                  AlertShape(rule["alert"], labels, rule["annotations"], ids))

    def _add(self, rule: str, pair: str, severity: str, shape: AlertShape) -> None:
        self._shapes[(rule, pair, severity)] = shape
        self._first.setdefault(rule, shape)

    # A finding is rules_engine.evaluate.findings.Finding (that layer is beside this one, not below it).
    def shape(self, finding) -> AlertShape:
        pair = finding.details.get("alert", "") if finding.kind == "slo" else ""
        found = self._shapes.get((finding.rule, pair, finding.severity))
        if found is not None:
            return found
        # A severity with no compiled level of its own (a threshold ladder clamped to one bound): the rule's
        # first alert, with the finding's severity.
        first = self._first[finding.rule]
        return AlertShape(first.alertname, {**first.labels, "severity": finding.severity}, first.annotations,
                          first.series_labels)

    def alert(self, finding) -> tuple[dict[str, str], dict[str, str]]:
        """The alert's labels (series labels, then the rule's, then alertname, as Prometheus sets them) and its
        rendered annotations."""
        shape = self.shape(finding)
        series = {**shape.series_labels, **finding.labels}
        labels = {**series, **shape.labels, "alertname": shape.alertname}
        annotations = {}
        for name, template in shape.annotations.items():
            try:
                annotations[name] = render_template(template, series, finding.value)
            except Unrenderable as error:  # sent as written rather than guessed at
                log.warning("%s: annotation %s not rendered: %s", finding.rule, name, error)
                annotations[name] = template
        return labels, annotations
