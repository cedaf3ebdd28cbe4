"""Starting a playbook's workflow from an analysis finding or a recommendation (POST /api/v1/workflows).

A finding becomes the alert its live rule would send (rules_engine.playbooks.fix.export_alert: same labels, so the
same fingerprint, its start as startsAt), and goes through the intake's own path: one workflow per episode
(a live alert of the same episode finds it, and vice versa), the playbook's cooldown per series, and its approval
rules (waiting for approval unless the playbook needs none or runs dry). The operator chose the playbook, so its
matchers are not consulted.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import update

from rules_engine.playbooks import store as st
from rules_engine.playbooks.fix import export_alert
from rules_engine.playbooks.intake import IntakeResult, _start_workflow, _workflows_of
from rules_engine.playbooks.runtime import Runtime
from rules_engine.spec.playbook import Playbook


@dataclass
class Started:
    workflows: list[st.Workflow]
    created: int
    existing: int
    suppressed: int

    def to_json(self) -> dict:
        return {"workflows": [w.to_json() for w in self.workflows], "created": self.created,
                "existing": self.existing, "suppressed": self.suppressed}


def start_workflows(rt: Runtime, playbook: Playbook, findings: list[dict], actor: str, origin: str,
                    context: dict) -> Started:
    """One workflow of `playbook` per finding's episode (existing ones are returned, not duplicated)."""
    alerts = [export_alert(finding) for finding in findings]
    now = time.time()
    result = IntakeResult()
    existing: list[str] = []
    with rt.store.write() as conn:
        known = _workflows_of(conn, alerts)
        for alert in alerts:
            mine = [workflow_id for name, workflow_id, _ in known.get((alert.fingerprint, alert.starts_at), [])
                    if name == playbook.name]
            if mine:
                existing += [w for w in mine if w not in existing]
                continue
            created = _start_workflow(conn, rt, playbook, alert, actor, origin, now, result)
            if created:
                known.setdefault((alert.fingerprint, alert.starts_at), []).append((playbook.name, created, ""))
                conn.execute(update(st.workflows).where(st.workflows.c.id == created)
                             .values(context=st.dumps(context)))
    with rt.store.read() as conn:
        workflows = [st.get_workflow(conn, workflow_id) for workflow_id in result.created + existing]
    return Started(workflows, len(result.created), len(existing), result.suppressed)
