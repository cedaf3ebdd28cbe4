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
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from rules_engine.playbooks import store as st
from rules_engine.playbooks import workflow as wf
from rules_engine.playbooks.payload import Alert, PayloadError, WebhookPayload, parse_payload
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
        statement = dialect_insert(table).values(**values).on_conflict_do_nothing()
        if dialect == "sqlite":
            return conn.execute(statement).rowcount == 1
        # psycopg does not report a reliable rowcount here; a RETURNING row says the insert happened.
        key = list(table.primary_key.columns)[0]
        return conn.execute(statement.returning(key)).first() is not None
    try:
        with conn.begin_nested():
            conn.execute(insert(table).values(**values))
        return True
    except IntegrityError:
        return False


# What processing one event can raise about that event rather than about the store's condition: a value the store
# refuses (NUL, over-long, over an index's size), a template that cannot render it. Such an event is retried
# MAX_ATTEMPTS times, then quarantined: marked processed with its error and audited, so it cannot block the queue.
EVENT_ERRORS = (ValueError, KeyError, TypeError, DBAPIError)
MAX_ATTEMPTS = 3


@dataclass
class _Plan:
    row: Any  # the event's row: id, body, progress, attempts
    parsed: WebhookPayload | None  # None when the event failed
    chunk: list[Alert]  # the alerts to process now
    error: str | None = None
    quarantine: bool = False  # a failure that no retry can cure, or the last attempt

    def fail(self, error: str, retryable: bool) -> None:
        self.parsed, self.chunk, self.error = None, [], error
        self.quarantine = not retryable or self.row.attempts + 1 >= MAX_ATTEMPTS


def process_next_event(rt: Runtime, max_alerts: int = 200) -> bool:
    """Process the oldest unprocessed events, up to about `max_alerts` alerts in one transaction (several small
    events share a commit; a large event is processed in chunks, its progress committed with their effects, so
    the write lock is never held for long and a crash resumes at the chunk boundary). False when idle.

    An error about the store's condition (locked, full, connection lost) propagates and leaves every event for
    the next round; an error about one event is recorded on it (see EVENT_ERRORS)."""
    with rt.store.read() as conn:  # polling must not take the write lock when there is nothing to do
        if not st.has_unprocessed_events(conn):
            return False
    with rt.store.write(durable=False) as conn:
        if rt.store.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": st.INTAKE_LOCK_KEY})
        query = (select(st.events.c.id, st.events.c.body, st.events.c.progress, st.events.c.attempts)
                 .where(st.events.c.processed_at.is_(None)).order_by(st.events.c.id).limit(20))
        if rt.store.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        rows = conn.execute(query).all()
        plans: list[_Plan] = []
        budget = max_alerts
        for row in rows:
            if budget <= 0:
                break
            try:
                parsed = parse_payload(row.body)
            except PayloadError as exc:
                plans.append(plan := _Plan(row, None, []))
                plan.fail(f"PayloadError: {exc}", retryable=False)  # it will never parse
                budget -= 1
                continue
            chunk = parsed.alerts[row.progress:row.progress + budget]
            plans.append(_Plan(row, parsed, chunk))
            budget -= max(len(chunk), 1)
        good = [plan for plan in plans if plan.parsed is not None]
        try:  # all events of the batch in one go; on an error, one at a time to isolate it
            with conn.begin_nested():
                _process_plans(conn, rt, good)
        except EVENT_ERRORS as batch_error:
            _raise_if_transient(batch_error)
            for plan in good:
                try:
                    with conn.begin_nested():
                        _process_plans(conn, rt, [plan])
                except EVENT_ERRORS as exc:
                    _raise_if_transient(exc)
                    plan.fail(st.describe_error(exc), retryable=True)
        _record_outcomes(conn, plans, time.time())
        return bool(rows)


