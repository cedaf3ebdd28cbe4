"""The Flask application: a thin HTTP layer over rules_engine.playbooks.

`create_app(config)` builds one application with its own store, metrics registry and (optionally) background
runner; nothing lives in module globals, so tests and several WSGI workers each get an independent instance.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from rules_engine.playbooks import store as st
from rules_engine.playbooks import workflow as wf
from rules_engine.playbooks.intake import intake_stall
from rules_engine.playbooks.notify import RetryPolicy
from rules_engine.playbooks.payload import PayloadError, parse_payload
from rules_engine.playbooks.runner import Runner
from rules_engine.playbooks.runtime import Runtime, load_playbooks
from rules_engine.server import inputs
from rules_engine.server.config import Credentials, Principal, ServerConfig, prometheus_client
from rules_engine.server.metrics import EngineMetrics, engine_metrics
from rules_engine.server.openapi import openapi_document
from rules_engine.spec.times import rfc3339

log = logging.getLogger(__name__)
EXTENSION = "rules_engine"


@dataclass
class Engine:
    config: ServerConfig
    runtime: Runtime
    credentials: Credentials
    metrics: EngineMetrics
    runner: Runner | None
    events: st.EventCommitter


def engine() -> Engine:
    return current_app.extensions[EXTENSION]


def create_app(config: ServerConfig, playbooks: dict | None = None, start_runner: bool | None = None) -> Flask:
    """Build the application. `playbooks` (name -> Playbook) skips loading `config.playbooks` from disk."""
    store = st.open_store(config.database_url, synchronous=config.sqlite_synchronous,
                          lock_timeout=config.store_lock_timeout)
    loaded = playbooks if playbooks is not None else load_playbooks(config.playbooks)
    metrics = engine_metrics(store)
    runtime = Runtime(store=store, playbooks=loaded, dry_run=config.dry_run, prometheus=prometheus_client(config),
                      variables=dict(config.variables), targets=tuple(config.targets),
                      lease_seconds=config.lease_seconds, notify_urls=list(config.notify_urls),
                      notify_policy=RetryPolicy(**config.notify.model_dump()),
                      observe_step=metrics.observe_step)
    start = config.process if start_runner is None else start_runner
    runner = Runner(runtime, executor_threads=config.executor_threads, poll_interval=config.poll_interval)
    app = Flask("rules_engine")
    app.config["MAX_CONTENT_LENGTH"] = config.max_payload_bytes
    app.extensions[EXTENSION] = Engine(config=config, runtime=runtime, credentials=Credentials.from_config(config),
                                       metrics=metrics, runner=runner.start() if start else None,
                                       events=st.EventCommitter(store))
    app.register_blueprint(webhook_blueprint)
    app.register_blueprint(api_blueprint)
    app.register_blueprint(health_blueprint)
    app.register_error_handler(413, lambda e: (jsonify(error=f"payload larger than {config.max_payload_bytes} "
                                                             "bytes"), 413))
    app.register_error_handler(inputs.InputError, lambda e: (jsonify(error=str(e), problems=[str(e)]), 400))
    app.register_error_handler(DBAPIError, _store_unavailable)
    app.register_error_handler(404, lambda e: (jsonify(error="not found"), 404))
    app.register_error_handler(405, lambda e: (jsonify(error="method not allowed"), 405))
    return app


def _store_unavailable(error: DBAPIError):
    """A store that cannot answer an operator request (locked, read-only, full, gone): 503, and why."""
    reason = st.describe_error(error)
    log.error("store unavailable during %s %s: %s", request.method, request.path, reason)
    return jsonify(error=f"store unavailable ({reason}); retry later"), 503


def shutdown(app: Flask) -> None:
    found: Engine = app.extensions[EXTENSION]
    if found.runner is not None:
        found.runner.stop()
    found.events.stop()
    found.runtime.store.dispose()
    if found.runtime.prometheus is not None:
        found.runtime.prometheus.close()


# --- webhook ----------------------------------------------------------------------------------------------------
webhook_blueprint = Blueprint("webhook", __name__)


@webhook_blueprint.post("/alertmanager/webhook")
def alertmanager_webhook():
    """Validate, persist, acknowledge. Processing happens in the intake loop, never in this request."""
    started = time.perf_counter()
    found = engine()
    counter = found.metrics.webhook_requests
    if not found.credentials.alertmanager_ok(request.headers.get("Authorization")):
        counter.labels("unauthorized").inc()
        return jsonify(error="missing or wrong credentials"), 401, {"WWW-Authenticate": 'Bearer realm="rules-engine"'}
    body = inputs.capped_body(request, found.config.max_payload_bytes)
    try:
        payload = parse_payload(body)
    except PayloadError as error:
        counter.labels("invalid").inc()
        # 4xx: Alertmanager does not retry it (it resends the group at the next group_interval anyway).
        return jsonify(error="not an Alertmanager webhook payload (version 4)", problems=error.problems[:20]), 400
    try:
        event_id = found.events.append(body=body.decode("utf-8"), remote_addr=request.remote_addr or "",
                                       external_url=payload.external_url, group_key=payload.group_key,
                                       status=payload.status, alert_count=len(payload.alerts))
    except (SQLAlchemyError, OSError, RuntimeError) as error:  # OSError: the lock file, TimeoutError
        counter.labels("unavailable").inc()
        reason = st.describe_error(error)
        log.error("could not persist a webhook event: %s", reason)
        # 503 (never 429): Alertmanager retries 5xx with backoff, so the delivery is not lost.
        return jsonify(error=f"store unavailable ({reason}); nothing was stored, retry"), 503
    if found.runner is not None:
        found.runner.intake_wake.set()
    counter.labels("accepted").inc()
    firing = sum(1 for a in payload.alerts if a.status == "firing")
    found.metrics.webhook_alerts.labels("firing").inc(firing)
    found.metrics.webhook_alerts.labels("resolved").inc(len(payload.alerts) - firing)
    found.metrics.webhook_ack_seconds.observe(time.perf_counter() - started)
    return jsonify(status="accepted", event_id=event_id, alerts=len(payload.alerts)), 200


# --- operator API -----------------------------------------------------------------------------------------------
api_blueprint = Blueprint("api", __name__, url_prefix="/api/v1")


@api_blueprint.before_request
def _authenticate():
    if request.endpoint in ("api.openapi",):
        return None
    principal = engine().credentials.operator(request.headers.get("Authorization"))
    if principal is None:
        return jsonify(error="missing or wrong operator credentials"), 401, {"WWW-Authenticate": 'Bearer realm="rules-engine"'}
    g.principal = principal
    return None


@api_blueprint.get("/openapi.json")
def openapi():
    return jsonify(openapi_document())


@api_blueprint.get("/workflows")
def list_workflows():
    state = request.args.get("state")
    if state and state not in wf.STATES:
        return jsonify(error=f"unknown state {state!r}; one of {list(wf.STATES)}"), 400
    filters = {name: inputs.query_text(request, name) for name in ("instance", "alertname", "playbook")}
    limit = inputs.query_limit(request, default=100, maximum=1000)
    with engine().runtime.store.read() as conn:
        found = st.list_workflows(conn, state=state, limit=limit, **filters)
    return jsonify(workflows=[w.to_json(with_steps=False) for w in found])


@api_blueprint.get("/workflows/<workflow_id>")
def show_workflow(workflow_id: str):
    inputs.path_text(workflow_id, "id")
    with engine().runtime.store.read() as conn:
        found = st.get_workflow(conn, workflow_id)
        if found is None:
            return jsonify(error=f"no workflow {workflow_id!r}"), 404
        body = found.to_json()
        body["audit"] = st.audit_entries(conn, workflow_id)
    return jsonify(body)


def _decide(workflow_id: str, decision: str):
    found = engine()
    principal: Principal = g.principal
    inputs.path_text(workflow_id, "id")
    text = inputs.decision_text(request)
    with found.runtime.store.read() as conn:
        current = st.get_workflow(conn, workflow_id, with_steps=False)
    if current is None:
        return jsonify(error=f"no workflow {workflow_id!r}"), 404
    if current.optimization_level not in principal.levels:
        with found.runtime.store.write() as conn:
            st.record_audit(conn, principal.name, f"{decision}_denied", workflow_id,
                            level=current.optimization_level, roles=list(principal.roles))
        return jsonify(error=f"{principal.name} (roles {list(principal.roles)}) may not {decision} "
                             f"{current.optimization_level} workflows"), 403
    try:
        if decision == "approve":
            updated = wf.approve(found.runtime.store, workflow_id, principal.name, text)
        else:
            updated = wf.reject(found.runtime.store, workflow_id, principal.name, text)
    except wf.TransitionError as error:
        return jsonify(error=str(error)), 409
    if found.runner is not None:
        found.runner.executor_wake.set()
    return jsonify(updated.to_json())


@api_blueprint.post("/workflows/<workflow_id>/approve")
def approve(workflow_id: str):
    return _decide(workflow_id, "approve")


@api_blueprint.post("/workflows/<workflow_id>/reject")
def reject(workflow_id: str):
    return _decide(workflow_id, "reject")


@api_blueprint.get("/playbooks")
def list_playbooks():
    return jsonify(playbooks=[{
        "name": p.name, "description": p.description, "server_kind": p.server_kind, "category": p.category,
        "risk": p.risk, "optimization_level": p.optimization_level, "approval_required": p.approval.required,
        "dry_run": p.dry_run or engine().runtime.dry_run, "cooldown_seconds": p.cooldown,
        "series_labels": p.series_labels, "max_concurrent": p.max_concurrent, "matchers": p.match.matchers,
        "by_annotation": p.match.by_annotation, "steps": [{"name": s.name, "type": s.type} for s in p.steps],
    } for p in engine().runtime.playbooks.values()])


@api_blueprint.get("/audit")
def audit_log():
    workflow_id = inputs.query_text(request, "workflow_id")
    limit = inputs.query_limit(request, default=1000, maximum=10000)
    with engine().runtime.store.read() as conn:
        return jsonify(audit=st.audit_entries(conn, workflow_id, limit=limit))


# --- health, readiness, metrics -------------------------------------------------------------------------------
health_blueprint = Blueprint("health", __name__)


@health_blueprint.get("/api/v1/health")
def health():
    return jsonify(status="healthy", timestamp=rfc3339(time.time(), "us"))


@health_blueprint.get("/api/v1/ready")
def ready():
    found = engine()
    problems = []
    try:
        with found.runtime.store.read() as conn:
            backlog = st.event_backlog(conn)
    except SQLAlchemyError as error:
        problems.append(f"store: {st.describe_error(error)}")
    else:
        stall = intake_stall(backlog, found.config.intake_stall_seconds)
        if stall:
            problems.append(stall)
    if found.runner is not None and not all(t.is_alive() for t in found.runner.threads):
        problems.append("a background loop has stopped")
    if found.runner is not None and found.runner.intake_problem():
        problems.append(found.runner.intake_problem())
    if problems:
        return jsonify(status="not ready", problems=problems), 503
    return jsonify(status="ready", playbooks=len(found.runtime.playbooks),
                   processing=found.runner is not None, events_unprocessed=backlog.count)


@health_blueprint.get("/metrics")
def metrics():
    return Response(generate_latest(engine().metrics.registry), mimetype=CONTENT_TYPE_LATEST)
