"""The health score: the documented example, counting each alert once, fleet-level items, clamping."""
import json

import pandas as pd
import pytest

from rules_engine.evaluate.findings import Finding
from rules_engine.evaluate.health import Check, health_scores
from rules_engine.evaluate.slo import SLOResult
from rules_engine.spec.models import CATEGORIES

T0 = pd.Timestamp("2026-01-01T00:00:00Z")
EVERY_CATEGORY = [Check(category, failed=False) for category in CATEGORIES]  # a rule set that checks all


def finding(rule, severity, category, instance=None, hour=0):
    labels = {"instance": instance} if instance else {"model_name": "m"}
    return Finding(rule=rule, kind="threshold", category=category, severity=severity, labels=labels,
                   start=T0 + pd.Timedelta(hours=hour), end=None, value=1.0, threshold=0.5, recommendation="",
                   playbook=None)


def slo_result(compliant, **labels):
    return SLOResult(slo="s", sli="ratio", objective=99.0, period=pd.Timedelta(days=30), labels=labels,
                     attainment=0.995 if compliant else 0.95, compliant=compliant)


def test_documented_example():
    findings = [finding("KVTrend", "critical", "memory_pressure", "a"),
                finding("ITLRegression", "medium", "high_latency", "a")]
    slos = [slo_result(False, model_name="m1"), slo_result(True, model_name="m2")]
    health = health_scores(findings, EVERY_CATEGORY, slos, instances=["a", "b", "c", "d"])
    assert {name: h.score for name, h in health.instances.items()} == {"a": 65, "b": 100, "c": 100, "d": 100}
    assert health.overall == pytest.approx(81.25)
    assert health.categories["memory_pressure"] == pytest.approx(93.75)
    assert health.categories["high_latency"] == pytest.approx(97.5)
    assert health.categories["slo_burn"] == pytest.approx(90)
    assert health.categories["queue_buildup"] == 100


def test_an_alert_deducts_once_at_its_worst_severity():
    flapping = [finding("Queue", "low", "queue_buildup", "a", hour) for hour in range(10)]
    flapping.append(finding("Queue", "high", "queue_buildup", "a", 11))
    health = health_scores(flapping, EVERY_CATEGORY)
    assert health.instances["a"].score == 85 and health.instances["a"].findings == 1


def test_instance_slo_violations_and_fleet_findings():
    slos = [slo_result(False, instance="a"), slo_result(True, instance="a"), slo_result(True, instance="b")]
    fleet = [finding("FleetErrors", "high", "error_rate")]
    health = health_scores(fleet, EVERY_CATEGORY, slos)
    assert health.instances["a"].score == 90 and health.instances["b"].score == 100
    assert health.overall == pytest.approx(95 - 15)
    assert health.fleet_findings == 1 and health.slo_violations == 1


def test_scores_are_clamped_and_exported():
    many = [finding(f"R{i}", "critical", "memory_pressure", "a") for i in range(6)]
    health = health_scores(many, EVERY_CATEGORY, instances=["a"])
    assert health.instances["a"].score == 0 and health.overall == 0
    assert health.categories["memory_pressure"] == 0
    exported = json.loads(json.dumps(health.to_dict()))
    assert exported["instances"]["a"]["score"] == 0 and exported["method"]["deductions"]["critical"] == 25


def test_no_findings_is_full_health():
    health = health_scores([], EVERY_CATEGORY, [], instances=["a", "b"])
    assert health.overall == 100 and all(h.score == 100 for h in health.instances.values())


def test_model_level_findings_and_slos_land_on_the_instances_serving_the_model():
    instances = {"a": {"model_name": "m"}, "b": {"model_name": "m"}, "c": {"model_name": "other"}}
    burn = finding("TTFTBudgetBurn", "critical", "slo_burn")  # labels {model_name: m}, no instance
    health = health_scores([burn], EVERY_CATEGORY, [slo_result(False, model_name="m")], instances=instances)
    scores = {name: h.score for name, h in health.instances.items()}
    assert scores == {"a": 55.0, "b": 55.0, "c": 100.0}  # -25 for the burn, -20 for the violated SLO group
    assert health.overall == pytest.approx((55 + 55 + 100) / 3) and health.fleet_findings == 0
    unattributed = health_scores([burn], EVERY_CATEGORY, instances={"c": {"model_name": "other"}})
    assert unattributed.fleet_findings == 1 and unattributed.overall == 75.0


def test_nothing_evaluated_is_unknown_health_not_full_health():
    health = health_scores([], [Check("queue_buildup", failed=True), Check("high_latency", failed=True)],
                           instances=["a"])
    assert health.overall is None and set(health.categories.values()) == {None}
    exported = json.loads(json.dumps(health.to_dict()))
    assert exported["overall"] is None and exported["checks"] == {"tried": 2, "failed": 2}
    assert exported["not_covered"]["queue_buildup"] == "1 of 1 could not be evaluated"
    assert exported["not_covered"]["memory_pressure"] == "no rule in the set"


def test_a_category_without_rules_or_with_failed_rules_is_not_covered():
    checks = [Check("queue_buildup", failed=False), Check("high_latency", failed=False),
              Check("high_latency", failed=True)]
    health = health_scores([finding("Queue", "high", "queue_buildup", "a")], checks, instances=["a", "b"])
    assert health.overall == pytest.approx(92.5) and health.failed == 1
    assert health.categories["queue_buildup"] == pytest.approx(92.5)
    assert health.categories["high_latency"] is None and health.categories["error_rate"] is None
    assert health.not_covered["high_latency"] == "1 of 2 could not be evaluated"
    assert health.not_covered["slo_burn"] == "no rule or SLO in the set"


def test_one_low_finding_costs_five_points():
    health = health_scores([finding("Queue", "low", "queue_buildup", "a")], EVERY_CATEGORY, instances=["a"])
    assert health.instances["a"].score == 95 and health.overall == 95
    assert health.categories["queue_buildup"] == 95


@pytest.mark.parametrize("severity, points", [("low", 5), ("medium", 10), ("high", 15), ("critical", 25)])
def test_a_fleet_level_finding_costs_its_category_and_the_overall_score_in_full(severity, points):
    # No `instance` label and no instance serving model "m": the finding is fleet-level.
    health = health_scores([finding("FleetErrors", severity, "error_rate")], EVERY_CATEGORY, instances=["a", "b"])
    assert health.categories["error_rate"] == 100 - points
    assert health.overall == 100 - points and health.fleet_findings == 1
    assert {name: h.score for name, h in health.instances.items()} == {"a": 100, "b": 100}
    assert health.categories["queue_buildup"] == 100