def intake_stall(backlog: st.Backlog, limit: float, now: float | None = None) -> str | None:
    """Why the intake counts as stuck (its oldest waiting event older than `limit` seconds), or None. The age of
    the backlog catches every cause at once: a dead loop, a store that refuses writes, an event failing again."""
    now = time.time() if now is None else now
    if backlog.oldest_received_at is None or now - backlog.oldest_received_at <= limit:
        return None
    why = f"; it failed {backlog.oldest_attempts} time(s): {backlog.oldest_error}" if backlog.oldest_error else ""
    return (f"intake stalled: {backlog.count} event(s) unprocessed, the oldest (event {backlog.oldest_id}) "
            f"received {now - backlog.oldest_received_at:.0f}s ago (limit {limit:g}s){why}")


def _raise_if_transient(error: Exception) -> None:
    if isinstance(error, DBAPIError) and st.is_transient(error):
        raise error


def _record_outcomes(conn: Connection, plans: list[_Plan], now: float) -> None:
    """Each event's progress (processed once all its alerts are), in one statement for the events that went well;
    a failed event's error and attempts (quarantined on its last attempt)."""
    done = []
    for plan in plans:
        row = plan.row
        if plan.error is None:
            progress = row.progress + len(plan.chunk)
            finished = progress >= len(plan.parsed.alerts)
            done.append({"event": row.id, "new_progress": progress, "finished_at": now if finished else None,
                         "new_attempts": row.attempts + (1 if finished else 0)})
            continue
        if plan.quarantine:
            st.record_audit(conn, "engine", "event_failed", None, event_id=row.id, error=plan.error,
                            attempts=row.attempts + 1, progress=row.progress)
        conn.execute(update(st.events).where(st.events.c.id == row.id).values(
            processed_at=now if plan.quarantine else None, error=plan.error, attempts=row.attempts + 1))
    if done:
        conn.execute(update(st.events).where(st.events.c.id == bindparam("event")).values(
            progress=bindparam("new_progress"), processed_at=bindparam("finished_at"), error=None,
            attempts=bindparam("new_attempts")), done)


def _process_plans(conn: Connection, rt: Runtime, plans: list[_Plan]) -> None:
    for plan in plans:
        if plan.row.progress == 0 and plan.parsed.truncated_alerts:
            st.record_audit(conn, "alertmanager", "alerts_truncated", None, event_id=plan.row.id,
                            truncated=plan.parsed.truncated_alerts,
                            note="Alertmanager max_alerts dropped alerts from this notification")
    alerts = [a for plan in plans for a in plan.chunk]
    event_ids = [plan.row.id for plan in plans for _ in plan.chunk]
    process_alerts(conn, rt, alerts, actor="alertmanager", origin="alertmanager", event_ids=event_ids)


def process_alerts(conn: Connection, rt: Runtime, alerts: list[Alert], actor: str, origin: str,
                   event_ids: list[int] | None = None, now: float | None = None) -> IntakeResult:
    """Record the alerts' episodes and start, find or cancel their workflows (in the caller's transaction)."""
    now = time.time() if now is None else now
    result = IntakeResult()
    if not alerts:
        return result
    _record_episodes(conn, rt, alerts, event_ids or [None] * len(alerts), now)
    known = _workflows_of(conn, alerts)
    wanted: list[tuple[Playbook, Alert]] = []  # workflows to start, created together (see _start_workflows)

    def start_wanted() -> None:
        for (playbook, alert), created in zip(wanted, _start_workflows(conn, rt, wanted, actor, origin, now, result)):
            if created:
                known.setdefault((alert.fingerprint, alert.starts_at), []).append(
                    (playbook.name, created, wf.PENDING_APPROVAL))
        wanted.clear()

    starting: set[tuple[str, str, str]] = set()  # (playbook, fingerprint, starts_at) in `wanted`
    for alert in alerts:
        key = (alert.fingerprint, alert.starts_at)
        if alert.status == "resolved":
            if any(entry[1:] == key for entry in starting):  # it cancels what the same batch starts
                start_wanted()
                starting.clear()
            _on_resolved(conn, alert, actor, result, known.get(key, []))
            continue
        matched = [p for p in rt.playbooks.values() if p.matches(alert.labels, alert.annotations)]
        if not matched:
            result.unmatched += 1
        for playbook in matched:
            if (playbook.name, *key) in starting or any(name == playbook.name for name, _, _ in known.get(key, [])):
                result.duplicates += 1
                continue
            wanted.append((playbook, alert))
            starting.add((playbook.name, *key))
    start_wanted()
    return result


