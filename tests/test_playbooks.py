"""Playbook spec, matching, templates, payload, intake (idempotency, cooldown, resolved), state machine, executor.

Everything here runs without the HTTP layer: the store is a real SQLite file, http steps hit a real local
orchestrator, and verify/recommend steps query a real Prometheus (constant queries, or gauges it scrapes).
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DatabaseError

from rules_engine.evaluate.findings import Finding
from rules_engine.playbooks import store as st
from rules_engine.playbooks import workflow as wf
from rules_engine.playbooks.executor import claim_next, run_workflow
from rules_engine.playbooks.fix import finding_alert, run_findings
from rules_engine.playbooks.intake import expire_approvals, process_alerts, process_next_event
from rules_engine.playbooks.payload import Alert, PayloadError, canonical_time, label_fingerprint, parse_payload
from rules_engine.playbooks.recommend import recommend
from rules_engine.playbooks.runtime import Runtime, load_playbooks
from rules_engine.playbooks.templates import RenderError, render_promql, render_structure, render_text
from rules_engine.source import PrometheusClient
from rules_engine.spec import SpecError, load_ruleset
from rules_engine.spec.playbook import LabelMatcher, Playbook
from tests.test_playbooks_orchestrator import running_orchestrator

REPO = Path(__file__).resolve().parent.parent


def playbook(**overrides) -> Playbook:
    document = {
        "kind": "Playbook", "name": "pb", "match": {"matchers": ['alertname="QueueBuildup"']},
        "optimization_level": "moderate", "cooldown": "30m",
        "steps": [{"name": "recommend", "type": "recommend", "bottleneck": "queue_buildup"},
                  {"name": "scale", "type": "http", "request": {
                      "url": "{{ vars.orchestrator_url }}/v1/scale", "retries": 1, "retry_backoff": 0.01,
                      "json": {"instance": "{{ labels.instance }}", "changes": "{{ recommendation.changes }}"}}},
                  {"name": "undo", "type": "rollback", "request": {
                      "url": "{{ vars.orchestrator_url }}/v1/undo", "retries": 0,
                      "json": {"instance": "{{ labels.instance }}", "changes": "{{ recommendation.previous }}"}}}],
    }
    document.update(overrides)
    return Playbook.model_validate(document)


def alert(status="firing", instance="i1", starts_at="2026-01-01T00:00:00Z", alertname="QueueBuildup", **labels):
    all_labels = {"alertname": alertname, "instance": instance, **labels}
    return Alert.model_validate({"status": status, "labels": all_labels, "annotations": {"summary": "s"},
                                 "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z",
                                 "fingerprint": label_fingerprint(all_labels)})


def payload(*alerts: Alert) -> str:
    return json.dumps({
        "version": "4", "groupKey": "{}:{}", "status": alerts[0].status, "receiver": "rules\\-engine",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
        "alerts": [{"status": a.status, "labels": a.labels, "annotations": a.annotations, "startsAt": a.starts_at,
                    "endsAt": a.ends_at, "generatorURL": "", "fingerprint": a.fingerprint} for a in alerts]})


@pytest.fixture
def store(tmp_path):
    opened = st.open_store(f"sqlite:///{tmp_path / 'store.db'}", synchronous="NORMAL")
    yield opened
    opened.dispose()


def runtime(store, *playbooks, **settings) -> Runtime:
    return Runtime(store=store, playbooks={p.name: p for p in playbooks}, lease_seconds=30, **settings)


def ingest(rt: Runtime, *alerts: Alert):
    with rt.store.write() as conn:
        return process_alerts(conn, rt, list(alerts), actor="test", origin="test")


def get(rt: Runtime, workflow_id: str) -> st.Workflow:
    with rt.store.read() as conn:
        return st.get_workflow(conn, workflow_id)


def run_claimed(rt: Runtime) -> str:
    workflow_id = claim_next(rt)
    assert workflow_id is not None, "nothing runnable"
    return run_workflow(rt, workflow_id)


# --- spec and matching --------------------------------------------------------------------------------------------
def test_matchers_follow_alertmanager_semantics():
    labels = {"alertname": "VLLMHighTTFT", "severity": "high"}
    assert LabelMatcher.parse('alertname=~"VLLM.*TTFT"').matches(labels)
    assert not LabelMatcher.parse('alertname=~"VLLM"').matches(labels)  # anchored: no partial match
    assert LabelMatcher.parse('severity!~"low|medium"').matches(labels)
    assert LabelMatcher.parse('instance=""').matches(labels)  # a missing label is the empty string
    assert not LabelMatcher.parse('instance!=""').matches(labels)
    assert LabelMatcher.parse("severity=high").matches(labels)
    with pytest.raises(ValueError, match="invalid regex"):
        LabelMatcher.parse('alertname=~"("')
    with pytest.raises(ValueError, match="invalid matcher"):
        LabelMatcher.parse("alertname==x")


def test_playbook_matches_by_matchers_or_by_the_playbook_annotation():
    pb = playbook()
    assert pb.matches({"alertname": "QueueBuildup"}, {})
    assert not pb.matches({"alertname": "Other"}, {})
    assert pb.matches({"alertname": "Other"}, {"playbook": "pb"})
    assert not playbook(match={"matchers": [], "by_annotation": True}).matches({"alertname": "QueueBuildup"}, {})


def test_playbook_spec_errors_name_the_field():
    with pytest.raises(ValueError, match="unknown_key"):
        playbook(unknown_key=1)
    with pytest.raises(ValueError, match="invalid template"):
        playbook(steps=[{"name": "s", "type": "http", "request": {"url": "{{ vars.x "}}])
    with pytest.raises(ValueError, match="exactly one of `below`, `above` or `improvement`"):
        playbook(steps=[{"name": "v", "type": "verify", "query": "up", "below": 1, "above": 0}])
    with pytest.raises(ValueError, match="step names must be unique"):
        playbook(steps=[{"name": "r", "type": "recommend", "bottleneck": "high_itl"}] * 2)


def test_shipped_playbooks_load_beside_the_rule_pack_and_cover_its_playbook_names():
    ruleset = load_ruleset([REPO / "rules"])
    names = {p.name for p in ruleset.playbooks}
    assert {"vllm-scale-out", "vllm-kv-cache-pressure", "vllm-batching", "vllm-prefix-cache"} <= names
    referenced = {rule.playbook for _, rule in ruleset.rules() if rule.playbook}
    assert referenced <= names
    # Alerts from tools that do not set the `playbook` annotation still reach the playbooks by alertname.
    by_name = {p.name: p for p in ruleset.playbooks}
    assert by_name["vllm-scale-out"].matches({"alertname": "VLLMQueueBuildup"}, {})
    assert by_name["vllm-kv-cache-pressure"].matches({"alertname": "VLLMPreemptions"}, {})
    assert by_name["vllm-batching"].matches({"alertname": "VLLMHighITL"}, {})
    assert by_name["vllm-prefix-cache"].matches({"alertname": "VLLMLowPrefixCacheHitRate"}, {})


def test_a_bad_playbook_file_is_reported_with_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("kind: Playbook\nname: x\nmatch: {matchers: ['a=\"b\"']}\nsteps:\n"
                    "  - name: v\n    type: verify\n    query: up\n    delay: soon\n    below: 1\n")
    with pytest.raises(SpecError) as error:
        load_ruleset([path])
    text = str(error.value)
    assert "bad.yaml:" in text and "delay" in text


# --- templates ----------------------------------------------------------------------------------------------------
def test_label_values_render_literally_and_cannot_escape_a_promql_string():
    context = {"labels": {"model": '{{ 7*7 }}"} or vector(1) #'}}
    assert render_text("m={{ labels.model }}", context) == 'm={{ 7*7 }}"} or vector(1) #'
    query = render_promql('up{model="{{ labels.model }}"}', context)
    assert query == 'up{model="{{ 7*7 }}\\"} or vector(1) #"}'
    assert render_structure({"m": "{{ labels.model }}", "n": "{{ 6 * 7 }}"}, context) == {
        "m": '{{ 7*7 }}"} or vector(1) #', "n": 42}


def test_the_sandbox_refuses_python_internals_and_undefined_names():
    with pytest.raises(RenderError, match="unsafe"):
        render_text("{{ labels.__class__.__mro__ }}", {"labels": {}})
    with pytest.raises(RenderError, match="undefined"):
        render_structure({"x": "{{ nothing }}"}, {})


# --- payload ------------------------------------------------------------------------------------------------------
def test_payload_parsing_and_canonical_episode_times():
    parsed = parse_payload(payload(alert()))
    assert parsed.alerts[0].starts_at == "2026-01-01T00:00:00.000000000Z"
    assert canonical_time("2026-01-01T01:00:00.123456789+01:00") == "2026-01-01T00:00:00.123456789Z"
    assert parse_payload(payload(alert())).notification_reason is None  # optional (Alertmanager < 0.32)
    with pytest.raises(PayloadError) as error:
        parse_payload(json.dumps({"version": "4", "groupKey": "", "status": "firing", "receiver": "r",
                                  "alerts": [{"status": "firing", "labels": {"alertname": "a"},
                                              "startsAt": "yesterday"}]}))
    problems = " | ".join(error.value.problems)
    assert "alerts[0].startsAt" in problems and "alerts[0].fingerprint" in problems
    with pytest.raises(PayloadError, match="not valid JSON"):
        parse_payload(b"{nope")


# --- intake -------------------------------------------------------------------------------------------------------
def test_the_same_episode_starts_one_workflow_however_often_it_arrives(store):
    rt = runtime(store, playbook())
    for _ in range(3):
        st.insert_event(store, payload(alert()))
    while process_next_event(rt):
        pass
    with store.read() as conn:
        assert len(st.list_workflows(conn)) == 1
        deliveries = conn.execute(select(st.episodes.c.deliveries)).scalar_one()
        unprocessed = st.unprocessed_event_count(conn)
    assert (deliveries, unprocessed) == (3, 0)


def drain_concurrently_into_one_workflow(stores, events: int = 20, timeout: float = 60) -> None:
    """The same alert delivered `events` times, processed by one receiver per store at once: one workflow."""
    for _ in range(events):
        st.insert_event(stores[0], payload(alert()))
    runtimes = [runtime(s, playbook()) for s in stores]

    def drain(rt):
        while process_next_event(rt):
            pass

    threads = [threading.Thread(target=drain, args=(rt,)) for rt in runtimes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    with stores[0].read() as conn:
        workflows = st.list_workflows(conn, with_steps=True)
        assert len(workflows) == 1 and len(workflows[0].steps) == 3


def test_concurrent_receivers_on_one_store_start_one_workflow(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    stores = [st.open_store(url) for _ in range(4)]
    first = stores[0]
    drain_concurrently_into_one_workflow(stores)
    with first.read() as conn:
        assert conn.execute(select(func.count()).select_from(st.events)
                            .where(st.events.c.processed_at.isnot(None))).scalar_one() == 20
    for s in stores:
        s.dispose()


def test_resolved_alerts_cancel_pending_workflows_and_never_start_one(store):
    rt = runtime(store, playbook())
    created = ingest(rt, alert()).created
    assert get(rt, created[0]).state == wf.PENDING_APPROVAL
    result = ingest(rt, alert(status="resolved"))
    assert result.cancelled == created and not result.created
    assert get(rt, created[0]).state == wf.CANCELLED
    # A resolved alert with no firing seen before is recorded and starts nothing.
    lone = ingest(rt, alert(status="resolved", instance="i9"))
    assert not lone.created
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(st.episodes)).scalar_one() == 2


def test_cooldown_allows_one_run_per_series(store):
    rt = runtime(store, playbook())
    first = ingest(rt, alert(starts_at="2026-01-01T00:00:00Z"))
    again = ingest(rt, alert(starts_at="2026-01-01T00:05:00Z"))  # a new episode, same instance, inside cooldown
    other = ingest(rt, alert(instance="i2"))
    assert len(first.created) == 1 and again.suppressed == 1 and not again.created and len(other.created) == 1
    with store.read() as conn:
        actions = [e["action"] for e in st.audit_entries(conn)]
    assert "suppressed_by_cooldown" in actions


def test_a_poison_event_is_recorded_and_does_not_block_the_queue(store):
    rt = runtime(store, playbook())
    st.insert_event(store, "not json at all")
    st.insert_event(store, payload(alert()))
    while process_next_event(rt):
        pass
    with store.read() as conn:
        errors = [r.error for r in conn.execute(select(st.events.c.error).order_by(st.events.c.id)).all()]
        assert len(st.list_workflows(conn)) == 1
    assert errors[0] and "JSON" in errors[0] and errors[1] is None


def test_the_audit_log_is_append_only(store):
    rt = runtime(store, playbook())
    ingest(rt, alert())
    with pytest.raises(DatabaseError, match="append-only"):
        with store.write() as conn:
            conn.execute(update(st.audit).values(actor="someone else"))
    with pytest.raises(DatabaseError, match="append-only"):
        with store.write() as conn:
            conn.execute(text("DELETE FROM audit"))


def test_approval_timeout_cancels(store):
    rt = runtime(store, playbook(approval={"required": True, "timeout": "1m"}))
    created = ingest(rt, alert()).created
    assert expire_approvals(rt, now=time.time() + 30) == []
    assert expire_approvals(rt, now=time.time() + 120) == created
    assert get(rt, created[0]).state == wf.CANCELLED


# --- state machine ------------------------------------------------------------------------------------------------
def test_transitions_follow_the_state_machine(store):
    rt = runtime(store, playbook())
    workflow_id = ingest(rt, alert()).created[0]
    with pytest.raises(wf.TransitionError, match="cannot become COMPLETED"):
        with store.write() as conn:
            wf.transition(conn, workflow_id, wf.COMPLETED, "test")
    wf.reject(store, workflow_id, "alice", "not now")
    with pytest.raises(wf.TransitionError, match="final"):
        wf.approve(store, workflow_id, "bob")
    found = get(rt, workflow_id)
    assert (found.state, found.decided_by, found.reason) == (wf.REJECTED, "alice", "not now")


# --- executor -----------------------------------------------------------------------------------------------------
def test_approved_workflow_runs_steps_against_the_orchestrator(store):
    with running_orchestrator() as orch:
        rt = runtime(store, playbook(), variables={"orchestrator_url": orch.url})
        workflow_id = ingest(rt, alert(instance='{{ 7*7 }}')).created[0]
        assert claim_next(rt) is None  # waits for approval
        wf.approve(store, workflow_id, "alice")
        assert run_claimed(rt) == wf.COMPLETED
    found = get(rt, workflow_id)
    calls = orch.calls_to("/v1/scale")
    assert len(calls) == 1 and calls[0].body["instance"] == "{{ 7*7 }}"
    assert calls[0].body["changes"] == {"replicas": 3, "max_num_batched_tokens": 3072}  # moderate, from defaults
    assert [s.state for s in found.steps] == [wf.STEP_SUCCEEDED, wf.STEP_SUCCEEDED, wf.STEP_SKIPPED]
    assert all(s.duration is not None for s in found.steps[:2])
    assert not orch.calls_to("/v1/undo")


def test_dry_run_records_the_plan_and_sends_nothing(store):
    with running_orchestrator() as orch:
        rt = runtime(store, playbook(dry_run=True), variables={"orchestrator_url": orch.url})
        workflow_id = ingest(rt, alert()).created[0]
        assert get(rt, workflow_id).state == wf.APPROVED  # nothing to approve in a dry run
        assert run_claimed(rt) == wf.COMPLETED
    found = get(rt, workflow_id)
    assert orch.calls == []
    would = found.steps[1].output["would_send"]
    assert would["url"] == f"{orch.url}/v1/scale" and would["json"]["instance"] == "i1"


def test_retries_on_5xx_and_rollback_after_a_failed_change(store):
    with running_orchestrator(scripted_statuses=[503, 400]) as orch:
        rt = runtime(store, playbook(approval={"required": False}), variables={"orchestrator_url": orch.url})
        workflow_id = ingest(rt, alert()).created[0]
        assert run_claimed(rt) == wf.ROLLED_BACK
    found = get(rt, workflow_id)
    scale = found.steps[1]
    assert scale.state == wf.STEP_FAILED and [a["status"] for a in scale.output["attempts"]] == [503, 400]
    assert "not retried" in scale.note
    assert orch.calls_to("/v1/undo")[0].body["changes"] == {"replicas": 1, "max_num_batched_tokens": 2048}
    assert found.steps[2].state == wf.STEP_SUCCEEDED


def verify_playbook(condition: dict, query: str = "vector(0.5)") -> Playbook:
    return playbook(approval={"required": False}, steps=[
        {"name": "recommend", "type": "recommend", "bottleneck": "queue_buildup"},
        {"name": "scale", "type": "http", "request": {"url": "{{ vars.orchestrator_url }}/v1/scale",
                                                      "json": {"changes": "{{ recommendation.changes }}"}}},
        {"name": "check", "type": "verify", "delay": "0s", "query": query, **condition},
        {"name": "undo", "type": "rollback", "request": {"url": "{{ vars.orchestrator_url }}/v1/undo",
                                                          "json": {"changes": "{{ recommendation.previous }}"}}}])


def test_verify_against_prometheus_passes_or_rolls_back(store, prometheus):
    with running_orchestrator() as orch:
        passing = runtime(store, verify_playbook({"below": 1}), variables={"orchestrator_url": orch.url},
                          prometheus=PrometheusClient(prometheus.url))
        ok_id = ingest(passing, alert(instance="a")).created[0]
        assert run_claimed(passing) == wf.COMPLETED
        failing = runtime(store, verify_playbook({"below": 0.1}), variables={"orchestrator_url": orch.url},
                          prometheus=PrometheusClient(prometheus.url))
        bad_id = ingest(failing, alert(instance="b")).created[0]
        assert run_claimed(failing) == wf.ROLLED_BACK
        # Improvement against the pre-change baseline: a constant query never improves.
        flat = runtime(store, verify_playbook({"improvement": {"percent": 10}}),
                       variables={"orchestrator_url": orch.url}, prometheus=PrometheusClient(prometheus.url))
        flat_id = ingest(flat, alert(instance="c")).created[0]
        assert run_claimed(flat) == wf.ROLLED_BACK
    assert get(passing, ok_id).steps[2].output["value"] == 0.5
    bad = get(failing, bad_id)
    assert bad.steps[2].state == wf.STEP_FAILED and bad.steps[3].state == wf.STEP_SUCCEEDED
    flat_found = get(flat, flat_id)
    assert flat_found.context["baselines"]["check"]["value"] == 0.5
    assert flat_found.steps[2].output["improvement_percent"] == 0.0
    assert len(orch.calls_to("/v1/undo")) == 2


def test_recommend_reads_current_settings_from_prometheus(store, start_prometheus):
    labels = 'instance="vllm-1:8000",gpu_memory_utilization="0.85",block_size="16",enable_prefix_caching="True"'
    with running_orchestrator(gauges={f"vllm:cache_config_info{{{labels}}}": 1}) as orch:
        host = orch.url.split("://")[1]
        prom = start_prometheus(scrape_configs=[{"job_name": "vllm", "scrape_interval": "1s", "honor_labels": True,
                                                 "static_configs": [{"targets": [host]}]}])
        deadline = time.time() + 20
        while not prom.query("vllm:cache_config_info") and time.time() < deadline:
            time.sleep(0.2)
        pb = playbook(dry_run=True, steps=[{"name": "r", "type": "recommend", "bottleneck": "kv_cache_pressure"}])
        rt = runtime(store, pb, prometheus=PrometheusClient(prom.url))
        workflow_id = ingest(rt, alert(instance="vllm-1:8000")).created[0]
        assert run_claimed(rt) == wf.COMPLETED
    output = get(rt, workflow_id).steps[0].output
    assert output["current_source"] == "vllm:cache_config_info"
    assert output["changes"]["gpu_memory_utilization"] == pytest.approx(0.89)  # moderate: +0.04 from 0.85


def test_recommend_levels_scale_the_change():
    steps = {level: recommend("vllm", "kv_cache_pressure", level, {"gpu_memory_utilization": 0.9,
                                                                  "max_num_seqs": 256})["changes"]
             for level in ("conservative", "moderate", "aggressive")}
    assert steps["conservative"] == {"gpu_memory_utilization": 0.92, "max_num_seqs": 224}
    assert steps["aggressive"]["gpu_memory_utilization"] == 0.95  # capped
    assert steps["aggressive"]["kv_cache_dtype"] == "fp8" and "kv_cache_dtype" not in steps["moderate"]
    assert recommend("sglang", "low_prefix_cache_hit", "conservative", {})["changes"] == {"schedule_policy": "lpm"}


def test_crash_resume_does_not_rerun_a_change_of_unknown_outcome(store):
    with running_orchestrator() as orch:
        rt = runtime(store, playbook(approval={"required": False}), variables={"orchestrator_url": orch.url})
        workflow_id = ingest(rt, alert()).created[0]
        claimed = claim_next(rt)
        # Simulate a process killed while the http step was in flight: step RUNNING, lease left to expire.
        with store.write() as conn:
            st.update_step(conn, claimed, 0, state=wf.STEP_SUCCEEDED, output={"changes": {"replicas": 3},
                                                                               "previous": {"replicas": 1}})
            st.update_step(conn, claimed, 1, state=wf.STEP_RUNNING, started_at=time.time())
            conn.execute(update(st.workflows).values(lease_until=time.time() - 1))
        survivor = runtime(store, playbook(approval={"required": False}), variables={"orchestrator_url": orch.url})
        assert claim_next(survivor) == workflow_id
        assert run_workflow(survivor, workflow_id) == wf.ROLLED_BACK
    found = get(rt, workflow_id)
    assert orch.calls_to("/v1/scale") == []  # not re-run
    assert "not re-run" in found.steps[1].note
    assert orch.calls_to("/v1/undo")[0].body["changes"] == {"replicas": 1}
    with store.read() as conn:
        actions = [e["action"] for e in st.audit_entries(conn, workflow_id)]
    assert "resumed" in actions and "step_interrupted" in actions


def test_crash_resume_reruns_a_read_only_step_with_a_recorded_reason(store, prometheus):
    with running_orchestrator() as orch:
        pb = verify_playbook({"below": 1})
        rt = runtime(store, pb, variables={"orchestrator_url": orch.url}, prometheus=PrometheusClient(prometheus.url))
        workflow_id = ingest(rt, alert()).created[0]
        claim_next(rt)
        with store.write() as conn:
            st.update_step(conn, workflow_id, 0, state=wf.STEP_SUCCEEDED, output={"changes": {"replicas": 2}})
            st.update_step(conn, workflow_id, 1, state=wf.STEP_SUCCEEDED, output={"status": 200})
            st.update_step(conn, workflow_id, 2, state=wf.STEP_RUNNING, started_at=time.time())
            conn.execute(update(st.workflows).values(lease_until=time.time() - 1))
        survivor = runtime(store, pb, variables={"orchestrator_url": orch.url},
                           prometheus=PrometheusClient(prometheus.url))
        assert claim_next(survivor) == workflow_id
        assert run_workflow(survivor, workflow_id) == wf.COMPLETED
    assert orch.calls == []
    with store.read() as conn:
        reruns = [e for e in st.audit_entries(conn, workflow_id) if e["action"] == "step_rerun"]
    assert reruns and "only reads" in reruns[0]["detail"]["reason"]
    assert get(rt, workflow_id).steps[2].attempts == 1


def test_concurrency_limit_queues_approved_workflows(store):
    rt = runtime(store, playbook(approval={"required": False}, max_concurrent=1, series_labels=["instance"]))
    first = ingest(rt, alert(instance="a")).created[0]
    second = ingest(rt, alert(instance="b")).created[0]
    assert claim_next(rt) == first
    assert claim_next(rt) is None  # the playbook's one slot is taken
    assert get(rt, second).state == wf.APPROVED


# --- evaluate --fix -----------------------------------------------------------------------------------------------
def finding(instance="vllm-1", start="2026-01-01T00:00:00Z") -> Finding:
    return Finding(rule="QueueBuildup", kind="threshold", category="queue_buildup", severity="high",
                   labels={"instance": instance, "model_name": "m"}, start=pd.Timestamp(start), end=None, value=9,
                   threshold=5, recommendation="scale out", playbook="pb", pack="vllm")


def test_findings_become_the_live_alert_and_go_through_the_same_intake(store):
    converted = finding_alert(finding())
    assert converted.labels == {"instance": "vllm-1", "model_name": "m", "alertname": "QueueBuildup",
                                "severity": "high", "category": "queue_buildup", "rule_pack": "vllm"}
    assert converted.fingerprint == label_fingerprint(converted.labels)
    assert converted.annotations["playbook"] == "pb"
    pb = playbook(match={"matchers": [], "by_annotation": True})
    dry = run_findings([finding(), finding(instance="vllm-2")], [pb], store, dry_run=True,
                       variables={"orchestrator_url": "http://orchestrator.invalid"}).created
    assert [w.state for w in dry] == [wf.COMPLETED, wf.COMPLETED] and all(w.dry_run for w in dry)
    assert dry[0].steps[1].output["dry_run"] is True
    again = run_findings([finding()], [pb], store, dry_run=True)  # same episode: nothing new, and it says which
    assert again.created == [] and [w.id for w in again.existing] == [dry[0].id]
    pending = run_findings([finding(instance="vllm-3")], [pb], store, dry_run=False).created
    assert [w.state for w in pending] == [wf.PENDING_APPROVAL]


def test_load_playbooks_reports_problems(tmp_path):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"kind": "Playbook", "name": "x", "match": {}, "steps": []}))
    with pytest.raises(SpecError) as error:
        load_playbooks([tmp_path])
    assert "p.yaml" in str(error.value) and "steps" in str(error.value)


def test_a_large_event_is_processed_in_chunks_with_committed_progress(store):
    rt = runtime(store, playbook())
    st.insert_event(store, payload(*[alert(instance=f"i{i}") for i in range(450)]))
    assert process_next_event(rt, max_alerts=200)
    with store.read() as conn:
        row = conn.execute(select(st.events.c.progress, st.events.c.processed_at)).first()
        assert (row.progress, row.processed_at) == (200, None)
        assert len(st.list_workflows(conn, limit=1000)) == 200
    while process_next_event(rt, max_alerts=200):
        pass
    with store.read() as conn:
        row = conn.execute(select(st.events.c.progress, st.events.c.processed_at)).first()
        assert row.progress == 450 and row.processed_at is not None
        assert len(st.list_workflows(conn, limit=1000)) == 450


def test_a_step_longer_than_the_lease_keeps_its_workflow(store, prometheus):
    """The lease is renewed while a step runs: a second engine does not take a slow workflow over."""
    pb = verify_playbook({"below": 1})
    pb.steps[2].delay = 1.5
    with running_orchestrator() as orch:
        rt = runtime(store, pb, variables={"orchestrator_url": orch.url}, prometheus=PrometheusClient(prometheus.url))
        rt.lease_seconds = 0.5
        other = runtime(store, pb, variables={"orchestrator_url": orch.url},
                        prometheus=PrometheusClient(prometheus.url))
        workflow_id = ingest(rt, alert()).created[0]
        assert claim_next(rt) == workflow_id
        thief: list = []
        watcher = threading.Thread(target=lambda: [thief.append(claim_next(other)) or time.sleep(0.1)
                                                   for _ in range(15)])
        watcher.start()
        assert run_workflow(rt, workflow_id) == wf.COMPLETED
        watcher.join()
    assert set(thief) == {None}


def test_shutdown_mid_verify_leaves_the_workflow_resumable_at_once(store, prometheus):
    from rules_engine.playbooks.runner import Runner

    pb = verify_playbook({"below": 1})
    pb.steps[2].delay = 30
    with running_orchestrator() as orch:
        rt = runtime(store, pb, variables={"orchestrator_url": orch.url}, prometheus=PrometheusClient(prometheus.url))
        workflow_id = ingest(rt, alert()).created[0]
        runner = Runner(rt, executor_threads=1, poll_interval=0.05).start()
        deadline = time.time() + 10
        while get(rt, workflow_id).steps[2].state != wf.STEP_RUNNING and time.time() < deadline:
            time.sleep(0.05)
        runner.stop()
        assert get(rt, workflow_id).state == wf.IN_PROGRESS
        pb.steps[2].delay = 0
        restarted = runtime(store, pb, variables={"orchestrator_url": orch.url},
                            prometheus=PrometheusClient(prometheus.url))
        assert claim_next(restarted) == workflow_id  # no wait for the old lease to expire
        assert run_workflow(restarted, workflow_id) == wf.COMPLETED
    assert len(orch.calls_to("/v1/scale")) == 1  # the change was not made twice


def test_a_playbook_edited_after_approval_fails_instead_of_running_another_plan(store):
    rt = runtime(store, playbook(approval={"required": False}))
    workflow_id = ingest(rt, alert()).created[0]
    edited = runtime(store, playbook(approval={"required": False}, steps=[
        {"name": "recommend", "type": "recommend", "bottleneck": "queue_buildup"}]))
    assert claim_next(edited) == workflow_id
    assert run_workflow(edited, workflow_id) == wf.FAILED
    assert "no longer match the approved plan" in get(rt, workflow_id).reason


def test_global_dry_run_applies_to_every_playbook(store):
    with running_orchestrator() as orch:
        rt = runtime(store, playbook(), dry_run=True, variables={"orchestrator_url": orch.url})
        workflow_id = ingest(rt, alert()).created[0]
        assert run_claimed(rt) == wf.COMPLETED
    found = get(rt, workflow_id)
    assert found.dry_run and found.decided_by == "policy:dry-run" and orch.calls == []


def test_a_resolved_alert_aborts_before_the_rollout_when_the_playbook_says_so(store):
    steps = [{"name": "recommend", "type": "recommend", "bottleneck": "queue_buildup"},
             {"name": "canary", "type": "canary", "percent": 10, "request": {
                 "url": "{{ vars.orchestrator_url }}/v1/config", "json": {"percent": "{{ percent }}"}}},
             {"name": "rollout", "type": "rollout", "request": {
                 "url": "{{ vars.orchestrator_url }}/v1/config", "json": {"percent": "{{ percent }}"}}},
             {"name": "undo", "type": "rollback", "request": {"url": "{{ vars.orchestrator_url }}/v1/undo"}}]
    with running_orchestrator() as orch:
        pb = playbook(approval={"required": False}, on_resolved="abort_before_rollout", steps=steps)
        resolving = {"n": 0}

        def resolve_after_canary(call):  # the alert resolves while the canary is applied
            if call.path == "/v1/config" and resolving["n"] == 0:
                resolving["n"] += 1
                ingest(runtime(store, pb), alert(status="resolved"))

        orch.on_call = resolve_after_canary
        rt = runtime(store, pb, variables={"orchestrator_url": orch.url})
        workflow_id = ingest(rt, alert()).created[0]
        assert run_claimed(rt) == wf.ROLLED_BACK
    assert [c.body["percent"] for c in orch.calls_to("/v1/config")] == [10]  # canary only, no rollout
    assert len(orch.calls_to("/v1/undo")) == 1
    assert "resolved before the rollout" in get(rt, workflow_id).reason
