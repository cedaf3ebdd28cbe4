"""Running approved workflows: claim under a lease, run steps in order, record each, roll back on failure.

Crash safety rests on the step records: a step is marked RUNNING (committed) before it starts and SUCCEEDED or
FAILED (committed) after. A workflow whose owner stops renewing its lease is claimed again and resumed:
SUCCEEDED steps are never run again; a step found RUNNING was interrupted, and it is re-run only when its type
declares that harmless (`rerun_safe`: read-only recommend/verify, a rollback step; an http step marked `idempotent`)
with the reason recorded; otherwise it is marked FAILED ("outcome unknown") and the workflow fails into its rollback.
Which function runs a step type is said once, in HANDLERS.

Whatever goes wrong while a workflow runs (a template, Prometheus, the orchestrator, a bug in a handler) ends it in
FAILED with the reason in the audit log, never left IN_PROGRESS for the next owner to trip over again; and a
workflow resumed `Runtime.max_resumes` times without progress (its owners keep dying on it) is failed too.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import statistics
import threading
import time
from typing import Any, Callable

from sqlalchemy import and_, func, or_, select, update

from rules_engine.playbooks import outbound
from rules_engine.playbooks import store as st
from rules_engine.playbooks import workflow as wf
from rules_engine.playbooks.recommend import current_settings, recommend
from rules_engine.playbooks.runtime import Runtime
from rules_engine.playbooks.targets import target_problem
from rules_engine.playbooks.templates import (RenderError, render_promql, render_structure, render_text, render_url,
                                              template_variables, unset_variables)
from rules_engine.source.base import SourceError
from rules_engine.spec.playbook import (CanaryStep, HttpStep, Playbook, RecommendStep, RollbackStep, RolloutStep,
                                        StepBase, VerifyStep)
from rules_engine.spec.times import rfc3339

log = logging.getLogger(__name__)
# Audit actions that mean a workflow moved on; "resumed" entries after the last of them count against max_resumes.
PROGRESS_ACTIONS = frozenset({"step_succeeded", "step_failed", "transition", "baselines_captured"})
REFUSED_PAUSE = 0.2  # seconds before retrying a connection that was refused (doubling): quick, nothing was sent


class LeaseLost(RuntimeError):
    """Another process took the workflow over (our lease expired); stop touching it."""


class Interrupted(RuntimeError):
    """The engine is shutting down; the current step stays RUNNING and is resumed after restart."""


def claim_next(rt: Runtime, now: float | None = None) -> str | None:
    """Claim one runnable workflow: APPROVED within its playbook's concurrency limit, or one whose lease expired
    (IN_PROGRESS, or FAILED with its rollback unfinished). Returns its id."""
    now = time.time() if now is None else now
    expired = or_(st.workflows.c.lease_until.is_(None), st.workflows.c.lease_until < now)
    runnable = (select(st.workflows.c.id, st.workflows.c.playbook, st.workflows.c.state, st.workflows.c.lease_owner)
                .where(or_(st.workflows.c.state == wf.APPROVED,
                           and_(st.workflows.c.state == wf.IN_PROGRESS, expired),
                           and_(st.workflows.c.state == wf.FAILED, st.workflows.c.phase == "rollback", expired)))
                .order_by(st.workflows.c.updated_at).limit(50))
    with rt.store.read() as conn:  # polling must not take the write lock when there is nothing to do
        if conn.execute(runnable.limit(1)).first() is None:
            return None
    with rt.store.write() as conn:
        candidates = conn.execute(runnable).all()
        if not candidates:
            return None
        running = dict(conn.execute(
            select(st.workflows.c.playbook, func.count()).where(
                st.workflows.c.state == wf.IN_PROGRESS, st.workflows.c.lease_until >= now)
            .group_by(st.workflows.c.playbook)).all())
        for row in candidates:
            playbook = rt.playbooks.get(row.playbook)
            lease = {"lease_owner": rt.owner, "lease_until": now + rt.lease_seconds}
            if row.state == wf.APPROVED:
                if playbook is not None and running.get(row.playbook, 0) >= playbook.max_concurrent:
                    continue  # stays APPROVED (queued) until a slot frees
                wf.transition(conn, row.id, wf.IN_PROGRESS, f"executor:{rt.owner}", "execution started", **lease)
                return row.id
            took = conn.execute(update(st.workflows).where(st.workflows.c.id == row.id, expired,
                                                           st.workflows.c.state == row.state)
                                .values(updated_at=now, **lease)).rowcount
            if took == 1:
                st.record_audit(conn, f"executor:{rt.owner}", "resumed", row.id, state=row.state,
                                previous_owner=row.lease_owner, note="lease expired: previous owner stopped")
                return row.id
    return None


def _renew(rt: Runtime, workflow_id: str) -> None:
    with rt.store.write() as conn:
        owned = conn.execute(update(st.workflows).where(st.workflows.c.id == workflow_id,
                                                        st.workflows.c.lease_owner == rt.owner)
                             .values(lease_until=time.time() + rt.lease_seconds)).rowcount
    if owned != 1:
        raise LeaseLost(f"workflow {workflow_id}: lease taken over by another process")


@contextlib.contextmanager
def _heartbeat(rt: Runtime, workflow_id: str):
    """Renew the lease while a step runs, so a slow call is not mistaken for a dead owner and taken over."""
    done = threading.Event()

    def beat():
        while not done.wait(max(rt.lease_seconds / 3, 0.05)):
            try:
                _renew(rt, workflow_id)
            except Exception:  # lost or store unavailable: the step's own commit will notice
                return

    thread = threading.Thread(target=beat, name=f"lease-{workflow_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(5)


def release(rt: Runtime, workflow_id: str) -> None:
    """Give the lease up at shutdown, so a restarted engine resumes the workflow at once instead of after expiry."""
    with rt.store.write() as conn:
        conn.execute(update(st.workflows).where(st.workflows.c.id == workflow_id,
                                                st.workflows.c.lease_owner == rt.owner)
                     .values(lease_until=0.0))


def _wait(rt: Runtime, workflow_id: str, seconds: float) -> None:
    """Sleep `seconds`, renewing the lease, waking early (Interrupted) on shutdown."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        if rt.stop.wait(min(left, max(rt.lease_seconds / 3, 0.05))):
            raise Interrupted("engine stopping")
        _renew(rt, workflow_id)


