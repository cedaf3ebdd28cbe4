"""The health score: 100 minus deductions per finding severity and per violated SLO, per instance, category, fleet.

The seeds' score (100; -25 per critical, -15 per high, -10 per medium, -5 per low finding; -20 × the share of
SLOs violated; clamped to 0..100), re-based on a backtest's findings and SLO results:

- a finding deducts once per alert (rule × series labels) at the worst severity it reached, so an alert that
  flaps ten times over a week costs what one sustained episode costs;
- a finding or SLO group concerns its `instance`, or, without one, every instance whose labels include all of
  its labels (an SLO grouped by model_name concerns the instances serving that model); with no such instance
  it is fleet-level;
- instance score: 100 - the deductions of the findings that concern it - 20 × (violated / evaluated) SLO groups
  that concern it;
- overall score: the mean of the instance scores (instances without findings score 100; pass `instances` so
  they are counted), minus the deductions of fleet-level findings, minus 20 × the share of fleet-level SLO groups
  violated;
- category score: 100 - the category's deductions on instances divided by the number of instances - its
  fleet-level deductions; `slo_burn` also loses 20 × the share of all SLO groups violated.
Every score is clamped to 0..100. An SLO group counts as violated when its attainment is below the objective.

A score says what was checked, so it is only given where something was: with no rule or SLO evaluated, every
score is unknown (None); a category is unknown when the set has no rule for it or some of its rules (or SLOs, for
`slo_burn`) could not be evaluated, and `not_covered` says which of the two. With some checks failed, the overall
score is still given, and `failed` says how many of the `checks` it misses.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from rules_engine.evaluate.findings import SEVERITIES, Finding, severity_rank
from rules_engine.spec.models import CATEGORIES

DEDUCTIONS = {"critical": 25.0, "high": 15.0, "medium": 10.0, "low": 5.0}
SLO_VIOLATION_WEIGHT = 20.0


@dataclass(frozen=True)
class Check:
    """One rule or SLO the backtest tried, under its category, and whether it could be evaluated."""

    category: str
    failed: bool


@dataclass
class InstanceHealth:
    instance: str
    score: float
    findings: int = 0  # distinct alerts (rule × series) that deducted
    slo_groups: int = 0
    slo_violations: int = 0


@dataclass
class Health:
    """Scores 0..100: `overall`, per `instances` (InstanceHealth by instance) and per `categories`; None where
    nothing was checked (`not_covered`: category -> why)."""

    overall: float | None
    instances: dict[str, InstanceHealth] = field(default_factory=dict)
    categories: dict[str, float | None] = field(default_factory=dict)
    not_covered: dict[str, str] = field(default_factory=dict)
    checks: int = 0  # rules and SLOs tried
    failed: int = 0  # of those, the ones that could not be evaluated
    fleet_findings: int = 0
    slo_groups: int = 0
    slo_violations: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON export's `health` object."""
        return {
            "overall": _rounded(self.overall),
            "checks": {"tried": self.checks, "failed": self.failed},
            "instances": {name: {"score": round(h.score, 2), "findings": h.findings, "slo_groups": h.slo_groups,
                                 "slo_violations": h.slo_violations} for name, h in sorted(self.instances.items())},
            "categories": {name: _rounded(score) for name, score in self.categories.items()},
            "not_covered": dict(self.not_covered),
            "fleet_findings": self.fleet_findings,
            "slo_groups": self.slo_groups,
            "slo_violations": self.slo_violations,
            "method": {"deductions": dict(DEDUCTIONS), "slo_violation_weight": SLO_VIOLATION_WEIGHT},
        }


def _clamp(score: float) -> float:
    return max(0.0, min(100.0, score))


def _rounded(score: float | None) -> float | None:
    return None if score is None else round(score, 2)


def coverage_gaps(checks: Iterable[Check]) -> dict[str, str]:
    """category -> why its score is unknown: nothing in the set checks it, or some of its checks failed."""
    tried = Counter(check.category for check in checks)
    failed = Counter(check.category for check in checks if check.failed)
    gaps = {}
    for category in CATEGORIES:
        if not tried[category]:
            gaps[category] = "no rule or SLO in the set" if category == "slo_burn" else "no rule in the set"
        elif failed[category]:
            gaps[category] = f"{failed[category]} of {tried[category]} could not be evaluated"
    return gaps


