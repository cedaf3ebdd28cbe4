"""The workflow state machine (the seeds' states, plus CANCELLED) and the decisions operators take on it.

    PENDING_APPROVAL ─approve─► APPROVED ─executor─► IN_PROGRESS ─► COMPLETED
          │                                              └──────► FAILED ─rollback ran─► ROLLED_BACK
          ├─reject─► REJECTED
          └─alert resolved / approval timed out─► CANCELLED

CANCELLED is ours: the seeds had no word for "the alert went away before anyone approved" and REJECTED would
claim a person decided. Every transition is one conditional UPDATE (the row must still be in the state it was
read in) plus an audit row and an outbox row, in the caller's transaction.
"""
from __future__ import annotations

import time

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from rules_engine.playbooks import store as st
from rules_engine.spec.times import rfc3339

PENDING_APPROVAL = "PENDING_APPROVAL"
APPROVED = "APPROVED"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
ROLLED_BACK = "ROLLED_BACK"
REJECTED = "REJECTED"
CANCELLED = "CANCELLED"
STATES = (PENDING_APPROVAL, APPROVED, IN_PROGRESS, COMPLETED, FAILED, ROLLED_BACK, REJECTED, CANCELLED)

TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING_APPROVAL: frozenset({APPROVED, REJECTED, CANCELLED}),
    APPROVED: frozenset({IN_PROGRESS}),
    IN_PROGRESS: frozenset({COMPLETED, FAILED}),
    FAILED: frozenset({ROLLED_BACK}),
    COMPLETED: frozenset(),
    ROLLED_BACK: frozenset(),
    REJECTED: frozenset(),
    CANCELLED: frozenset(),
}
FINAL_STATES = frozenset({COMPLETED, ROLLED_BACK, REJECTED, CANCELLED})

# Step states.
STEP_PENDING, STEP_RUNNING, STEP_SUCCEEDED, STEP_FAILED, STEP_SKIPPED = (
    "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "SKIPPED")


class TransitionError(ValueError):
    """A transition the state machine does not allow, or a workflow that changed state meanwhile."""


class NotFound(LookupError):
    pass


def transition(conn: Connection, workflow_id: str, to_state: str, actor: str, reason: str = "",
               decided_by: str | None = None, **columns) -> str:
    """Move a workflow to `to_state`; returns the state it left. Raises TransitionError if not allowed."""
    row = conn.execute(select(st.workflows.c.state, st.workflows.c.playbook)
                       .where(st.workflows.c.id == workflow_id)).first()
    if row is None:
        raise NotFound(f"no workflow {workflow_id!r}")
    from_state = row.state
    if to_state not in TRANSITIONS[from_state]:
        raise TransitionError(f"workflow {workflow_id} is {from_state}; it cannot become {to_state} "
                              f"(allowed: {sorted(TRANSITIONS[from_state]) or 'none, it is final'})")
    now = time.time()
    values = {"state": to_state, "updated_at": now, **columns}
    if reason:
        values["reason"] = reason
    if decided_by is not None:
        values["decided_by"] = decided_by
    if to_state in FINAL_STATES:
        values.update(phase="done", lease_owner=None, lease_until=None)
    changed = conn.execute(update(st.workflows).where(st.workflows.c.id == workflow_id,
                                                      st.workflows.c.state == from_state).values(**values)).rowcount
    if changed != 1:
        raise TransitionError(f"workflow {workflow_id} changed state concurrently; retry")
    audit, note = transition_records(workflow_id, row.playbook, from_state, to_state, actor, reason, now)
    conn.execute(insert(st.audit).values(**audit))
    conn.execute(insert(st.notifications).values(**note))
    return from_state


def transition_records(workflow_id: str, playbook: str, from_state: str, to_state: str, actor: str, reason: str,
                       now: float) -> tuple[dict, dict]:
    """The audit row and the outbox row of a transition (written by transition(); the intake writes them itself
    for the workflows it creates already approved, many in one statement)."""
    return (st.audit_row(actor, "transition", workflow_id, from_state=from_state, to_state=to_state, reason=reason),
            notification(workflow_id, playbook, from_state, to_state, actor, reason, now))


def notify(conn: Connection, workflow_id: str, playbook: str, from_state: str | None, to_state: str, actor: str,
           reason: str, now: float, **extra) -> None:
    """Queue the outbound notification of a state change (the outbox: delivered after the commit, with retries by
    rules_engine.playbooks.notify). `from_state` is None for a workflow created waiting for approval."""
    conn.execute(insert(st.notifications).values(**notification(workflow_id, playbook, from_state, to_state, actor,
                                                                reason, now, **extra)))


def notification(workflow_id: str, playbook: str, from_state: str | None, to_state: str, actor: str, reason: str,
                 now: float, **extra) -> dict:
    """The outbox row of a state change (see notify)."""
    return {"at": now, "workflow_id": workflow_id, "body": st.dumps({
        "workflow_id": workflow_id, "playbook": playbook, "from_state": from_state, "to_state": to_state,
        "actor": actor, "reason": reason, "at": rfc3339(now, "us"), **extra})}


def approve(store: st.Store, workflow_id: str, actor: str, comment: str = "") -> st.Workflow:
    with store.write() as conn:
        transition(conn, workflow_id, APPROVED, actor, comment or "approved", decided_by=actor)
        return st.get_workflow(conn, workflow_id)


def reject(store: st.Store, workflow_id: str, actor: str, reason: str = "") -> st.Workflow:
    with store.write() as conn:
        transition(conn, workflow_id, REJECTED, actor, reason or "rejected", decided_by=actor)
        return st.get_workflow(conn, workflow_id)