def template_context(rt: Runtime, workflow: st.Workflow, playbook: Playbook) -> dict[str, Any]:
    outputs = {s.name: s.output for s in workflow.steps if s.state == wf.STEP_SUCCEEDED}
    recommendation = next((s.output for s in reversed(workflow.steps)
                           if s.type == "recommend" and s.state == wf.STEP_SUCCEEDED), {})
    return {
        "labels": workflow.labels, "annotations": workflow.annotations,
        "alert": {"fingerprint": workflow.fingerprint, "starts_at": workflow.starts_at,
                  "alertname": workflow.alertname, "instance": workflow.instance},
        "workflow": {"id": workflow.id, "playbook": workflow.playbook, "dry_run": workflow.dry_run},
        "playbook": {"name": playbook.name, "optimization_level": playbook.optimization_level,
                     "risk": playbook.risk, "server_kind": playbook.server_kind},
        "vars": template_variables(rt.variables, workflow.dry_run), "steps": outputs, "recommendation": recommendation,
        "baselines": workflow.context.get("baselines", {}),
    }


def run_workflow(rt: Runtime, workflow_id: str) -> str:
    """Run (or resume) a claimed workflow to a final state or to FAILED; returns the state it ends in."""
    with rt.store.read() as conn:
        workflow = st.get_workflow(conn, workflow_id)
        resumes = _resumes_without_progress(conn, workflow_id)
    playbook = rt.playbooks.get(workflow.playbook)
    try:
        if resumes > rt.max_resumes:
            return _give_up(rt, workflow, playbook, f"resumed {resumes} times without progress (its owners stopped "
                                                    f"each time: a step that crashes the engine?); given up")
        return _run(rt, workflow, playbook)
    except (Interrupted, LeaseLost):
        raise
    except Exception as error:  # left IN_PROGRESS it would be resumed, and fail the same way, every lease period
        log.exception("workflow %s", workflow_id)
        return _give_up(rt, workflow, playbook, f"executor error: {type(error).__name__}: {error}")


