"""The labelled suite's scoring (scripts/scenario_suite.py): detected, delay, lead, false alarms."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd

from rules_engine.evaluate.findings import Finding

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("scenario_suite", ROOT / "scripts" / "scenario_suite.py")
suite = importlib.util.module_from_spec(_spec)
sys.modules["scenario_suite"] = suite  # dataclasses look their module up while the script loads
_spec.loader.exec_module(suite)

T0 = pd.Timestamp("2026-11-19T00:00:00Z")
END = T0 + pd.Timedelta(hours=12)


def finding(rule, category, instance, start_min, end_min=None, **labels):
    end = None if end_min is None else T0 + pd.Timedelta(minutes=end_min)
    return Finding(rule=rule, kind="threshold", category=category, severity="high",
                   labels={"instance": instance, **labels}, start=T0 + pd.Timedelta(minutes=start_min), end=end,
                   value=1.0, threshold=0.5, recommendation="", playbook=None)


def record(kind, instance, start_min, end_min, **extra):
    return {"kind": kind, "instance": instance, "generation": "0.15+",
            "start": (T0 + pd.Timedelta(minutes=start_min)).isoformat(),
            "end": (T0 + pd.Timedelta(minutes=end_min)).isoformat(), **extra}


def test_score_counts_delays_leads_and_false_alarms(monkeypatch):
    cases = (suite.case("queue_buildup", 1, "1h", {"queue_buildup"}),
             suite.case("gpu_xid", 2, "2h", {"error_rate"}),
             suite.case("kv_linear_climb", 3, "3h", {"memory_pressure"}),
             suite.case("low_cache_hit", 4, "4h", {"cache_inefficiency"}))
    monkeypatch.setattr(suite, "INCIDENTS", cases)
    truth = {"incidents": [
        record("queue_buildup", "vllm-1:8000", 60, 90),
        record("gpu_xid", "vllm-2:8000", 120, 135),
        record("kv_linear_climb", "vllm-3:8000", 180, 420, saturation_at=(T0 + pd.Timedelta(minutes=420)).isoformat()),
        record("low_cache_hit", "vllm-4:8000", 240, 360),
        record("restart", "vllm-5:8000", 300, 302),
    ]}
    findings = [
        finding("Q", "queue_buildup", "vllm-1:8000", 63, 95),
        finding("Wrong", "high_latency", "vllm-2:8000", 121, 130),  # not its category: no detection, but excused
        finding("XID", "error_rate", "vllm-2:9400", 122, 140, Hostname="vllm-2"),  # the node's GPU exporter
        finding("Climb", "memory_pressure", "vllm-3:8000", 390),  # 30 min before saturation: too late
        finding("Restart", "queue_buildup", "vllm-5:8000", 301, 306),  # restarts must not alert
        finding("Stray", "error_rate", "vllm-1:8000", 200, 210),
    ]
    result = suite.score(findings, truth, END)
    by_kind = {o.label.split()[0]: o for o in result.outcomes}
    assert by_kind["queue_buildup"].detected and by_kind["queue_buildup"].delay == pd.Timedelta(minutes=3)
    assert by_kind["gpu_xid"].detected and by_kind["gpu_xid"].by == "XID"
    climb = by_kind["kv_linear_climb"]
    assert not climb.detected and climb.lead == pd.Timedelta(minutes=30)
    assert not by_kind["low_cache_hit"].detected and by_kind["low_cache_hit"].delay is None
    assert result.false_alarms == 2 and result.false_alarm_rules == {"Restart": 1, "Stray": 1}
    assert suite.median_delay(result) == 2.5  # sudden incidents only: 3 and 2 minutes
