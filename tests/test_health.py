"""The health score: the documented example, counting each alert once, fleet-level items, clamping."""
import json

import pandas as pd
import pytest

from rules_engine.evaluate.findings import Finding
from rules_engine.evaluate.health import health_scores
from rules_engine.evaluate.slo import SLOResult

T0 = pd.Timestamp("2026-01-01T00:00:00Z")


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
    health = health_scores(findings, slos, instances=["a", "b", "c", "d"])
    assert {name: h.score for name, h in health.instances.items()} == {"a": 65, "b": 100, "c": 100, "d": 100}
    assert health.overall == pytest.approx(81.25)
    assert health.categories["memory_pressure"] == pytest.approx(93.75)
    assert health.categories["high_latency"] == pytest.approx(97.5)
    assert health.categories["slo_burn"] == pytest.approx(90)
    assert health.categories["queue_buildup"] == 100


def test_an_alert_deducts_once_at_its_worst_severity():
    flapping = [finding("Queue", "low", "queue_buildup", "a", hour) for hour in range(10)]
    flapping.append(finding("Queue", "high", "queue_buildup", "a", 11))
    health = health_scores(flapping)
    assert health.instances["a"].score == 85 and health.instances["a"].findings == 1


def test_instance_slo_violations_and_fleet_findings():
    slos = [slo_result(False, instance="a"), slo_result(True, instance="a"), slo_result(True, instance="b")]
    fleet = [finding("FleetErrors", "high", "error_rate")]
    health = health_scores(fleet, slos)
    assert health.instances["a"].score == 90 and health.instances["b"].score == 100
    assert health.overall == pytest.approx(95 - 15)
    assert health.fleet_findings == 1 and health.slo_violations == 1


def test_scores_are_clamped_and_exported():
    many = [finding(f"R{i}", "critical", "memory_pressure", "a") for i in range(6)]
    health = health_scores(many, instances=["a"])
    assert health.instances["a"].score == 0 and health.overall == 0
    assert health.categories["memory_pressure"] == 0
    exported = json.loads(json.dumps(health.to_dict()))
    assert exported["instances"]["a"]["score"] == 0 and exported["method"]["deductions"]["critical"] == 25


def test_no_findings_is_full_health():
    health = health_scores([], [], instances=["a", "b"])
    assert health.overall == 100 and all(h.score == 100 for h in health.instances.values())


def test_model_level_findings_and_slos_land_on_the_instances_serving_the_model():
    instances = {"a": {"model_name": "m"}, "b": {"model_name": "m"}, "c": {"model_name": "other"}}
    burn = finding("TTFTBudgetBurn", "critical", "slo_burn")  # labels {model_name: m}, no instance
    health = health_scores([burn], [slo_result(False, model_name="m")], instances=instances)
    scores = {name: h.score for name, h in health.instances.items()}
    assert scores == {"a": 55.0, "b": 55.0, "c": 100.0}  # -25 for the burn, -20 for the violated SLO group
    assert health.overall == pytest.approx((55 + 55 + 100) / 3) and health.fleet_findings == 0
    unattributed = health_scores([burn], instances={"c": {"model_name": "other"}})
    assert unattributed.fleet_findings == 1 and unattributed.overall == 75.0