def _resumes_without_progress(conn, workflow_id: str) -> int:
    count = 0
    for entry in reversed(st.audit_entries(conn, workflow_id)):
        if entry["action"] in PROGRESS_ACTIONS:
            break
        count += entry["action"] == "resumed"
    return count


def _give_up(rt: Runtime, workflow: st.Workflow, playbook: Playbook | None, reason: str) -> str:
    """End a workflow the executor cannot carry on: FAILED (and its rollback, if a change may have been made), or,
    when it was already rolling back, FAILED with a request to act by hand."""
    with rt.store.read() as conn:
        current = st.get_workflow(conn, workflow.id)
    if current.state in wf.FINAL_STATES:  # it ended before the error (e.g. while recording the end)
        return current.state
    if current.state != wf.FAILED:
        return _fail(rt, current, playbook, reason)
    _abandon_rollback(rt, workflow.id, reason)
    return wf.FAILED


def _run(rt: Runtime, workflow: st.Workflow, playbook: Playbook | None) -> str:
    if playbook is None:
        return _fail(rt, workflow, None, f"playbook {workflow.playbook!r} is not loaded")
    if [(r.name, r.type) for r in workflow.steps] != [(s.name, s.type) for s in playbook.steps]:
        # The playbook was edited after this workflow was created: its recorded steps are the plan that was
        # approved, and running another one under that approval would be wrong.
        return _fail(rt, workflow, None, f"playbook {workflow.playbook!r} changed since the workflow was created; "
                                         "its steps no longer match the approved plan")
    if workflow.state == wf.FAILED and workflow.phase == "rollback":
        return _rollback(rt, workflow, playbook)
    missing = _capture_baselines(rt, workflow, playbook)
    if missing:
        return _fail(rt, workflow, playbook, missing)
    for record, step in zip(workflow.steps, playbook.steps):
        if isinstance(step, RollbackStep) or record.state in (wf.STEP_SUCCEEDED, wf.STEP_SKIPPED):
            continue
        if record.state == wf.STEP_PENDING and not step.applies_to(workflow.labels):
            with rt.store.write() as conn:
                st.update_step(conn, workflow.id, record.idx, state=wf.STEP_SKIPPED,
                               note=f"not for this alert (when: {step.when})")
            record.state = wf.STEP_SKIPPED
            continue
        if (step.type == "rollout" and record.state == wf.STEP_PENDING
                and playbook.on_resolved == "abort_before_rollout" and _resolved(rt, workflow)):
            return _fail(rt, workflow, playbook, "the alert resolved before the rollout; aborted "
                                                 "(on_resolved: abort_before_rollout)")
        if record.state == wf.STEP_FAILED:  # crashed between the step failing and the workflow failing
            return _fail(rt, workflow, playbook, f"step {step.name} failed: {record.note}")
        if record.state == wf.STEP_RUNNING:
            if not step.safe_to_rerun():
                note = (f"interrupted while running (owner {workflow.lease_owner or '?'} stopped); the outcome is "
                        f"unknown and a non-idempotent {step.type} step is not re-run")
                with rt.store.write() as conn:
                    st.update_step(conn, workflow.id, record.idx, state=wf.STEP_FAILED, finished_at=time.time(),
                                   note=note)
                    st.record_audit(conn, f"executor:{rt.owner}", "step_interrupted", workflow.id, step=step.name)
                record.state, record.note = wf.STEP_FAILED, note
                return _fail(rt, workflow, playbook, f"step {step.name}: {note}")
            with rt.store.write() as conn:
                st.record_audit(conn, f"executor:{rt.owner}", "step_rerun", workflow.id, step=step.name,
                                reason=f"interrupted while running; a {step.type} step "
                                       f"{'is idempotent' if step.mutates else 'only reads'}, so it is run again")
        ok = _run_recorded(rt, workflow, playbook, record, step)
        if not ok:
            return _fail(rt, workflow, playbook, f"step {step.name} failed: {record.note}")
        if isinstance(step, RecommendStep) and not record.output.get("changes"):
            return _complete(rt, workflow, playbook, "nothing to change: " + (record.note or ""))
    return _complete(rt, workflow, playbook, "dry run recorded" if workflow.dry_run else "all steps succeeded")


