"""Analysis jobs and notification deliveries in the store (SQLite and PostgreSQL), and starting workflows from
findings and recommendations through the API (test client).

Jobs: bounded queue, claimed once, a dead owner's job fails, a job that cannot run ends failed (never left
running). Notifications: a delivery per URL, retried with backoff on no answer, 5xx, 429; not retried on another
4xx; given up after its attempts, with the audit saying so; a down target never holds back another.
"""
from __future__ import annotations

import http.server
import threading
import time

import pytest

from rules_engine.playbooks import analysis
from rules_engine.playbooks import notify
from rules_engine.playbooks import store as st
from rules_engine.playbooks import workflow as wf
from rules_engine.spec import load_ruleset
from tests import processes
from tests.test_playbooks import alert, ingest, playbook, runtime
from tests.test_server import app, client, op  # noqa: F401 (fixtures)


@pytest.fixture
def store(database_url):
    opened = st.open_store(database_url, synchronous="NORMAL")
    yield opened
    opened.dispose()


def queued(store, settings, count: int) -> list[str]:
    request = analysis.AnalysisRequest(packs=["vllm"], start="2026-11-19T00:00:00Z", end="2026-11-19T06:00:00Z")
    found = analysis.plan(request, lambda: load_ruleset(["rules/"]), settings)
    return [analysis.submit(store, request, found, "alice", settings.max_queued)["id"] for _ in range(count)]


def state(store, job_id: str) -> dict:
    with store.read() as conn:
        return analysis.job_record(conn, job_id)


def test_jobs_queue_boundedly_are_claimed_once_and_never_stay_running(store):
    settings = analysis.AnalysisLimits(max_queued=2, lease_seconds=0.2)
    first, second = queued(store, settings, 2)
    with pytest.raises(analysis.QueueFull, match="limit 2"):
        queued(store, settings, 1)
    assert state(store, first)["request"]["start"] == "2026-11-19T00:00:00Z"
    claimed = analysis.claim_next(store, "owner-a", settings)
    assert claimed[0] == first and analysis.claim_next(store, "owner-b", settings)[0] == second
    assert analysis.claim_next(store, "owner-c", settings) is None
    assert state(store, first)["state"] == "running"
    time.sleep(0.3)  # both owners "died": their leases expired
    assert sorted(analysis.fail_abandoned(store)) == sorted([first, second])
    assert "stopped while it ran" in state(store, first)["error"]
    # A job that cannot run (no Prometheus here) ends failed with the reason, through the pool's own path.
    third = queued(store, settings, 1)[0]
    pool = analysis.AnalysisPool(store=store, configured=lambda: load_ruleset(["rules/"]),
                                 client_factory=lambda timeout: None, settings=settings)
    assert pool.run(*analysis.claim_next(store, pool.owner, settings)) == "failed"
    assert state(store, third)["error"] == "no Prometheus configured (the serve config's `prometheus:`)"
    with store.read() as conn:
        actions = [e["action"] for e in st.audit_entries(conn)]
    assert actions.count("analysis_submitted") == 3 and actions.count("analysis_failed") == 3


class Flaky(http.server.BaseHTTPRequestHandler):
    """/ok answers 503 first, then 200; /gone answers 404; everything is counted."""

    calls: dict[str, int] = {}
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            self.calls[self.path] = self.calls.get(self.path, 0) + 1
            status = 404 if self.path == "/gone" else (503 if self.calls[self.path] == 1 else 200)
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_notifications_retry_with_backoff_per_url_and_give_up_with_a_reason(store):
    Flaky.calls = {}
    refused = f"http://127.0.0.1:{processes.free_port()}/down"
    with processes.serving(Flaky) as url:
        urls = [f"{url}/ok", f"{url}/gone", refused]
        rt = runtime(store, playbook())
        ingest(rt, alert())  # a workflow waiting for approval: its approvers are notified
        assert notify.hand_over(store, urls) == 1 and notify.hand_over(store, urls) == 0
        policy = notify.RetryPolicy(attempts=3, backoff=0.05, max_backoff=0.1, deadline=30, timeout=2)
        assert notify.deliver_due(store, policy) == 3
        deadline = time.monotonic() + 10
        while notify.next_due(store) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
            notify.deliver_due(store, policy)
        assert Flaky.calls == {"/ok": 2, "/gone": 1}
    with store.read() as conn:
        rows = {row.url: row for row in conn.execute(st.notification_deliveries.select()).all()}
        failures = [e["detail"] for e in st.audit_entries(conn) if e["action"] == "notification_failed"]
    assert rows[urls[0]].sent_at is not None and rows[urls[0]].attempts == 2
    assert rows[urls[1]].gave_up_at is not None and rows[urls[1]].attempts == 1 and rows[urls[1]].error == "HTTP 404"
    assert rows[refused].gave_up_at is not None and rows[refused].attempts == 3
    assert sorted((f["url"], f["gave_up"]) for f in failures) == sorted([
        (urls[1], "not retried: the target refused it"), (refused, "after 3 attempt(s)")])