def distinct_alerts(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per (rule, kind, series labels): the one with the worst severity."""
    worst: dict[tuple, Finding] = {}
    for finding in findings:
        key = (finding.rule, finding.kind, tuple(sorted(finding.labels.items())))
        if key not in worst or severity_rank(finding.severity) > severity_rank(worst[key].severity):
            worst[key] = finding
    return list(worst.values())


def members_of(labels: Mapping[str, str], instance_labels: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The instances a finding or SLO group concerns: its own `instance`, or every instance whose labels include
    all of the group's (an SLO grouped by model_name concerns the instances serving that model)."""
    if labels.get("instance"):
        return [labels["instance"]]
    if not labels:
        return []
    return sorted(name for name, known in instance_labels.items()
                  if all(known.get(key) == value for key, value in labels.items()))


def health_scores(findings: Iterable[Finding], checks: Iterable[Check], slo_results: Iterable[Any] = (),
                  instances: Iterable[str] | Mapping[str, Mapping[str, str]] = ()) -> Health:
    """Score a backtest. `checks` are the rules and SLOs it tried (what the scores can speak for); `slo_results`
    are SLOResult-like (labels, compliant, error); `instances` the fleet's instance names, or a mapping of each name
    to its other labels (model_name, ...), so that instances without findings count as healthy and group-level
    findings (no `instance` label) land on the instances they concern."""
    checks = list(checks)
    failed = sum(check.failed for check in checks)
    gaps = coverage_gaps(checks)
    if failed == len(checks):
        return Health(overall=None, categories=dict.fromkeys(CATEGORIES), not_covered=gaps, checks=len(checks),
                      failed=failed)
    instance_labels = dict(instances) if isinstance(instances, Mapping) else {name: {} for name in instances}
    alerts = distinct_alerts(findings)
    slos = [r for r in slo_results if getattr(r, "error", None) is None and getattr(r, "compliant", None) is not None]
    names = set(instance_labels) | {f.labels["instance"] for f in alerts if f.labels.get("instance")}
    names |= {r.labels["instance"] for r in slos if r.labels.get("instance")}

    per_instance = {name: InstanceHealth(name, 100.0) for name in names}
    deducted = {name: 0.0 for name in names}
    fleet_deduction = 0.0
    fleet_findings = 0
    for finding in alerts:
        points = DEDUCTIONS.get(finding.severity, 0.0)
        members = members_of(finding.labels, instance_labels)
        for member in members:
            deducted[member] += points
            per_instance[member].findings += 1
        if not members:
            fleet_deduction += points
            fleet_findings += 1
    for result in slos:
        for member in members_of(result.labels, instance_labels):
            per_instance[member].slo_groups += 1
            per_instance[member].slo_violations += int(not result.compliant)
    fleet_slos = [r for r in slos if not members_of(r.labels, instance_labels)]
    for name, health in per_instance.items():
        share = health.slo_violations / health.slo_groups if health.slo_groups else 0.0
        health.score = _clamp(100.0 - deducted[name] - SLO_VIOLATION_WEIGHT * share)

    fleet_violations = sum(not r.compliant for r in fleet_slos)
    mean = sum(h.score for h in per_instance.values()) / len(per_instance) if per_instance else 100.0
    overall = _clamp(mean - fleet_deduction
                     - (SLO_VIOLATION_WEIGHT * fleet_violations / len(fleet_slos) if fleet_slos else 0.0))

    count = max(len(per_instance), 1)
    categories = {}
    all_violations = sum(not r.compliant for r in slos)
    for category in CATEGORIES:
        of_category = [f for f in alerts if f.category == category]
        attributed = sum(DEDUCTIONS.get(f.severity, 0.0) * len(members_of(f.labels, instance_labels))
                         for f in of_category)
        fleet = sum(DEDUCTIONS.get(f.severity, 0.0) for f in of_category if not members_of(f.labels, instance_labels))
        score = 100.0 - attributed / count - fleet
        if category == "slo_burn" and slos:
            score -= SLO_VIOLATION_WEIGHT * all_violations / len(slos)
        categories[category] = None if category in gaps else _clamp(score)
    return Health(overall=overall, instances=per_instance, categories=categories, not_covered=gaps,
                  checks=len(checks), failed=failed, fleet_findings=fleet_findings, slo_groups=len(slos),
                  slo_violations=all_violations)


assert set(DEDUCTIONS) == set(SEVERITIES)