def _resolved(rt: Runtime, workflow: st.Workflow) -> bool:
    with rt.store.read() as conn:
        resolved_at = conn.execute(select(st.episodes.c.resolved_at).where(
            st.episodes.c.fingerprint == workflow.fingerprint,
            st.episodes.c.starts_at == workflow.starts_at)).scalar_one_or_none()
    return resolved_at is not None


def _complete(rt: Runtime, workflow: st.Workflow, playbook: Playbook, reason: str) -> str:
    with rt.store.write() as conn:
        for record, step in zip(workflow.steps, playbook.steps):
            if record.state == wf.STEP_PENDING:
                st.update_step(conn, workflow.id, record.idx, state=wf.STEP_SKIPPED,
                               note="not needed: the workflow completed" if isinstance(step, RollbackStep)
                               else f"not run: {reason}")
        wf.transition(conn, workflow.id, wf.COMPLETED, f"executor:{rt.owner}", reason)
    return wf.COMPLETED


def _run_recorded(rt: Runtime, workflow: st.Workflow, playbook: Playbook, record: st.StepRecord, step) -> bool:
    started = time.time()
    with rt.store.write() as conn:
        owned = conn.execute(update(st.workflows).where(st.workflows.c.id == workflow.id,
                                                        st.workflows.c.lease_owner == rt.owner)
                             .values(lease_until=started + rt.lease_seconds, updated_at=started)).rowcount
        if owned != 1:
            raise LeaseLost(f"workflow {workflow.id}: lease taken over by another process")
        st.update_step(conn, workflow.id, record.idx, state=wf.STEP_RUNNING, started_at=started,
                       attempts=record.attempts + 1, finished_at=None)
    record.state, record.attempts = wf.STEP_RUNNING, record.attempts + 1
    context = template_context(rt, workflow, playbook)
    try:
        with _heartbeat(rt, workflow.id):
            ok, output, note = run_step(rt, workflow, playbook, step, context)
    except (Interrupted, LeaseLost):
        raise
    except Exception as error:  # a bug or an unexpected failure in one step must not wedge the workflow
        ok, output, note = False, {"error": f"{type(error).__name__}: {error}"}, f"{type(error).__name__}: {error}"
    finished = time.time()
    with rt.store.write() as conn:
        st.update_step(conn, workflow.id, record.idx, state=wf.STEP_SUCCEEDED if ok else wf.STEP_FAILED,
                       finished_at=finished, output=output, note=note)
        st.record_audit(conn, f"executor:{rt.owner}", "step_succeeded" if ok else "step_failed", workflow.id,
                        step=step.name, type=step.type, seconds=round(finished - started, 3), note=note,
                        dry_run=workflow.dry_run)
    record.state = wf.STEP_SUCCEEDED if ok else wf.STEP_FAILED
    record.output, record.note, record.started_at, record.finished_at = output, note, started, finished
    rt.observe_step(step.type, "success" if ok else "failure", finished - started)
    return ok


def _may_have_changed(record: st.StepRecord, step: StepBase) -> bool:
    """Whether a step may have changed the fleet: a mutating step that started, unless it failed before anything
    reached its target (a refused connection, a URL outside the targets, a template error)."""
    if not step.mutates or isinstance(step, RollbackStep) or record.state in (wf.STEP_PENDING, wf.STEP_SKIPPED):
        return False
    return not (record.state == wf.STEP_FAILED and record.output.get("sent") is False)


