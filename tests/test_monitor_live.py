"""`rules-engine monitor` live: a real Prometheus scrapes an exporter served by the test, two monitor replicas push
to a real Alertmanager, which notifies a webhook receiver of the test.

The exporter's gauge climbs linearly (a trend rule, evaluated only by the monitor by default, fires), one replica
is killed with SIGKILL while the alert fires (Alertmanager keeps exactly one active alert, with the same
startsAt, throughout), the gauge goes flat (the alert resolves, and the receiver gets it resolved), and the
surviving replica stops with exit code 0 on SIGTERM. Its own /metrics count what it did.
"""
from __future__ import annotations

import http.server
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pandas as pd
import pytest
import requests

from tests import processes
from tests.conftest import require_binary

pytestmark = pytest.mark.integration

RULES = textwrap.dedent("""\
    kind: RulePack
    name: live
    keep_labels: [instance]
    rules:
      - name: LoadClimbing
        type: trend
        category: queue_buildup
        signal: max by (instance) (test_load)
        window: 10s
        slope_above: 1
        per: 1s
        min_samples: 5
        min_r2: 0.5
        for: 0s
        severity: high
        recommendation: Shed load.
        annotations:
          summary: "load on {{ $labels.instance }} climbs"
      - name: LoadHigh
        category: queue_buildup
        signal: max by (instance) (test_load)
        above: 1000000
        recommendation: Never fires; a threshold rule is left to Prometheus by default.
""")


class Exporter:
    """A gauge that climbs 10/s while `rising`, and stays where it is otherwise."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.base, self.since, self.rising = 0.0, time.time(), False

    def value(self) -> float:
        with self.lock:
            return self.base + (10.0 * (time.time() - self.since) if self.rising else 0.0)

    def set_rising(self, rising: bool) -> None:
        with self.lock:
            now = time.time()
            if self.rising:
                self.base += 10.0 * (now - self.since)
            self.since, self.rising = now, rising


def handler_for(exporter: Exporter, received: list) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the exporter
            body = f"# TYPE test_load gauge\ntest_load {exporter.value()}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802 - Alertmanager's webhook notifications
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    return Handler


def start_monitor(tmp_path, name: str, prometheus_url: str, alertmanager_url: str):
    port = processes.free_port()
    log_path = tmp_path / f"{name}.log"
    cmd = [sys.executable, "-m", "rules_engine.cli", "monitor", "--rules", str(tmp_path / "rules.yaml"),
           "--prometheus", prometheus_url, "--alertmanager", alertmanager_url, "--interval", "1s",
           "--resend", "2s", "--listen", f"127.0.0.1:{port}"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path)
    processes.wait_ready(proc, f"http://127.0.0.1:{port}/metrics", log_path, name, 60)
    return proc, f"http://127.0.0.1:{port}/metrics", log_path


def metric(url: str, name: str) -> float:
    total = 0.0
    for line in requests.get(url, timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def active(alertmanager, name: str) -> list[dict]:
    return [a for a in alertmanager.alerts(alertname=name) if a["status"]["state"] == "active"]


def test_alert_fires_survives_a_killed_replica_and_resolves(tmp_path):
    require_binary(processes.PROMETHEUS)
    require_binary(processes.ALERTMANAGER)
    (tmp_path / "rules.yaml").write_text(RULES)
    exporter, received = Exporter(), []
    with processes.serving(handler_for(exporter, received)) as exporter_url:
        config = {"route": {"receiver": "person", "group_by": ["alertname"], "group_wait": "1s",
                            "group_interval": "1s", "repeat_interval": "1h"},
                  "receivers": [{"name": "person", "webhook_configs": [
                      {"url": f"{exporter_url}/notify", "send_resolved": True}]}]}
        scrape = [{"job_name": "exporter", "scrape_interval": "1s",
                   "static_configs": [{"targets": [exporter_url.split("://")[1]]}]}]
        with processes.running_prometheus(scrape_configs=scrape) as prometheus, \
                processes.running_alertmanager(config) as alertmanager:
            first, first_metrics, _ = start_monitor(tmp_path, "replica-a", prometheus.url, alertmanager.url)
            second, second_metrics, second_log = start_monitor(tmp_path, "replica-b", prometheus.url,
                                                               alertmanager.url)
            try:
                exporter.set_rising(True)
                (alert,) = processes.wait_for("the alert in Alertmanager", lambda: active(alertmanager, "LoadClimbing"))
                assert alert["labels"] == {"alertname": "LoadClimbing", "category": "queue_buildup",
                                           "instance": exporter_url.split("://")[1], "rule_pack": "live",
                                           "severity": "high"}
                assert alert["annotations"]["summary"] == f"load on {exporter_url.split('://')[1]} climbs"
                assert alert["annotations"]["rule_kind"] == "trend"
                starts_at = alert["startsAt"]
                processes.wait_for("both replicas sending", lambda: metric(first_metrics, "rules_engine_monitor_alerts_sent_total") > 0
                                   and metric(second_metrics, "rules_engine_monitor_alerts_sent_total") > 0)

                first.send_signal(signal.SIGKILL)
                first.wait(10)
                sent_at_kill = metric(second_metrics, "rules_engine_monitor_alerts_sent_total")

                def resent_three_times_without_a_gap():
                    alerts = active(alertmanager, "LoadClimbing")
                    assert len(alerts) == 1 and alerts[0]["startsAt"] == starts_at, alerts  # no gap, no duplicate
                    return metric(second_metrics, "rules_engine_monitor_alerts_sent_total") >= sent_at_kill + 3

                processes.wait_for("three resends by the surviving replica", resent_three_times_without_a_gap,
                                   interval=0.1)
                assert not any(a["labels"].get("alertname") == "LoadHigh" for a in alertmanager.alerts())

                exporter.set_rising(False)
                processes.wait_for("the alert resolved", lambda: not alertmanager.alerts(alertname="LoadClimbing"))
                resolved = processes.wait_for("the resolved notification", lambda: [
                    n for n in received if n["status"] == "resolved"])
                # (the webhook prints times without Alertmanager API's milliseconds)
                assert pd.Timestamp(resolved[0]["alerts"][0]["startsAt"]) == pd.Timestamp(starts_at)
                assert pd.Timestamp(resolved[0]["alerts"][0]["endsAt"]) > pd.Timestamp(starts_at)
                firing = [n for n in received if n["status"] == "firing"]
                assert len(firing) == 1 and len(firing[0]["alerts"]) == 1  # one person notified once
                assert metric(second_metrics, "rules_engine_monitor_last_successful_round_timestamp_seconds") > 0
                assert metric(second_metrics, "rules_engine_monitor_rule_evaluation_seconds_count") > 0
            finally:
                for proc in (first, second):
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
                second.wait(30)
                first.wait(30)
            assert second.returncode == 0, second_log.read_text()
            assert "monitor: stopped" in second_log.read_text()
