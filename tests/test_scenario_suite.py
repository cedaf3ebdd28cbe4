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
    cases = (suite.case("queue_buildup", "vllm-1", "1h", {"queue_buildup"}),
             suite.case("gpu_xid", "vllm-2", "2h", {"error_rate"}),
             suite.case("kv_linear_climb", "vllm-3", "3h", {"memory_pressure"}),
             suite.case("low_cache_hit", "vllm-4", "4h", {"cache_inefficiency"}),
             suite.case("error_burst", "tgi-0", "5h", {"error_rate"}),
             suite.case("itl_regression", "sglang-1", "6h", {"high_latency"}))
    monkeypatch.setattr(suite, "INCIDENTS", cases)
    truth = {"incidents": [
        record("queue_buildup", "vllm-1:8000", 60, 90),
        record("gpu_xid", "vllm-2:8000", 120, 135),
        record("kv_linear_climb", "vllm-3:8000", 180, 420, saturation_at=(T0 + pd.Timedelta(minutes=420)).isoformat()),
        record("low_cache_hit", "vllm-4:8000", 240, 360),
        record("error_burst", "tgi-0:8000", 300, 320, generation=None),
        record("itl_regression", "sglang-1:8000", 360, 720, generation=None),
        record("restart", "vllm-5:8000", 300, 302),
    ]}
    findings = [
        finding("Q", "queue_buildup", "vllm-1:8000", 63, 95),
        finding("Wrong", "high_latency", "vllm-2:8000", 121, 130),  # not its category: no detection, but excused
        finding("XID", "error_rate", "vllm-2:9400", 122, 140, Hostname="vllm-2"),  # the node's GPU exporter
        finding("Climb", "memory_pressure", "vllm-3:8000", 390),  # 30 min before saturation: too late
        finding("Restart", "queue_buildup", "vllm-5:8000", 301, 306),  # restarts must not alert
        finding("Stray", "error_rate", "vllm-1:8000", 200, 210),
        finding("TGIErr", "error_rate", "tgi-0:8000", 302, 330, job="tgi"),  # TGI: no model label
        finding("TGIStray", "high_latency", "tgi-0:8000", 500, 505, job="tgi"),
        finding("ITL", "high_latency", "sglang-1:8000", 366),
    ]
    result = suite.score(findings, truth, END)
    by_kind = {o.label.split()[0]: o for o in result.outcomes}
    assert by_kind["queue_buildup"].detected and by_kind["queue_buildup"].delay == pd.Timedelta(minutes=3)
    assert by_kind["gpu_xid"].detected and by_kind["gpu_xid"].by == "XID"
    climb = by_kind["kv_linear_climb"]
    assert not climb.detected and climb.lead == pd.Timedelta(minutes=30)
    assert not by_kind["low_cache_hit"].detected and by_kind["low_cache_hit"].delay is None
    assert by_kind["error_burst"].label == "error_burst tgi-0:8000 (tgi)" and by_kind["error_burst"].server == "tgi"
    assert by_kind["itl_regression"].delay == pd.Timedelta(minutes=6)
    assert result.false_alarms == 3 and result.false_alarm_rules == {"Restart": 1, "Stray": 1, "TGIStray": 1}
    assert result.false_alarm_servers == {"vllm": 2, "tgi": 1}
    assert suite.median_delay(result) == 2.5  # sudden incidents only: 3, 2, 2 and 6 minutes
    assert suite.median_delay(result, "vllm") == 2.5 and suite.median_delay(result, "sglang") == 6

    tgi = suite.figures(result, 2.0, "tgi")
    assert tgi == {"detected": 1, "incidents": 1, "median_delay_min": 2.0, "false_alarms": 1,
                   "false_alarms_per_instance_day": 0.5}
    fleet = suite.figures(result, 10.0)
    assert (fleet["detected"], fleet["incidents"], fleet["false_alarms_per_instance_day"]) == (4, 6, 0.3)


CATEGORIES = {"queue_buildup", "high_latency", "low_throughput", "cache_inefficiency", "memory_pressure",
              "batch_size_suboptimal", "error_rate"}


def test_every_server_kind_gets_an_incident_of_every_category_it_can_show():
    """The suite's data: each server kind with instances has incidents of every category, except those it exposes
    no metric for (TGI: cache efficiency), which are named, not silently left out."""
    servers = {name: kind for name, kind in suite.SERVER_KINDS.items() if kind.instances}
    assert set(servers) == {"vllm", "tgi", "sglang"}
    for name, kind in servers.items():
        covered = set().union(*(c.caught_by for c in suite.INCIDENTS
                                if suite.server_of(suite.host(c.incident.instances[0])) == name))
        not_exposed = {category for category, _ in kind.not_exposed}
        assert covered | not_exposed == CATEGORIES and not covered & not_exposed, name
    assert dict(suite.SERVER_KINDS["tgi"].not_exposed) == {"cache_inefficiency": "TGI exposes no prefix-cache metric"}
    for c in suite.INCIDENTS:  # every labelled instance exists in the fleet
        server, index = c.incident.instances[0].split(":")[0].rsplit("-", 1)
        assert int(index) < suite.INSTANCES[server], c


def test_naive_peers_read_each_servers_own_names(tmp_path):
    """The seeds' thresholds translated per server: each naive pack loads, judges only its own server's series,
    and has a rule for every category that server exposes."""
    from rules_engine.spec import load_ruleset

    prefixes = {"vllm": "vllm:", "tgi": "tgi_", "sglang": "sglang:", "gpu": "DCGM_FI_"}
    for name, kind in suite.SERVER_KINDS.items():
        (tmp_path / f"{name}.yaml").write_text(kind.naive)
    ruleset = load_ruleset(tmp_path)
    for pack in ruleset.packs:
        server = pack.name.removeprefix("naive_")
        kind = suite.SERVER_KINDS[server]
        for rule in pack.rules:
            names = {word for word in rule.signal.replace("(", " ").replace(")", " ").split()
                     if any(word.startswith(p) for p in prefixes.values())}
            assert names and all(n.startswith(prefixes[server]) for n in names), (server, rule.name)
        if kind.instances:
            categories = {rule.category for rule in pack.rules}
            assert categories == CATEGORIES - {category for category, _ in kind.not_exposed}, server