def finding(instance: str, start: str = "2026-11-19T10:00:00Z") -> dict:
    return {"rule": "QueueBuildup", "category": "queue_buildup", "severity": "high", "playbook": "pb",
            "labels": {"instance": instance, "model_name": "m"}, "start": start, "end": None}


def test_workflows_start_from_a_finding_or_a_recommendation_with_the_approval_rules(client, app):  # noqa: F811
    one = client.post("/api/v1/workflows", json={"finding": finding("i1")}, headers=op("operator-token"))
    assert one.status_code == 201 and one.json["created"] == 1
    workflow = one.json["workflows"][0]
    assert (workflow["state"], workflow["origin"], workflow["context"]["started_from"]) == (
        wf.PENDING_APPROVAL, "api:finding", "api:finding")
    assert workflow["labels"]["alertname"] == "QueueBuildup" and workflow["labels"]["severity"] == "high"
    # The same episode again: nothing new; another series within the cooldown of i1's: refused.
    assert client.post("/api/v1/workflows", json={"finding": finding("i1")},
                       headers=op("operator-token")).json["existing"] == 1
    later = client.post("/api/v1/workflows", json={"finding": finding("i1", "2026-11-19T10:05:00Z")},
                        headers=op("operator-token"))
    assert later.status_code == 409 and "cooldown" in later.json["error"]
    recommended = client.post("/api/v1/workflows", headers=op("operator-token"), json={"recommendation": {
        "optimization": "scale_out", "playbook": "pb", "findings": [finding("i2"), finding("i3")]}})
    assert recommended.status_code == 201 and recommended.json["created"] == 2
    assert recommended.json["workflows"][0]["context"]["recommendation"]["optimization"] == "scale_out"
    for body, status, words in [
        ({"finding": finding("i4"), "playbook": "nope"}, 404, "no playbook 'nope'"),
        ({"finding": {**finding("i4"), "playbook": None}}, 400, "body.playbook"),
        ({"finding": finding("i4"), "recommendation": {"findings": [finding("i5")]}}, 400, "exactly one"),
        ({"finding": {**finding("i4"), "severity": "dire"}}, 400, "body.finding.severity"),
    ]:
        refused = client.post("/api/v1/workflows", json=body, headers=op("operator-token"))
        assert refused.status_code == status and words in refused.json["error"], refused.json


def test_a_playbook_that_needs_no_approval_is_started_only_by_who_may_approve_it(tmp_path):
    from rules_engine.server.app import create_app, shutdown
    from tests.test_server import config

    application = create_app(config(tmp_path), playbooks={"pb": playbook(approval={"required": False})},
                             start_runner=False)
    client = application.test_client()
    refused = client.post("/api/v1/workflows", json={"finding": finding("i1")}, headers=op("viewer-token"))
    assert refused.status_code == 403 and "runs without approval" in refused.json["error"]
    started = client.post("/api/v1/workflows", json={"finding": finding("i1")}, headers=op("senior-token"))
    assert started.status_code == 201 and started.json["workflows"][0]["state"] == wf.APPROVED
    shutdown(application)


def test_a_stored_request_that_no_longer_validates_fails_instead_of_blocking_the_queue(store):
    settings = analysis.AnalysisLimits()
    with store.write() as conn:
        conn.execute(st.analysis_jobs.insert().values(id="old", state="queued", request='{"from": "elsewhere"}',
                                                      requested_by="x", created_at=0.0, estimate="{}"))
    good = queued(store, settings, 1)[0]
    assert analysis.claim_next(store, "owner", settings)[0] == good
    assert state(store, "old")["state"] == "failed" and "no longer validates" in state(store, "old")["error"]
