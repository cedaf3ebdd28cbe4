"""From persisted webhook events to workflows: episodes, matching, idempotency, cooldown, resolved handling.

Processing an event is one database transaction with no side effects outside the database: record the episodes,
create (or find) the workflows, cancel pending ones on resolve, mark the event processed. A crash anywhere inside
leaves the event unprocessed and nothing half-written, so it is processed exactly once after a restart; the
unique keys make a second delivery of the same episode (resend, HA peer, another receiver process) a no-op.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from sqlalchemy import and_, insert, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from rules_engine.playbooks import store as st
from rules_engine.playbooks import workflow as wf
from rules_engine.playbooks.payload import Alert, PayloadError, parse_payload
from rules_engine.playbooks.runtime import Runtime
from rules_engine.spec.playbook import Playbook


@dataclass
class IntakeResult:
    created: list[str] = field(default_factory=list)  # workflow ids
    duplicates: int = 0  # alerts whose workflow already existed
    suppressed: int = 0  # by cooldown
    cancelled: list[str] = field(default_factory=list)
    unmatched: int = 0


def _insert_ignore(conn: Connection, table, dialect: str, **values) -> bool:
    """Insert unless a unique key already holds the row; True if inserted."""
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        return conn.execute(dialect_insert(table).values(**values).on_conflict_do_nothing()).rowcount == 1
    try:
        with conn.begin_nested():
            conn.execute(insert(table).values(**values))
        return True
    except IntegrityError:
        return False


def process_next_event(rt: Runtime) -> bool:
    """Process the oldest unprocessed event, if any. Returns False when the queue is empty."""
    with rt.store.write() as conn:
        if rt.store.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": st.INTAKE_LOCK_KEY})
        query = (select(st.events.c.id, st.events.c.body).where(st.events.c.processed_at.is_(None))
                 .order_by(st.events.c.id).limit(1))
        if rt.store.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        row = conn.execute(query).first()
        if row is None:
            return False
        error = None
        try:
            with conn.begin_nested():
                payload = parse_payload(row.body)
                if payload.truncated_alerts:
                    st.record_audit(conn, "alertmanager", "alerts_truncated", None, event_id=row.id,
                                    truncated=payload.truncated_alerts,
                                    note="Alertmanager max_alerts dropped alerts from this notification")
                process_alerts(conn, rt, payload.alerts, actor="alertmanager", origin="alertmanager",
                               event_id=row.id)
        except (PayloadError, ValueError, KeyError, TypeError) as exc:
            # A poison event must not block the queue: record why and move on.
            error = f"{type(exc).__name__}: {exc}"
            st.record_audit(conn, "engine", "event_failed", None, event_id=row.id, error=error)
        conn.execute(update(st.events).where(st.events.c.id == row.id)
                     .values(processed_at=time.time(), attempts=st.events.c.attempts + 1, error=error))
        return True


def process_alerts(conn: Connection, rt: Runtime, alerts: list[Alert], actor: str, origin: str,
                   event_id: int | None = None, now: float | None = None) -> IntakeResult:
    now = time.time() if now is None else now
    result = IntakeResult()
    for alert in alerts:
        _record_episode(conn, rt, alert, event_id, now)
        if alert.status == "resolved":
            _on_resolved(conn, alert, actor, result)
            continue
        matched = [p for p in rt.playbooks.values() if p.matches(alert.labels, alert.annotations)]
        if not matched:
            result.unmatched += 1
        for playbook in matched:
            _start_workflow(conn, rt, playbook, alert, actor, origin, now, result)
    return result


def _record_episode(conn: Connection, rt: Runtime, alert: Alert, event_id: int | None, now: float) -> None:
    inserted = _insert_ignore(
        conn, st.episodes, rt.store.dialect, fingerprint=alert.fingerprint, starts_at=alert.starts_at,
        alertname=alert.labels.get("alertname", ""), labels=st.dumps(alert.labels),
        annotations=st.dumps(alert.annotations), first_event_id=event_id, first_seen=now, deliveries=1,
        generator_url=alert.generator_url,
        resolved_at=now if alert.status == "resolved" else None,
        ends_at=alert.ends_at if alert.status == "resolved" else None)
    if not inserted:
        values = {"deliveries": st.episodes.c.deliveries + 1}
        if alert.status == "resolved":
            values.update(resolved_at=now, ends_at=alert.ends_at)
        conn.execute(update(st.episodes).where(st.episodes.c.fingerprint == alert.fingerprint,
                                               st.episodes.c.starts_at == alert.starts_at).values(**values))


def _on_resolved(conn: Connection, alert: Alert, actor: str, result: IntakeResult) -> None:
    """A resolved alert never acts: it cancels workflows still waiting for approval and is recorded on the others."""
    rows = conn.execute(select(st.workflows.c.id, st.workflows.c.state).where(
        st.workflows.c.fingerprint == alert.fingerprint, st.workflows.c.starts_at == alert.starts_at)).all()
    for row in rows:
        if row.state == wf.PENDING_APPROVAL:
            wf.transition(conn, row.id, wf.CANCELLED, actor, "alert resolved before approval")
            result.cancelled.append(row.id)
        elif row.state not in wf.FINAL_STATES:
            st.record_audit(conn, actor, "alert_resolved", row.id, state=row.state, ends_at=alert.ends_at,
                            note="alert resolved while the workflow runs; its verify steps decide")


def _start_workflow(conn: Connection, rt: Runtime, playbook: Playbook, alert: Alert, actor: str, origin: str,
                    now: float, result: IntakeResult) -> None:
    existing = conn.execute(select(st.workflows.c.id).where(
        st.workflows.c.playbook == playbook.name, st.workflows.c.fingerprint == alert.fingerprint,
        st.workflows.c.starts_at == alert.starts_at)).first()
    if existing is not None:
        result.duplicates += 1
        return
    series_key = playbook.series_key(alert.labels)
    recent = conn.execute(select(st.workflows.c.id, st.workflows.c.state).where(and_(
        st.workflows.c.playbook == playbook.name, st.workflows.c.series_key == series_key,
        st.workflows.c.created_at >= now - playbook.cooldown,
        st.workflows.c.state.notin_([wf.REJECTED, wf.CANCELLED]))).limit(1)).first()
    if recent is not None:
        st.record_audit(conn, actor, "suppressed_by_cooldown", recent.id, playbook=playbook.name,
                        series=series_key, fingerprint=alert.fingerprint, starts_at=alert.starts_at,
                        cooldown_seconds=playbook.cooldown)
        result.suppressed += 1
        return
    workflow_id = uuid.uuid4().hex[:12]
    dry_run = rt.dry_run or playbook.dry_run
    inserted = _insert_ignore(
        conn, st.workflows, rt.store.dialect, id=workflow_id, playbook=playbook.name, state=wf.PENDING_APPROVAL,
        phase="main", dry_run=dry_run, optimization_level=playbook.optimization_level,
        fingerprint=alert.fingerprint, starts_at=alert.starts_at, alertname=alert.labels.get("alertname", ""),
        instance=alert.labels.get("instance", ""), series_key=series_key, labels=st.dumps(alert.labels),
        annotations=st.dumps(alert.annotations), origin=origin, created_at=now, updated_at=now, context="{}")
    if not inserted:  # another writer got there between our check and insert (only without serialized writers)
        result.duplicates += 1
        return
    conn.execute(insert(st.steps), [
        {"workflow_id": workflow_id, "idx": i, "name": step.name, "type": step.type, "state": wf.STEP_PENDING,
         "attempts": 0, "output": "{}"} for i, step in enumerate(playbook.steps)])
    st.record_audit(conn, actor, "workflow_created", workflow_id, playbook=playbook.name,
                    alertname=alert.labels.get("alertname", ""), fingerprint=alert.fingerprint,
                    starts_at=alert.starts_at, generator_url=alert.generator_url, dry_run=dry_run, origin=origin)
    # Dry-run workflows change nothing, so there is nothing to approve: they run at once and record the plan.
    if dry_run:
        wf.transition(conn, workflow_id, wf.APPROVED, "policy:dry-run", "dry run: no side effects",
                      decided_by="policy:dry-run")
    elif not playbook.approval.required:
        wf.transition(conn, workflow_id, wf.APPROVED, "policy:no-approval-required",
                      f"playbook {playbook.name} does not require approval", decided_by="policy")
    result.created.append(workflow_id)


def expire_approvals(rt: Runtime, now: float | None = None) -> list[str]:
    """Cancel workflows that waited for approval longer than their playbook allows."""
    now = time.time() if now is None else now
    expired = []
    with rt.store.write() as conn:
        rows = conn.execute(select(st.workflows.c.id, st.workflows.c.playbook, st.workflows.c.created_at)
                            .where(st.workflows.c.state == wf.PENDING_APPROVAL)).all()
        for row in rows:
            playbook = rt.playbooks.get(row.playbook)
            timeout = playbook.approval.timeout if playbook else 0.0
            if now - row.created_at > timeout:
                wf.transition(conn, row.id, wf.CANCELLED, "policy:approval-timeout",
                              f"not approved within {timeout:.0f}s")
                expired.append(row.id)
    return expired