def _workflows_of(conn: Connection, alerts: list[Alert]) -> dict[tuple[str, str], list[tuple[str, str, str]]]:
    """(fingerprint, starts_at) -> [(playbook, workflow id, state)] for the alerts' episodes, in bulk."""
    fingerprints = sorted({a.fingerprint for a in alerts})
    wanted = {(a.fingerprint, a.starts_at) for a in alerts}
    found: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for start in range(0, len(fingerprints), 500):
        rows = conn.execute(select(st.workflows.c.fingerprint, st.workflows.c.starts_at, st.workflows.c.playbook,
                                   st.workflows.c.id, st.workflows.c.state)
                            .where(st.workflows.c.fingerprint.in_(fingerprints[start:start + 500]))).all()
        for row in rows:
            if (row.fingerprint, row.starts_at) in wanted:
                found.setdefault((row.fingerprint, row.starts_at), []).append((row.playbook, row.id, row.state))
    return found


def _record_episodes(conn: Connection, rt: Runtime, alerts: list[Alert], event_ids: list[int | None],
                     now: float) -> None:
    rows = [{"fingerprint": a.fingerprint, "starts_at": a.starts_at, "alertname": a.labels.get("alertname", ""),
             "labels": st.dumps(a.labels), "annotations": st.dumps(a.annotations), "first_event_id": event_id,
             "first_seen": now, "deliveries": 1, "generator_url": a.generator_url,
             "resolved_at": now if a.status == "resolved" else None,
             "ends_at": a.ends_at if a.status == "resolved" else None} for a, event_id in zip(alerts, event_ids)]
    if rt.store.dialect in ("sqlite", "postgresql"):
        if rt.store.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        statement = dialect_insert(st.episodes)
        statement = statement.on_conflict_do_update(index_elements=["fingerprint", "starts_at"], set_={
            "deliveries": st.episodes.c.deliveries + 1,
            "resolved_at": func.coalesce(statement.excluded.resolved_at, st.episodes.c.resolved_at),
            "ends_at": func.coalesce(statement.excluded.ends_at, st.episodes.c.ends_at)})
        conn.execute(statement, rows)
        return
    for row in rows:
        if not _insert_ignore(conn, st.episodes, rt.store.dialect, **row):
            values = {"deliveries": st.episodes.c.deliveries + 1}
            if row["resolved_at"] is not None:
                values.update(resolved_at=row["resolved_at"], ends_at=row["ends_at"])
            conn.execute(update(st.episodes).where(st.episodes.c.fingerprint == row["fingerprint"],
                                                   st.episodes.c.starts_at == row["starts_at"]).values(**values))


def _on_resolved(conn: Connection, alert: Alert, actor: str, result: IntakeResult,
                 known: list[tuple[str, str, str]]) -> None:
    """A resolved alert never acts: it cancels workflows still waiting for approval and is recorded on the others."""
    for _, workflow_id, _ in known:
        state = conn.execute(select(st.workflows.c.state).where(st.workflows.c.id == workflow_id)).scalar_one()
        if state == wf.PENDING_APPROVAL:
            wf.transition(conn, workflow_id, wf.CANCELLED, actor, "alert resolved before approval")
            result.cancelled.append(workflow_id)
        elif state not in wf.FINAL_STATES:
            st.record_audit(conn, actor, "alert_resolved", workflow_id, state=state, ends_at=alert.ends_at,
                            note="alert resolved while the workflow runs; its verify steps decide")


def _start_workflow(conn: Connection, rt: Runtime, playbook: Playbook, alert: Alert, actor: str, origin: str,
                    now: float, result: IntakeResult) -> str | None:
    """Create the workflow of one episode unless its series is cooling down; returns its id."""
    return _start_workflows(conn, rt, [(playbook, alert)], actor, origin, now, result)[0]


