"""`evaluate --fix`: hand a backtest's findings to the matching playbooks, through the webhook's own path.

Each finding becomes the alert the live rule would have sent (same labels, so the same fingerprint, and its start
as startsAt), and goes through the same intake as a webhook alert: matching, idempotency per episode, cooldown.
With dry_run the workflows run at once and record what they would do; without it they wait for approval like
any other (approve them with `rules-engine workflows approve` or the API; `serve` executes them).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

import pandas as pd

from rules_engine.evaluate.findings import Finding
from rules_engine.playbooks import store as st
from rules_engine.playbooks import workflow as wf
from rules_engine.playbooks.executor import run_workflow
from rules_engine.playbooks.intake import _workflows_of, process_alerts
from rules_engine.playbooks.payload import Alert, label_fingerprint
from rules_engine.playbooks.runtime import Runtime
from rules_engine.source.client import PrometheusClient
from rules_engine.spec.playbook import Playbook
from rules_engine.spec.times import rfc3339


def finding_alert(finding: Finding) -> Alert:
    return export_alert({
        "rule": finding.rule, "severity": finding.severity, "category": finding.category, "pack": finding.pack,
        "labels": finding.labels, "rule_labels": finding.rule_labels, "summary": finding.summary,
        "description": finding.description, "recommendation": finding.recommendation, "playbook": finding.playbook,
        "runbook_url": finding.runbook_url,
        "start": rfc3339(pd.Timestamp(finding.start), "ns")})  # Alertmanager's canonical form (canonical_time)


def export_alert(record: dict) -> Alert:
    """The alert the live rule would have sent for a finding of the export contract: its labels (so its
    fingerprint) and its start, so a workflow started from a finding is the live alert's episode."""
    labels = {**(record.get("labels") or {}), **(record.get("rule_labels") or {}), "alertname": record["rule"],
              "severity": record["severity"], "category": record["category"]}
    if record.get("pack"):
        labels["rule_pack"] = record["pack"]
    annotations = {key: record.get(key) or "" for key in ("summary", "description", "recommendation", "playbook",
                                                          "runbook_url")}
    return Alert.model_validate({
        "status": "firing", "labels": labels, "annotations": {k: v for k, v in annotations.items() if v},
        "startsAt": record["start"], "fingerprint": label_fingerprint(labels)})


@dataclass(frozen=True)
class FixRun:
    """What one `--fix` run did: the workflows it created, and why the other matching findings started none."""

    created: list[st.Workflow]
    existing: list[st.Workflow]  # earlier workflows of the same alert episodes: a rerun deduplicates against them
    suppressed: int  # findings whose series was within its playbook's cooldown


def run_findings(findings: Iterable[Finding], playbooks: Iterable[Playbook], store: st.Store, dry_run: bool = True,
                 prometheus: PrometheusClient | None = None, variables: dict | None = None) -> FixRun:
    """Start the matching playbooks for each finding; returns the workflows created (already run when dry_run),
    and those of the same episodes that already existed.

    `prometheus` is what verify steps and current settings query: the client the backtest read from, so they
    reach the same server with the same credentials and tenant."""
    rt = Runtime(store=store, playbooks={p.name: p for p in playbooks}, dry_run=dry_run,
                 prometheus=prometheus, variables=dict(variables or {}), owner="evaluate --fix")
    alerts = [finding_alert(f) for f in findings]
    with store.write() as conn:
        result = process_alerts(conn, rt, alerts, actor="cli:evaluate --fix", origin="evaluate --fix")
    if dry_run:
        for workflow_id in result.created:
            with store.write() as conn:
                wf.transition(conn, workflow_id, wf.IN_PROGRESS, "cli:evaluate --fix", "dry run started",
                              lease_owner=rt.owner, lease_until=time.time() + 3600)
            run_workflow(rt, workflow_id)
    with store.read() as conn:
        known = {workflow_id for found in _workflows_of(conn, alerts).values() for _, workflow_id, _ in found}
        return FixRun(created=[st.get_workflow(conn, workflow_id) for workflow_id in result.created],
                      existing=[st.get_workflow(conn, workflow_id)
                                for workflow_id in sorted(known - set(result.created))],
                      suppressed=result.suppressed)
