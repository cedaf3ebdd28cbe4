"""How workflows end when something goes wrong: every error ends in FAILED (rolled back where something may have
changed) with the step and the reason in the audit log; label values cannot choose where an http step sends;
orchestrator calls keep a total deadline and say whether anything was sent.

A real SQLite store, a real local orchestrator (tests/test_playbooks_orchestrator.py) and real sockets.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from sqlalchemy import update

from rules_engine.playbooks import executor
from rules_engine.playbooks import store as st
from rules_engine.playbooks import workflow as wf
from rules_engine.playbooks.executor import claim_next, run_workflow
from rules_engine.playbooks.payload import Alert, label_fingerprint
from rules_engine.playbooks.runtime import load_playbooks
from rules_engine.playbooks.targets import target_problem
from rules_engine.playbooks.templates import render_url, template_variables
from rules_engine.server.config import ServerConfig
from rules_engine.source import PrometheusClient
from tests.test_playbooks import alert, get, ingest, playbook, run_claimed, runtime, store  # noqa: F401 (fixture)
from tests.test_playbooks_orchestrator import running_orchestrator

REPO = Path(__file__).resolve().parent.parent


def audit(rt, workflow_id: str) -> list[dict]:
    with rt.store.read() as conn:
        return st.audit_entries(conn, workflow_id)


def failure_reason(rt, workflow_id: str) -> str:
    return next(e["detail"]["reason"] for e in audit(rt, workflow_id)
                if e["action"] == "transition" and e["detail"]["to_state"] == wf.FAILED)


def model_alert(alertname: str, **labels) -> Alert:
    """An alert on a whole model deployment (an SLO grouped by model_name): no `instance` label."""
    all_labels = {"alertname": alertname, "model_name": "m", **labels}
    return Alert.model_validate({"status": "firing", "labels": all_labels, "annotations": {},
                                 "startsAt": "2026-01-01T00:00:00Z", "fingerprint": label_fingerprint(all_labels)})


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- 1. no workflow stays IN_PROGRESS -------------------------------------------------------------------------------
def test_a_model_level_alert_on_a_shipped_playbook_fails_before_any_change(store):
    """The shipped kv-cache playbook's baseline query needs `instance`; without it the workflow used to raise out of
    the executor and stay IN_PROGRESS, resumed every lease period forever."""
    shipped = load_playbooks([REPO / "rules"])["vllm-kv-cache-pressure"]
    with running_orchestrator() as orch:
        rt = runtime(store, shipped, variables={"orchestrator_url": orch.url})
        workflow_id = ingest(rt, model_alert("VLLMPreemptions")).created[0]
        wf.approve(store, workflow_id, "alice")
        assert run_claimed(rt) == wf.FAILED
        with store.write() as conn:  # the lease expiring changes nothing: there is nothing left to resume
            conn.execute(update(st.workflows).values(lease_until=time.time() - 1))
        assert claim_next(rt) is None
    assert orch.calls == []
    assert get(rt, workflow_id).state == wf.FAILED
    assert "baseline of verify step preemptions-halved" in failure_reason(rt, workflow_id)
    assert "instance" in failure_reason(rt, workflow_id)


def test_a_malformed_prometheus_answer_fails_the_workflow_before_the_change(store):
    pb = playbook(approval={"required": False}, steps=[
        {"name": "scale", "type": "http", "request": {"url": "{{ vars.orchestrator_url }}/v1/scale"}},
        {"name": "check", "type": "verify", "delay": "0s", "query": "up", "improvement": {"percent": 10}},
        {"name": "undo", "type": "rollback", "request": {"url": "{{ vars.orchestrator_url }}/v1/undo"}}])
    with running_orchestrator() as orch:  # answers {"ok": true} to the query: not a Prometheus answer
        rt = runtime(store, pb, variables={"orchestrator_url": orch.url}, prometheus=PrometheusClient(orch.url))
        workflow_id = ingest(rt, alert()).created[0]
        assert run_claimed(rt) == wf.FAILED
    assert orch.calls_to("/v1/scale") == [] and orch.calls_to("/v1/undo") == []
    assert "baseline of verify step check" in failure_reason(rt, workflow_id)


def test_an_unexpected_executor_error_fails_the_workflow(store, monkeypatch):
    def broken(*args):
        raise KeyError("a bug")

    monkeypatch.setattr(executor, "_capture_baselines", broken)
    with running_orchestrator() as orch:
        rt = runtime(store, playbook(approval={"required": False}), variables={"orchestrator_url": orch.url})
        workflow_id = ingest(rt, alert()).created[0]
        assert run_claimed(rt) == wf.FAILED
    assert "executor error: KeyError" in failure_reason(rt, workflow_id)
    assert orch.calls == []


def test_a_workflow_resumed_too_often_without_progress_is_failed(store):
    with running_orchestrator() as orch:
        rt = runtime(store, playbook(approval={"required": False}), variables={"orchestrator_url": orch.url},
                     max_resumes=2)
        workflow_id = ingest(rt, alert()).created[0]
        assert claim_next(rt) == workflow_id
        for _ in range(3):  # each owner dies before finishing a step: the lease expires, another resumes
            with store.write() as conn:
                conn.execute(update(st.workflows).values(lease_until=time.time() - 1))
            assert claim_next(rt) == workflow_id
        assert run_workflow(rt, workflow_id) == wf.FAILED
    assert orch.calls == []
    assert "resumed 3 times without progress" in failure_reason(rt, workflow_id)


# --- 2. labels cannot choose where a request goes -------------------------------------------------------------------
def test_label_values_are_one_percent_encoded_path_segment():
    context = {"vars": template_variables({"orchestrator_url": "http://orch:8000/api"}, dry_run=False),
               "labels": {"pod": "../../admin", "dots": "..", "query": "a?b#c@d"}}
    assert render_url("{{ vars.orchestrator_url }}/pods/{{ labels.pod }}", context) == \
        "http://orch:8000/api/pods/..%2F..%2Fadmin"
    assert render_url("{{ vars.orchestrator_url }}/{{ labels.dots }}/{{ labels.query }}", context) == \
        "http://orch:8000/api/%2E%2E/a%3Fb%23c%40d"
    allowed = ["http://orch:8000/api"]
    assert target_problem("http://orch:8000/api/pods/x", allowed) is None
    assert "not under an allowed target" in target_problem("http://orch:8000/admin", allowed)
    assert "not under an allowed target" in target_problem("http://orch:8000/apix", allowed)
    assert "not under an allowed target" in target_problem("http://user@orch:8000/api/x", allowed)
    assert "'..'" in target_problem("http://orch:8000/api/%2e%2e/admin", allowed)
    assert "no targets are configured" in target_problem("http://orch:8000/api", [])


def test_a_label_cannot_climb_out_of_the_path(store):
    pb = playbook(approval={"required": False}, steps=[{"name": "restart", "type": "http", "request": {
        "url": "{{ vars.orchestrator_url }}/v1/pods/{{ labels.pod }}/restart"}}])
    with running_orchestrator() as orch:
        rt = runtime(store, pb, variables={"orchestrator_url": orch.url})
        ingest(rt, alert(pod="../../admin"))
        assert run_claimed(rt) == wf.COMPLETED
    assert [c.path for c in orch.calls] == ["/v1/pods/..%2F..%2Fadmin/restart"]


def test_a_label_cannot_choose_the_host_and_nothing_is_sent(store):
    pb = playbook(approval={"required": False}, steps=[
        {"name": "scale", "type": "http", "request": {"url": "http://{{ labels.instance }}/v1/scale"}},
        {"name": "undo", "type": "rollback", "request": {"url": "{{ vars.orchestrator_url }}/v1/undo"}}])
    with running_orchestrator() as orch, running_orchestrator() as other:
        rt = runtime(store, pb, variables={"orchestrator_url": orch.url})
        host = other.url.split("://")[1]
        workflow_id = ingest(rt, alert(instance=f"user@{host}")).created[0]
        assert run_claimed(rt) == wf.FAILED
    assert orch.calls == [] and other.calls == []
    step = get(rt, workflow_id).steps[0]
    assert "not under an allowed target" in step.note and "nothing was sent" in step.note
    assert "steps.scale.request.url" in step.note


def test_explicit_targets_replace_the_variables_and_are_checked():
    assert ServerConfig(variables={"orchestrator_url": "http://o:1"}).targets == []
    with pytest.raises(ValueError, match="no user info"):
        ServerConfig(targets=["http://user@o:1"])
    with pytest.raises(ValueError, match="not an http"):
        ServerConfig(targets=["orchestrator"])


def test_shipped_playbooks_send_only_under_the_orchestrator(store):
    shipped = load_playbooks([REPO / "rules"])
    rt = runtime(store, *shipped.values(), dry_run=True, variables={"orchestrator_url": "http://orch:8000"})
    names = {"vllm-scale-out": "VLLMQueueBuildup", "vllm-kv-cache-pressure": "VLLMPreemptions",
             "vllm-batching": "VLLMHighITL", "vllm-prefix-cache": "VLLMLowPrefixCacheHitRate"}
    for name, alertname in names.items():
        ingest(rt, alert(alertname=alertname, instance="vllm-1:8000", model_name="m/../x"))
    urls = []
    while (workflow_id := claim_next(rt)) is not None:
        assert run_workflow(rt, workflow_id) == wf.COMPLETED
        urls += [s.output["would_send"]["url"] for s in get(rt, workflow_id).steps if "would_send" in s.output]
    assert len(urls) == 4 and all(url.startswith("http://orch:8000/v1/") for url in urls), urls


# --- 3. orchestrator failures ---------------------------------------------------------------------------------------
def test_a_refused_connection_is_retried_briefly_and_needs_no_rollback(store):
    url = f"http://127.0.0.1:{closed_port()}"
    pb = playbook(approval={"required": False}, steps=[
        {"name": "scale", "type": "http", "request": {"url": "{{ vars.orchestrator_url }}/v1/scale",
                                                      "retries": 3, "retry_backoff": "5s"}},
        {"name": "undo", "type": "rollback", "request": {"url": "{{ vars.orchestrator_url }}/v1/undo"}}])
    rt = runtime(store, pb, variables={"orchestrator_url": url})
    workflow_id = ingest(rt, alert()).created[0]
    started = time.monotonic()
    assert run_claimed(rt) == wf.FAILED
    assert time.monotonic() - started < 5  # quick retries: nothing was sent, a restarting orchestrator is back soon
    found = get(rt, workflow_id)
    assert found.steps[0].output["sent"] is False and len(found.steps[0].output["attempts"]) == 4
    assert found.steps[1].state == wf.STEP_SKIPPED  # no rollback of a change that was never made
    assert "nothing reached the target" in found.reason
    assert "rollback_failed" not in [e["action"] for e in audit(rt, workflow_id)]


def test_the_timeout_is_a_total_deadline_against_a_trickling_server(store):
    pb = playbook(approval={"required": False}, steps=[
        {"name": "scale", "type": "http", "request": {"url": "{{ vars.orchestrator_url }}/v1/scale",
                                                      "timeout": "1s", "retries": 0}},
        {"name": "undo", "type": "rollback", "request": {"url": "{{ vars.orchestrator_url }}/v1/undo"}}])
    # One byte every 0.1 s: each read returns well within the timeout; the whole answer would take ~10 s.
    with running_orchestrator(trickle_paths={"/v1/scale"}, trickle_interval=0.1) as orch:
        rt = runtime(store, pb, variables={"orchestrator_url": orch.url})
        workflow_id = ingest(rt, alert()).created[0]
        started = time.monotonic()
        assert run_claimed(rt) == wf.ROLLED_BACK  # sent, outcome unknown: the rollback runs
        elapsed = time.monotonic() - started
    assert elapsed < 4, elapsed
    scale = get(rt, workflow_id).steps[0]
    assert scale.output["sent"] is True and "within 1s" in scale.note
    assert len(orch.calls_to("/v1/undo")) == 1