def _fail(rt: Runtime, workflow: st.Workflow, playbook: Playbook | None, reason: str) -> str:
    """FAILED; then, if a change may have been made, run the rollback steps."""
    steps = list(zip(workflow.steps, playbook.steps)) if playbook is not None else []
    changed = any(_may_have_changed(record, step) for record, step in steps)
    has_rollback = any(isinstance(step, RollbackStep) for step in playbook.steps) if playbook is not None else False
    if has_rollback and not changed and any(step.mutates and record.state == wf.STEP_FAILED for record, step in steps):
        reason += "; nothing reached the target, so there is nothing to roll back"
    phase = "rollback" if changed and has_rollback else "done"
    with rt.store.write() as conn:
        for record, step in steps:
            if record.state == wf.STEP_RUNNING and not isinstance(step, RollbackStep):
                st.update_step(conn, workflow.id, record.idx, state=wf.STEP_FAILED, finished_at=time.time(),
                               note=f"not finished: {reason}")
                record.state = wf.STEP_FAILED
        if workflow.state == wf.APPROVED:  # e.g. its playbook vanished before it started
            wf.transition(conn, workflow.id, wf.IN_PROGRESS, f"executor:{rt.owner}", "execution started")
        wf.transition(conn, workflow.id, wf.FAILED, f"executor:{rt.owner}", reason, phase=phase,
                      lease_owner=rt.owner if phase == "rollback" else None,
                      lease_until=time.time() + rt.lease_seconds if phase == "rollback" else None)
        if playbook is not None and phase == "done":
            for record, step in zip(workflow.steps, playbook.steps):
                if record.state == wf.STEP_PENDING:
                    st.update_step(conn, workflow.id, record.idx, state=wf.STEP_SKIPPED,
                                   note="not run: the workflow failed" + ("" if changed else " before any change"))
    workflow.state, workflow.phase = wf.FAILED, phase
    if phase == "rollback":
        return _rollback(rt, workflow, playbook)
    return wf.FAILED


def _rollback(rt: Runtime, workflow: st.Workflow, playbook: Playbook) -> str:
    with rt.store.read() as conn:
        workflow.steps = st.load_steps(conn, workflow.id)
        failure = st.get_workflow(conn, workflow.id, with_steps=False).reason
    for record, step in zip(workflow.steps, playbook.steps):
        if not isinstance(step, RollbackStep) or record.state in (wf.STEP_SUCCEEDED, wf.STEP_SKIPPED):
            continue
        if not step.applies_to(workflow.labels):
            continue
        if record.state in (wf.STEP_RUNNING, wf.STEP_FAILED):
            # Restoring the previous configuration twice is harmless; leaving a half-applied change is not.
            with rt.store.write() as conn:
                st.record_audit(conn, f"executor:{rt.owner}", "step_rerun", workflow.id, step=step.name,
                                reason=f"rollback step found {record.state} after an interruption; rollback is "
                                       "re-run because a half-applied change is worse than restoring twice")
        if not _run_recorded(rt, workflow, playbook, record, step):
            _abandon_rollback(rt, workflow.id, f"rollback step {step.name} failed: {record.note}")
            return wf.FAILED
    with rt.store.write() as conn:
        wf.transition(conn, workflow.id, wf.ROLLED_BACK, f"executor:{rt.owner}", f"rolled back after: {failure}")
        for record, step in zip(workflow.steps, playbook.steps):
            if record.state == wf.STEP_PENDING:
                st.update_step(conn, workflow.id, record.idx, state=wf.STEP_SKIPPED,
                               note="not run: the workflow failed and was rolled back")
    return wf.ROLLED_BACK


def _abandon_rollback(rt: Runtime, workflow_id: str, why: str) -> None:
    with rt.store.write() as conn:
        conn.execute(update(st.workflows).where(st.workflows.c.id == workflow_id)
                     .values(phase="done", lease_owner=None, lease_until=None, updated_at=time.time()))
        st.record_audit(conn, f"executor:{rt.owner}", "rollback_failed", workflow_id, reason=why,
                        note="rollback did not complete; the change may still be in place: act by hand")