def _start_workflows(conn: Connection, rt: Runtime, wanted: list[tuple[Playbook, Alert]], actor: str, origin: str,
                     now: float, result: IntakeResult) -> list[str | None]:
    """Create the workflows of episodes (one per (playbook, alert), none of them existing yet) unless their series
    is cooling down; returns each one's id, or None. A handful of statements for the whole batch, whatever its
    size: the cooldown lookup, then one multi-row INSERT per table (workflows, steps, audit, notifications). A
    workflow started earlier in the batch puts its series in cooldown for those after it, as one at a time would."""
    if not wanted:
        return []
    series = [playbook.series_key(alert.labels) for playbook, alert in wanted]
    recent = _recent_by_series(conn, wanted, series, now)
    audits: list[dict] = []
    rows: list[dict] = []
    ids: list[str | None] = []
    policies: dict[str, tuple[str, str, str] | None] = {}  # workflow id -> (actor, reason, decided_by) approving it
    suppressed_by: dict[int, str] = {}  # index in `wanted` -> the workflow whose cooldown suppresses it
    for (playbook, alert), series_key in zip(wanted, series):
        if (playbook.name, series_key) in recent:
            suppressed_by[len(ids)] = recent[(playbook.name, series_key)]
            ids.append(None)
            continue
        workflow_id = uuid.uuid4().hex[:12]
        recent[(playbook.name, series_key)] = workflow_id
        ids.append(workflow_id)
        dry_run = rt.dry_run or playbook.dry_run
        # Dry-run workflows change nothing, so there is nothing to approve: they run at once and record the plan.
        policies[workflow_id] = (
            ("policy:dry-run", "dry run: no side effects", "policy:dry-run") if dry_run else
            ("policy:no-approval-required", f"playbook {playbook.name} does not require approval", "policy")
            if not playbook.approval.required else None)
        rows.append(dict(
            id=workflow_id, playbook=playbook.name, state=wf.PENDING_APPROVAL, phase="main",
            dry_run=dry_run, optimization_level=playbook.optimization_level,
            fingerprint=alert.fingerprint, starts_at=alert.starts_at, alertname=alert.labels.get("alertname", ""),
            instance=alert.labels.get("instance", ""), series_key=series_key, labels=st.dumps(alert.labels),
            annotations=st.dumps(alert.annotations), origin=origin, created_at=now, updated_at=now, context="{}",
            decided_by=None, reason=None))
        if policies[workflow_id] is not None:  # created approved: the transition's own records follow below
            rows[-1].update(state=wf.APPROVED, reason=policies[workflow_id][1], decided_by=policies[workflow_id][2])
    inserted = _insert_workflows(conn, rt.store.dialect, rows)
    steps: list[dict] = []
    notifications: list[dict] = []
    by_id = {row["id"]: row for row in rows}
    for index, ((playbook, alert), workflow_id, series_key) in enumerate(zip(wanted, ids, series)):
        if index in suppressed_by:
            audits.append(st.audit_row(actor, "suppressed_by_cooldown", suppressed_by[index], playbook=playbook.name,
                                       series=series_key, fingerprint=alert.fingerprint, starts_at=alert.starts_at,
                                       cooldown_seconds=playbook.cooldown))
            result.suppressed += 1
            continue
        if workflow_id not in inserted:  # another writer got there first (only without serialized writers)
            result.duplicates += 1
            ids[index] = None
            continue
        row = by_id[workflow_id]
        steps += [{"workflow_id": workflow_id, "idx": i, "name": step.name, "type": step.type,
                   "state": wf.STEP_PENDING, "attempts": 0, "output": "{}"} for i, step in enumerate(playbook.steps)]
        audits.append(st.audit_row(actor, "workflow_created", workflow_id, playbook=playbook.name,
                                   alertname=row["alertname"], fingerprint=alert.fingerprint,
                                   starts_at=alert.starts_at, generator_url=alert.generator_url,
                                   dry_run=row["dry_run"], origin=origin))
        if policies[workflow_id] is not None:
            actor_of, reason, _ = policies[workflow_id]
            audit, note = wf.transition_records(workflow_id, playbook.name, wf.PENDING_APPROVAL, wf.APPROVED,
                                                actor_of, reason, now)
            audits.append(audit)
            notifications.append(note)
        else:  # approvers learn of it now, not only once someone has decided
            notifications.append(wf.notification(
                workflow_id, playbook.name, None, wf.PENDING_APPROVAL, actor, "waiting for approval", now,
                alertname=row["alertname"], instance=row["instance"],
                optimization_level=playbook.optimization_level, origin=origin,
                approval_timeout_seconds=playbook.approval.timeout))
        result.created.append(workflow_id)
    for table, values in ((st.steps, steps), (st.audit, audits), (st.notifications, notifications)):
        if values:
            conn.execute(insert(table), values)
    return ids


