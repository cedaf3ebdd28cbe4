"""kill -9 of a real `rules-engine serve` (gunicorn) while workflows are inside each mutating step type.

Three workflows run at once and each is held inside a different mutating call at the test orchestrator (canary,
rollout, rollback); the whole process group is killed -9, the orchestrator lets go, and a restarted server
resumes them. Each must end in a defined state with audit rows saying what happened, and the orchestrator's
request counts show that no non-idempotent call was sent twice (a rollback may be, by design).
"""
from __future__ import annotations

import hashlib
import os
import signal
import threading

import requests
import yaml

from rules_engine.playbooks import store as st
from rules_engine.playbooks import workflow as wf
from rules_engine.playbooks.payload import label_fingerprint
from tests import processes
from tests.processes import wait_for
from tests.test_e2e_alerting import AM_TOKEN, OPERATOR_TOKEN, running_serve
from tests.test_playbooks_orchestrator import running_orchestrator

PLAYBOOK = """\
kind: Playbook
name: {name}
match: {{matchers: ['alertname="{alertname}"']}}
approval: {{required: false}}
series_labels: [model_name]
max_concurrent: 3
steps:
  - {{name: recommend, type: recommend, bottleneck: kv_cache_pressure}}
  - name: canary
    type: canary
    request: {{url: "{{{{ vars.orchestrator_url }}}}/v1/canary", json: {{model_name: "{{{{ labels.model_name }}}}"}},
              timeout: 60s}}
  - name: rollout
    type: rollout
    request:
      url: "{{{{ vars.orchestrator_url }}}}/v1/rollout"
      json: {{model_name: "{{{{ labels.model_name }}}}"}}
      expect_status: [{rollout_status}]
      timeout: 60s
  - name: undo
    type: rollback
    request: {{url: "{{{{ vars.orchestrator_url }}}}/v1/undo", json: {{model_name: "{{{{ labels.model_name }}}}"}},
              timeout: 60s}}
"""


def alert(alertname: str, model: str) -> dict:
    labels = {"alertname": alertname, "instance": "vllm-1:8000", "model_name": model}
    return {"status": "firing", "labels": labels, "annotations": {}, "startsAt": "2026-11-27T00:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z", "fingerprint": label_fingerprint(labels)}


def test_kill_9_inside_each_mutating_step_ends_defined_and_repeats_nothing(tmp_path):
    rules = tmp_path / "playbooks"
    rules.mkdir()
    (rules / "apply.yaml").write_text(PLAYBOOK.format(name="apply", alertname="Apply", rollout_status=200))
    # A rollout the orchestrator answers unexpectedly: the workflow fails into its rollback.
    (rules / "refused.yaml").write_text(PLAYBOOK.format(name="refused", alertname="Refused", rollout_status=201))
    (tmp_path / "am-token").write_text(AM_TOKEN + "\n")
    # model -> the call it is held in when the server is killed (first occurrence only)
    holds = {("in-canary", "/v1/canary"), ("in-rollout", "/v1/rollout"), ("in-rollback", "/v1/undo")}
    held, release = set(), threading.Event()

    def hold(call):
        key = (call.body["model_name"], call.path)
        if key in holds:
            holds.discard(key)
            held.add(key)
            release.wait(60)

    with running_orchestrator(on_call=hold) as orch:
        port = processes.free_port()
        config_path = tmp_path / "serve.yaml"
        config_path.write_text(yaml.safe_dump({
            "listen": f"127.0.0.1:{port}", "database_url": f"sqlite:///{tmp_path / 'kill.db'}",
            "playbooks": [str(rules)], "variables": {"orchestrator_url": orch.url},
            "alertmanager_auth": {"bearer_token": {"file": str(tmp_path / "am-token")}},
            "operators": [{"name": "alice", "roles": ["admin"],
                           "token": {"sha256": hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()}}],
            "workers": 1, "threads": 4, "executor_threads": 3, "poll_interval": 0.1, "lease_seconds": 1}))
        body = {"version": "4", "groupKey": "kill", "status": "firing", "receiver": "rules-engine",
                "alerts": [alert("Apply", "in-canary"), alert("Apply", "in-rollout"),
                           alert("Refused", "in-rollback")]}
        receiver = running_serve(config_path, port)
        proc = receiver.__enter__()
        try:
            requests.post(f"http://127.0.0.1:{port}/alertmanager/webhook", json=body, timeout=10,
                          headers={"Authorization": f"Bearer {AM_TOKEN}"}).raise_for_status()
            wait_for("each workflow to be inside its mutating call", lambda: len(held) == 3, timeout=30)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        release.set()
        store = st.open_store(f"sqlite:///{tmp_path / 'kill.db'}")

        def workflows() -> dict[str, st.Workflow]:
            with store.read() as conn:
                return {w.labels["model_name"]: w for w in st.list_workflows(conn, with_steps=True)}

        assert {model: w.state for model, w in workflows().items()} == {
            "in-canary": wf.IN_PROGRESS, "in-rollout": wf.IN_PROGRESS, "in-rollback": wf.FAILED}
        with running_serve(config_path, port):
            done = wait_for("every workflow to end", lambda: (found := workflows()) and all(
                w.state in wf.FINAL_STATES or (w.state == wf.FAILED and w.phase == "done")
                for w in found.values()) and found, timeout=30)
        with store.read() as conn:
            actions = {model: [e["action"] for e in st.audit_entries(conn, w.id)] for model, w in done.items()}
        store.dispose()

    def sent(model: str, path: str) -> int:
        return len([c for c in orch.calls_to(path) if c.body["model_name"] == model])

    assert {model: w.state for model, w in done.items()} == dict.fromkeys(done, wf.ROLLED_BACK)
    # Interrupted inside a non-idempotent call: not sent again, marked FAILED ("outcome unknown"), rolled back.
    for model, step in (("in-canary", "canary"), ("in-rollout", "rollout")):
        assert "resumed" in actions[model] and "step_interrupted" in actions[model]
        assert "outcome is unknown" in next(s.note for s in done[model].steps if s.name == step)
    assert (sent("in-canary", "/v1/canary"), sent("in-canary", "/v1/rollout"), sent("in-canary", "/v1/undo")) \
        == (1, 0, 1)
    assert (sent("in-rollout", "/v1/canary"), sent("in-rollout", "/v1/rollout"), sent("in-rollout", "/v1/undo")) \
        == (1, 1, 1)
    # Interrupted inside the rollback: restoring twice is harmless, so it is sent again, with the reason recorded.
    assert "resumed" in actions["in-rollback"] and "step_rerun" in actions["in-rollback"]
    assert (sent("in-rollback", "/v1/canary"), sent("in-rollback", "/v1/rollout"),
            sent("in-rollback", "/v1/undo")) == (1, 1, 2)