def _capture_baselines(rt: Runtime, workflow: st.Workflow, playbook: Playbook) -> str | None:
    """Evaluate the query of every verify step that compares against a baseline, before any change is made.
    Kept in the workflow's context, so a resumed workflow compares against the same pre-change value.
    Returns why a baseline could not be taken (the workflow then fails before changing anything: its verify step
    could not judge the change), or None."""
    wanted = [s for s in playbook.steps
              if isinstance(s, VerifyStep) and s.improvement is not None and s.applies_to(workflow.labels)]
    baselines = dict(workflow.context.get("baselines", {}))
    missing = [s for s in wanted if s.name not in baselines]
    if not missing:
        return None
    context = template_context(rt, workflow, playbook)
    for step in missing:
        try:
            query = render_promql(step.query, context, f"steps.{step.name}.query")
        except RenderError as error:
            return f"baseline of verify step {step.name}: {error}"
        if workflow.dry_run or rt.prometheus is None:
            baselines[step.name] = {"query": query, "value": None,
                                    "note": "dry run" if workflow.dry_run else "no Prometheus configured"}
            continue
        try:
            value = _reduce(_values_now(rt, query), step.reduce)
            baselines[step.name] = {"query": query, "value": value, "at": rfc3339(time.time(), "us")}
        except Exception as error:  # Prometheus down or answering nonsense: the same verdict, not a wedged workflow
            return f"baseline of verify step {step.name}: {type(error).__name__}: {error}"
    workflow.context["baselines"] = baselines
    with rt.store.write() as conn:
        conn.execute(update(st.workflows).where(st.workflows.c.id == workflow.id)
                     .values(context=st.dumps(workflow.context)))
        st.record_audit(conn, f"executor:{rt.owner}", "baselines_captured", workflow.id, baselines=baselines)
    return None


def _values_now(rt: Runtime, query: str) -> list[float]:
    """The query's values now. NaN (a ratio over no traffic: 0/0) counts as no data, like a missing series."""
    return [value for _, value in rt.prometheus.instant_query(query) if not math.isnan(value)]


def _reduce(values: list[float], how: str) -> float | None:
    if not values:
        return None
    return max(values) if how == "max" else min(values) if how == "min" else statistics.fmean(values)


def run_step(rt: Runtime, workflow: st.Workflow, playbook: Playbook, step: StepBase, context: dict
             ) -> tuple[bool, dict, str]:
    """Run one step; returns (ok, output, note). Side effects only outside dry-run."""
    handler = HANDLERS.get(type(step))
    if handler is None:
        raise ValueError(f"no handler for step type {step.type!r} ({type(step).__name__}): add one to "
                         "rules_engine.playbooks.executor.HANDLERS")
    return handler(rt, workflow, playbook, step, context)


def _recommend(rt: Runtime, workflow: st.Workflow, playbook: Playbook, step: RecommendStep, context: dict
               ) -> tuple[bool, dict, str]:
    kind = step.server_kind or playbook.server_kind
    exposed, source = current_settings(rt.prometheus, kind, workflow.instance)
    current = {**step.current, **exposed}
    bottleneck = step.bottleneck_by_alertname.get(workflow.alertname, step.bottleneck)
    output = recommend(kind, bottleneck, playbook.optimization_level, current)
    output["current_source"] = source
    if not output["changes"]:
        return True, output, "no change recommended: settings already at the limits for this level"
    return True, output, f"{len(output['changes'])} change(s): " + ", ".join(
        f"{d['knob']} {d['from']} -> {d['to']}" for d in output["details"])


def _http(rt: Runtime, workflow: st.Workflow, playbook: Playbook, step: HttpStep, context: dict
          ) -> tuple[bool, dict, str]:
    request = step.request
    context = {**context, "percent": getattr(step, "percent", 100)}
    where = f"steps.{step.name}.request"
    try:
        url = render_url(request.url, context, f"{where}.url")
        headers = {k: render_text(v, context, f"{where}.headers.{k}") for k, v in request.headers.items()}
        body = render_structure(request.json_body, context, f"{where}.json") if request.json_body is not None else None
        encoded = json.dumps(body).encode() if body is not None else None
    except (RenderError, TypeError, ValueError) as error:
        return False, {"error": str(error), "sent": False}, f"could not render the request: {error}"
    # Header values may carry credentials from `vars`; only their names are recorded.
    described = {"method": request.method, "url": url, "header_names": sorted(headers), "json": body}
    unset = unset_variables(url)
    if workflow.dry_run and unset:  # the plan is still worth showing; where it would go is not known yet
        return True, {"dry_run": True, "would_send": described, "unset": unset}, (
            f"dry run: would {request.method} {url} (unset: {', '.join(f'vars.{name}' for name in unset)})")
    problem = target_problem(url, rt.allowed_targets())
    if problem:
        return False, {**described, "error": problem, "sent": False}, f"{where}.url: {problem}; nothing was sent"
    if workflow.dry_run:
        return True, {"dry_run": True, "would_send": described}, f"dry run: would {request.method} {url}"
    if encoded is not None:
        headers.setdefault("Content-Type", "application/json")
    deadline = time.monotonic() + request.total_seconds()
    answers: list[outbound.Answer] = []
    for attempt in range(request.retries + 1):
        if attempt:
            # A refused connection changed nothing and costs nothing: retry soon. Anything else: back off.
            pause = outbound.backoff_pause(request.retry_backoff if answers[-1].sent
                                           else min(request.retry_backoff, REFUSED_PAUSE), attempt)
            if time.monotonic() + pause >= deadline:
                break
            if rt.stop.wait(pause):
                raise Interrupted("engine stopping")
        answer = outbound.send(request.method, url, encoded, headers,
                               min(request.timeout, deadline - time.monotonic()))
        answers.append(answer)
        if answer.status is None:
            continue
        output = {**described, "status": answer.status, "response": answer.body, "sent": True,
                  "attempts": [a.record() for a in answers]}
        if answer.status in request.expect_status:
            return True, output, f"{request.method} {url} -> {answer.status}"
        if answer.status < 500 and answer.status != 429:
            return False, output, f"{request.method} {url} -> {answer.status} (not retried)"
    sent = any(a.sent for a in answers)
    return False, {**described, "sent": sent, "attempts": [a.record() for a in answers]}, (
        f"{request.method} {url} failed after {len(answers)} attempt(s): {answers[-1].error or answers[-1].status}"
        + ("" if sent else "; nothing was sent"))


