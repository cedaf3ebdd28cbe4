"""The test process helpers start the real binaries, wait for readiness and always stop them."""
from __future__ import annotations

import os
import time

import pytest
import requests

from tests import processes
from tests.conftest import NULL_ALERTMANAGER_CONFIG, require_binary


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); its state letter in /proc says it is gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_free_port_is_bindable():
    import socket
    port = processes.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_backfill_keeps_history_far_in_the_past_beside_recent_data(tmp_path, promtool_bin, start_prometheus):
    # Samples from 2021 plus samples from two hours ago: Prometheus' retention counts back from the newest
    # block, so with its default-like 15d the 2021 block is deleted on open; the helpers' retention keeps it.
    old, recent = 1_609_459_200, int(time.time()) - 7200
    lines = ["# TYPE probe_value gauge"]
    lines += [f'probe_value{{era="old"}} {i} {old + 30 * i}' for i in range(240)]
    lines += [f'probe_value{{era="recent"}} {i} {recent + 30 * i}' for i in range(240)]
    lines.append("# EOF")
    om = tmp_path / "history.om"
    om.write_text("\n".join(lines) + "\n")
    for name in ("kept", "deleted"):
        processes.backfill(om, tmp_path / name)
    prom = start_prometheus(data_dir=tmp_path / "kept")
    assert [float(r["value"][1]) for r in prom.query("probe_value", time=old + 30 * 100)] == [100.0]
    assert [float(r["value"][1]) for r in prom.query("probe_value", time=recent + 30 * 100)] == [100.0]
    short = start_prometheus(data_dir=tmp_path / "deleted", retention="15d")
    assert short.query("probe_value", time=old + 30 * 100) == []


def test_backfill_reports_promtool_error(tmp_path, promtool_bin):
    om = tmp_path / "bad.om"
    om.write_text("# TYPE x gauge\nx{ 1 2\n# EOF\n")
    with pytest.raises(RuntimeError, match="promtool backfill of .*bad.om failed"):
        processes.backfill(om, tmp_path / "data")


def test_prometheus_loads_rules_and_stops_on_exit(tmp_path):
    require_binary(processes.PROMETHEUS)
    rules = tmp_path / "rules.yml"
    rules.write_text("groups:\n- name: g\n  interval: 1s\n  rules:\n  - record: one\n    expr: vector(1)\n")
    with processes.running_prometheus(rule_files=[rules], evaluation_interval="1s") as prom:
        response = requests.get(f"{prom.url}/api/v1/rules", timeout=5).json()
        assert response["data"]["groups"][0]["rules"][0]["name"] == "one"
        pid = prom.pid
        assert _pid_alive(pid)
    assert not _pid_alive(pid)


def test_prometheus_start_failure_raises_with_log_tail(tmp_path):
    require_binary(processes.PROMETHEUS)
    rules = tmp_path / "broken.yml"
    rules.write_text("groups:\n- name: g\n  rules:\n  - record: x\n    expr: 'sum('\n")
    with pytest.raises(processes.ProcessStartError, match=r"(?s)prometheus exited .*errors:.*broken.yml"):
        with processes.running_prometheus(rule_files=[rules]):
            pass


def test_alertmanager_accepts_and_lists_alerts(alertmanager):
    alertmanager.post_alerts([{"labels": {"alertname": "Probe", "instance": "vllm-0:8000"}}])
    deadline = time.monotonic() + 10
    while not alertmanager.alerts(alertname="Probe"):
        assert time.monotonic() < deadline, "posted alert never listed"
        time.sleep(0.05)
    assert alertmanager.cluster_address == ""


def test_two_alertmanagers_form_a_cluster(start_alertmanager):
    first = start_alertmanager(NULL_ALERTMANAGER_CONFIG, cluster=True)
    second = start_alertmanager(NULL_ALERTMANAGER_CONFIG, peers=[first.cluster_address])
    deadline = time.monotonic() + 20
    while True:
        status = requests.get(f"{second.url}/api/v2/status", timeout=5).json()
        if len(status["cluster"].get("peers") or []) == 2:
            break
        assert time.monotonic() < deadline, f"cluster never formed: {status['cluster']}"
        time.sleep(0.1)


def test_alertmanager_bad_config_raises_with_log_tail():
    require_binary(processes.ALERTMANAGER)
    with pytest.raises(processes.ProcessStartError, match="alertmanager exited"):
        with processes.running_alertmanager("route:\n  receiver: missing\nreceivers: []\n"):
            pass


def test_prometheus_sends_alerts_to_the_given_alertmanager(tmp_path, alertmanager, start_prometheus):
    rules = tmp_path / "alerts.yml"
    rules.write_text("groups:\n- name: g\n  interval: 1s\n  rules:\n  - alert: AlwaysFiring\n"
                     "    expr: vector(1)\n")
    start_prometheus(rule_files=[rules], alertmanager_url=alertmanager.url, evaluation_interval="1s")
    deadline = time.monotonic() + 30
    while not alertmanager.alerts(alertname="AlwaysFiring"):
        assert time.monotonic() < deadline, "Prometheus never delivered the alert"
        time.sleep(0.1)
