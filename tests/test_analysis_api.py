"""The analysis and recommendation API end to end: `rules-engine serve` (gunicorn, SQLite) over a real Prometheus
with backfilled simulated history, a real HTTP receiver for notifications.

- an analysis job: submitted (202 + Location), polled, its findings, SLOs and health in the export contract;
- bad input: 400 naming the field; a job past its time limit fails;
- recommendations for those findings: ranked, settings for every server kind, current settings read from
  Prometheus (`vllm:cache_config_info`), replicas counted there;
- a workflow started from a finding: waits for approval, and its approvers are notified; the receiver fails the
  first delivery and gets the retry;
- a restart (kill -9) while a job runs: the job reads as failed, not lost.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pandas as pd
import pytest
import requests
import yaml

from rules_engine.report.html import PLOTLYJS_SLOT
from rules_engine.simulate import FleetSpec, Incident
from tests import processes
from tests.conftest import require_binary
from tests.test_e2e_alerting import running_serve

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
TOKEN = "analysis-operator-token"
END = pd.Timestamp("2026-11-20T00:00:00Z")
START = END - pd.Timedelta(hours=10)
INCIDENTS = [Incident("kv_pressure", ("vllm-1:8000",), start="4h", duration=3600),
             Incident("queue_buildup", ("vllm-2:8000",), start="6h", duration=3600, magnitude=1.3)]
# A deliberately expensive signal (a 1s-resolution subquery over an hour at every step), so a job stays running
# long enough to be killed, or to time out.
SLOW_RULES = """\
kind: RulePack
name: slow
rules:
  - name: SlowSignal
    category: queue_buildup
    above: 1000000
    signal: 'max by (instance) (max_over_time(rate(vllm:time_to_first_token_seconds_bucket[5m])[1h:1s]))'
"""


@pytest.fixture(scope="module")
def prometheus():
    require_binary(processes.PROMTOOL)
    require_binary(processes.PROMETHEUS)
    spec = FleetSpec(start=START.timestamp(), end=END.timestamp(), instances=4, seed=5)
    with processes.simulated_prometheus(spec, INCIDENTS) as (running, _):
        yield running


class Receiver(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first notification, 200 to the rest; keeps what it got."""

    got: list[dict] = []
    answers: list[int] = []
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            status = 503 if not self.answers else 200
            self.answers.append(status)
            self.got.append(body)
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