def _verify(rt: Runtime, workflow: st.Workflow, playbook: Playbook, step: VerifyStep, context: dict
            ) -> tuple[bool, dict, str]:
    try:
        query = render_promql(step.query, context, f"steps.{step.name}.query")
    except RenderError as error:
        return False, {"error": str(error)}, str(error)
    condition = ({"below": step.below} if step.below is not None else {"above": step.above}
                 if step.above is not None else {"improvement": step.improvement.model_dump()})
    if workflow.dry_run:
        return True, {"dry_run": True, "would_query": query, "after_seconds": step.delay, "condition": condition}, \
            f"dry run: would check {query} after {step.delay:.0f}s"
    if rt.prometheus is None:
        return False, {"query": query}, "no Prometheus configured: cannot verify"
    _wait(rt, workflow.id, step.delay)
    try:
        values = _values_now(rt, query)
    except SourceError as error:
        return False, {"query": query, "error": str(error)}, str(error)
    value = _reduce(values, step.reduce)
    output: dict[str, Any] = {"query": query, "value": value, "series": len(values), "condition": condition}
    if value is None:
        passed = step.on_no_data == "pass"
        return passed, output, f"no data for {query}; on_no_data={step.on_no_data}"
    if step.below is not None:
        passed = value < step.below
        return passed, {**output, "passed": passed}, f"{value:.6g} {'<' if passed else '>='} {step.below}"
    if step.above is not None:
        passed = value > step.above
        return passed, {**output, "passed": passed}, f"{value:.6g} {'>' if passed else '<='} {step.above}"
    baseline = context.get("baselines", {}).get(step.name, {}).get("value")
    if baseline is None:
        return False, {**output, "baseline": None}, "no pre-change baseline was captured: cannot judge improvement"
    improvement = step.improvement
    change = (baseline - value) if improvement.direction == "decrease" else (value - baseline)
    percent = 100.0 * change / abs(baseline) if baseline else (100.0 if change > 0 else 0.0)
    passed = percent >= improvement.percent
    return passed, {**output, "baseline": baseline, "improvement_percent": round(percent, 3), "passed": passed}, (
        f"{improvement.direction} of {percent:.1f}% vs baseline {baseline:.6g} "
        f"({'>=' if passed else '<'} {improvement.percent}% required)")


# One handler per step model (exact type: CanaryStep is an HttpStep, but says so here rather than by inheritance).
StepHandler = Callable[[Runtime, st.Workflow, Playbook, Any, dict], tuple[bool, dict, str]]
HANDLERS: dict[type[StepBase], StepHandler] = {
    RecommendStep: _recommend,
    HttpStep: _http, CanaryStep: _http, RolloutStep: _http, RollbackStep: _http,
    VerifyStep: _verify,
}