def _recent_by_series(conn: Connection, wanted: list[tuple[Playbook, Alert]], series: list[str],
                      now: float) -> dict[tuple[str, str], str]:
    """(playbook, series key) -> a workflow of that series created within the playbook's cooldown and not
    rejected or cancelled, for the series of `wanted`, in bulk."""
    cooldowns = {playbook.name: playbook.cooldown for playbook, _ in wanted}
    keys = {(playbook.name, key) for (playbook, _), key in zip(wanted, series)}
    names, values = sorted(cooldowns), sorted(set(series))
    found: dict[tuple[str, str], str] = {}
    for start in range(0, len(values), 500):
        rows = conn.execute(select(st.workflows.c.playbook, st.workflows.c.series_key, st.workflows.c.id,
                                   st.workflows.c.created_at).where(and_(
            st.workflows.c.playbook.in_(names), st.workflows.c.series_key.in_(values[start:start + 500]),
            st.workflows.c.created_at >= now - max(cooldowns.values()),
            st.workflows.c.state.notin_([wf.REJECTED, wf.CANCELLED])))).all()
        for row in rows:
            key = (row.playbook, row.series_key)
            if key in keys and row.created_at >= now - cooldowns[row.playbook]:
                found.setdefault(key, row.id)
    return found


def _insert_workflows(conn: Connection, dialect: str, rows: list[dict]) -> set[str]:
    """Insert workflows unless an episode's unique key already holds one; the ids inserted."""
    if not rows:
        return set()
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        statement = dialect_insert(st.workflows).on_conflict_do_nothing().returning(st.workflows.c.id)
        return set(conn.execute(statement, rows).scalars().all())
    return {row["id"] for row in rows if _insert_ignore(conn, st.workflows, dialect, **row)}


def expire_approvals(rt: Runtime, now: float | None = None) -> list[str]:
    """Cancel workflows that waited for approval longer than their playbook allows (a playbook no longer loaded
    allows none). Only workflows old enough to have expired are read, and the write lock is taken only when there
    are some: this runs every few seconds in every receiver, next to the acknowledgements, while thousands of
    workflows may wait for approval."""
    now = time.time() if now is None else now
    known = {name: p.approval.timeout for name, p in rt.playbooks.items()}
    pending = st.workflows.c.state == wf.PENDING_APPROVAL
    old_enough = st.workflows.c.created_at < now - min(known.values(), default=0.0)
    if known:
        old_enough = old_enough | st.workflows.c.playbook.notin_(list(known))
    query = select(st.workflows.c.id, st.workflows.c.playbook, st.workflows.c.created_at).where(pending, old_enough)
    with rt.store.read() as conn:
        if conn.execute(query.limit(1)).first() is None:
            return []
    expired = []
    with rt.store.write() as conn:
        for row in conn.execute(query).all():
            if now - row.created_at > known.get(row.playbook, 0.0):
                wf.transition(conn, row.id, wf.CANCELLED, "policy:approval-timeout",
                              f"not approved within {known.get(row.playbook, 0.0):.0f}s")
                expired.append(row.id)
    return expired