def write_config(tmp_path: Path, prometheus_url: str, notify_url: str, **overrides) -> tuple[Path, int]:
    port = processes.free_port()
    (tmp_path / "am-token").write_text("am-token\n")
    config = {
        "listen": f"127.0.0.1:{port}", "database_url": f"sqlite:///{tmp_path / 'engine.db'}",
        "playbooks": [str(REPO / "rules")], "rules": [str(REPO / "rules")], "prometheus_url": prometheus_url,
        "variables": {"orchestrator_url": "http://127.0.0.1:9"},
        "alertmanager_auth": {"bearer_token": {"file": str(tmp_path / "am-token")}},
        "operators": [{"name": "alice", "roles": ["admin"],
                       "token": {"sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}}],
        "poll_interval": 0.1, "notify_urls": [notify_url],
        "notify": {"backoff": 0.2, "attempts": 4, "deadline": 60},
        "analysis": {"lease_seconds": 2, "workers": 1}, **overrides}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


def call(port: int, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=30, **kwargs)


def finished(port: int, url: str) -> dict | None:
    job = call(port, "GET", url).json()
    return job if job["state"] in ("succeeded", "failed") else None


def test_analysis_recommendations_and_a_workflow_from_a_finding(prometheus, tmp_path):
    Receiver.got, Receiver.answers = [], []
    with processes.serving(Receiver) as receiver:
        path, port = write_config(tmp_path, prometheus.url, f"{receiver}/hooks")
        with running_serve(path, port):
            # Bad input is refused naming the field, and nothing is queued.
            for body, field in [({"start": "yesterday-ish"}, "body.start"),
                                ({"start": START.isoformat(), "step": "fast"}, "body.step"),
                                ({"start": START.isoformat(), "packs": ["nope"]}, "body.packs"),
                                ({"start": START.isoformat(), "inline_rules": "kind: RulePack\nname: x\n"},
                                 "body.inline_rules"),
                                ({"start": START.isoformat(), "end": START.isoformat()}, "body.end"),
                                ({"start": START.isoformat(), "selector": {"pod": "x"}}, "body.selector.pod")]:
                refused = call(port, "POST", "/api/v1/analysis", json=body)
                assert refused.status_code == 400 and refused.json()["error"].startswith(field), refused.json()
            assert requests.post(f"http://127.0.0.1:{port}/api/v1/analysis", json={}).status_code == 401

            submitted = call(port, "POST", "/api/v1/analysis", json={
                "packs": ["vllm"], "slos": ["vllm_ttft_p99_timeslices"], "selector": {"job": "vllm"},
                "start": START.isoformat(), "end": END.isoformat(), "step": "1m"})
            assert submitted.status_code == 202, submitted.text
            location = submitted.headers["Location"]
            assert location == submitted.json()["url"] == f"/api/v1/analysis/{submitted.json()['id']}"
            job = processes.wait_for("the analysis job", lambda: finished(port, location), timeout=120)
            assert job["state"] == "succeeded", job["error"]
            result = job["result"]
            listed = call(port, "GET", "/api/v1/analysis").json()["jobs"]
            assert [(j["id"], j["state"], j["result"]) for j in listed] == [(job["id"], "succeeded", None)]
            assert {"findings", "slos", "health", "rules", "range", "not_evaluated"} <= set(result)
            assert result["range"] == {"start": "2026-11-19T14:00:00Z", "end": "2026-11-20T00:00:00Z", "step": "1m"}
            assert result["analysis"]["estimate"]["series"] > 0 and result["slos"]
            kv = [f for f in result["findings"] if f["category"] == "memory_pressure"]
            assert kv and {f["labels"]["instance"] for f in kv} == {"vllm-1:8000"}
            assert any(f["category"] == "queue_buildup" and f["labels"]["instance"] == "vllm-2:8000"
                       for f in result["findings"])

            # Its HTML report: self-contained (plotly.js inlined again when served), a plot per alerting series.
            report = call(port, "GET", f"{location}/report.html")
            assert report.status_code == 200 and report.headers["Content-Type"].startswith("text/html")
            assert PLOTLYJS_SLOT not in report.text and "Plotly.newPlot" in report.text
            assert "vllm-1:8000" in report.text and "VLLMKVCacheNearlyFull" in report.text
            assert call(port, "GET", "/api/v1/analysis/nope/report.html").status_code == 404

            # Recommendations for those findings, with vLLM's current settings read from Prometheus.
            answer = call(port, "POST", "/api/v1/optimization/recommend", json={
                "findings": result["findings"], "current": {"vllm-1:8000": {"gpu_memory_gib": 80}}})
            assert answer.status_code == 200, answer.text
            recommendations = answer.json()["recommendations"]
            assert [r["rank"] for r in recommendations] == list(range(1, len(recommendations) + 1))
            order = ["critical", "high", "medium", "low"]
            assert [order.index(r["priority"]) for r in recommendations] == sorted(
                order.index(r["priority"]) for r in recommendations)
            sizing = next(r for r in recommendations if r["optimization"] == "kv_cache_sizing"
                          and "vllm-1:8000" in r["instances"])
            assert set(sizing["settings"]) == {"vllm", "tgi", "sglang"} and sizing["server_kind"] == "vllm"
            utilization = next(s for s in sizing["settings"]["vllm"] if s["flag"] == "--gpu-memory-utilization")
            assert utilization["current"] == 0.9
            assert utilization["current_source"] == "prometheus vllm:cache_config_info"
            assert utilization["value"] == 0.93 and sizing["playbook"] == "vllm-kv-cache-pressure"
            assert "GiB" in sizing["estimated_improvement"]["method"] and sizing["risks"]
            scale = next(r for r in recommendations if r["optimization"] == "scale_out")
            replicas = next(s for s in scale["settings"]["vllm"] if s["flag"] == "replicas")
            assert replicas["current_source"] == "prometheus" and replicas["value"] == replicas["current"] + 1

            # A workflow from a finding: it waits for approval, and the approvers hear of it (after one retry).
            started = call(port, "POST", "/api/v1/workflows", json={"finding": kv[0]})
            assert started.status_code == 201, started.text
            workflow = started.json()["workflows"][0]
            assert (workflow["state"], workflow["playbook"], workflow["origin"]) == (
                "PENDING_APPROVAL", "vllm-kv-cache-pressure", "api:finding")
            again = call(port, "POST", "/api/v1/workflows", json={"finding": kv[0]})
            assert again.status_code == 200 and again.json()["existing"] == 1
            processes.wait_for("the approval notification, retried", lambda: Receiver.answers[:2] == [503, 200])
            assert [(n["workflow_id"], n["to_state"]) for n in Receiver.got[:2]] == [
                (workflow["id"], "PENDING_APPROVAL")] * 2
            assert Receiver.got[0]["optimization_level"] == "moderate"


def test_a_job_past_its_time_limit_fails_and_a_restart_fails_a_running_job(prometheus, tmp_path):
    with processes.serving(Receiver) as receiver:
        path, port = write_config(tmp_path, prometheus.url, f"{receiver}/hooks")
        body = {"inline_rules": SLOW_RULES, "start": START.isoformat(), "end": END.isoformat(), "step": "30s"}
        with running_serve(path, port):
            timed = call(port, "POST", "/api/v1/analysis", json={**body, "timeout": 0.5}).json()
            job = processes.wait_for("the job to time out", lambda: finished(port, timed["url"]), timeout=120)
            assert job["state"] == "failed" and "time" in job["error"], job
            unfinished = call(port, "GET", f"{timed['url']}/report.html")
            assert unfinished.status_code == 409 and "failed" in unfinished.json()["error"]
        with running_serve(path, port) as serve:
            running = call(port, "POST", "/api/v1/analysis", json=body).json()
            processes.wait_for("the job to run", lambda: call(port, "GET", running["url"]).json()["state"]
                               == "running", interval=0.02)
            processes.stop_process_group(serve, 0.1)  # SIGTERM, then SIGKILL: no time to clean up
        with running_serve(path, port):
            job = processes.wait_for("the job to read as failed", lambda: finished(port, running["url"]),
                                     timeout=30)
            assert job["state"] == "failed" and ("stopped" in job["error"]), job
