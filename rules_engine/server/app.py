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
from sqlalchemy.exc import SQLAlchemyError

from rules_engine.playbooks import store as st
from rules_engine.playbooks import workflow as wf
from rules_engine.playbooks.payload import PayloadError, parse_payload
from rules_engine.playbooks.runner import Runner
from rules_engine.playbooks.runtime import Runtime, load_playbooks
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
    store = st.open_store(config.database_url, synchronous=config.sqlite_synchronous)
    loaded = playbooks if playbooks is not None else load_playbooks(config.playbooks)
    metrics = engine_metrics(store)
    runtime = Runtime(store=store, playbooks=loaded, dry_run=config.dry_run, prometheus=prometheus_client(config),
                      variables=dict(config.variables), targets=tuple(config.targets),
                      lease_seconds=config.lease_seconds, notify_urls=list(config.notify_urls),
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
    app.register_error_handler(404, lambda e: (jsonify(error="not found"), 404))
    app.register_error_handler(405, lambda e: (jsonify(error="method not allowed"), 405))
    return app


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
    body = request.get_data(cache=False)
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
    except (SQLAlchemyError, TimeoutError, RuntimeError) as error:
        counter.labels("unavailable").inc()
        log.error("could not persist a webhook event: %s", type(error).__name__)
        # 503 (never 429): Alertmanager retries 5xx with backoff, so the delivery is not lost.
        return jsonify(error="store unavailable; retry"), 503
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
    args = request.args
    state = args.get("state")
    if state and state not in wf.STATES:
        return jsonify(error=f"unknown state {state!r}; one of {list(wf.STATES)}"), 400
    try:
        limit = min(max(int(args.get("limit", 100)), 1), 1000)
    except ValueError:
        return jsonify(error="limit must be an integer"), 400
    with engine().runtime.store.read() as conn:
        found = st.list_workflows(conn, state=state, instance=args.get("instance"),
                                  alertname=args.get("alertname"), playbook=args.get("playbook"), limit=limit)
    return jsonify(workflows=[w.to_json(with_steps=False) for w in found])


@api_blueprint.get("/workflows/<workflow_id>")
def show_workflow(workflow_id: str):
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
    body = request.get_json(silent=True) or {}
    text = str(body.get("comment") or body.get("reason") or "")[:2000]
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
    with engine().runtime.store.read() as conn:
        return jsonify(audit=st.audit_entries(conn, request.args.get("workflow_id"),
                                              limit=min(int(request.args.get("limit", 1000)), 10000)))


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
        found.runtime.store.ping()
    except SQLAlchemyError as error:
        problems.append(f"store: {type(error).__name__}")
    if found.runner is not None and not all(t.is_alive() for t in found.runner.threads):
        problems.append("a background loop has stopped")
    if problems:
        return jsonify(status="not ready", problems=problems), 503
    return jsonify(status="ready", playbooks=len(found.runtime.playbooks),
                   processing=found.runner is not None)


@health_blueprint.get("/metrics")
def metrics():
    return Response(generate_latest(engine().metrics.registry), mimetype=CONTENT_TYPE_LATEST)
