"""The Flask application: a thin HTTP layer over rules_engine.playbooks.

`create_app(config)` builds one application with its own store, metrics registry and (optionally) background
runner; nothing lives in module globals, so tests and several WSGI workers each get an independent instance.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, url_for
from flask_swagger_ui import get_swaggerui_blueprint
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from rules_engine.playbooks import analysis
from rules_engine.playbooks import store as st
from rules_engine.playbooks import workflow as wf
from rules_engine.playbooks.recommend import recommend_findings
from rules_engine.playbooks.start import start_workflows
from rules_engine.playbooks.intake import intake_stall
from rules_engine.playbooks.notify import RetryPolicy
from rules_engine.playbooks.payload import PayloadError, WebhookPayload, parse_payload
from rules_engine.playbooks.runner import Runner
from rules_engine.playbooks.runtime import Runtime, load_playbooks
from rules_engine.report.html import with_plotlyjs
from rules_engine.server import inputs
from rules_engine.server.config import Credentials, Principal, ServerConfig, prometheus_client
from rules_engine.server.metrics import EngineMetrics, engine_metrics
from rules_engine.server import schemas as sc
from rules_engine.server.openapi import documented, openapi_document
from rules_engine.spec.loader import RuleSet, load_ruleset
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
    analysis: analysis.AnalysisPool
    _rules: RuleSet | None = None
    _rules_lock: threading.Lock = field(default_factory=threading.Lock)

    def rules(self) -> RuleSet:
        """The packs and SLOs of the config's `rules:`, loaded on first use (SpecError if they do not load)."""
        with self._rules_lock:
            if self._rules is None:
                self._rules = load_ruleset(self.config.rules)
            return self._rules

    def pack_servers(self) -> dict[str, str]:
        try:
            return {pack.name: pack.server for pack in self.rules().packs}
        except Exception:  # broken rules do not stop recommendations: the server kind is then guessed
            return {}


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
                      lease_seconds=config.lease_seconds, max_resumes=config.max_resumes,
                      notify_urls=list(config.notify_urls),
                      notify_policy=RetryPolicy(**config.notify.model_dump()),
                      observe_step=metrics.observe_step)
    start = config.process if start_runner is None else start_runner
    runner = Runner(runtime, executor_threads=config.executor_threads, poll_interval=config.poll_interval)
    app = Flask("rules_engine")
    app.config["MAX_CONTENT_LENGTH"] = config.max_payload_bytes
    found = Engine(config=config, runtime=runtime, credentials=Credentials.from_config(config), metrics=metrics,
                   runner=runner.start() if start else None, events=st.EventCommitter(store), analysis=None)
    found.analysis = analysis.AnalysisPool(
        store=store, configured=found.rules, client_factory=lambda timeout: _job_client(config, timeout),
        settings=analysis.AnalysisLimits(**config.analysis.model_dump()), poll_interval=config.poll_interval)
    if start:
        found.analysis.start()
    app.extensions[EXTENSION] = found
    app.register_blueprint(webhook_blueprint)
    app.register_blueprint(api_blueprint)
    app.register_blueprint(health_blueprint)
    app.register_blueprint(get_swaggerui_blueprint("/docs", "/api/v1/openapi.json",
                                                   config={"app_name": "rules-engine API"}), name="docs")
    app.register_error_handler(413, lambda e: (jsonify(error=f"payload larger than {config.max_payload_bytes} "
                                                             "bytes"), 413))
    app.register_error_handler(inputs.InputError, lambda e: (jsonify(error=str(e), problems=e.problems or [str(e)]),
                                                             400))
    app.register_error_handler(DBAPIError, _store_unavailable)
    app.register_error_handler(404, lambda e: (jsonify(error="not found"), 404))
    app.register_error_handler(405, lambda e: (jsonify(error="method not allowed"), 405))
    return app


def _store_unavailable(error: DBAPIError):
    """A store that cannot answer an operator request (locked, read-only, full, gone): 503, and why."""
    reason = st.describe_error(error)
    log.error("store unavailable during %s %s: %s", request.method, request.path, reason)
    return jsonify(error=f"store unavailable ({reason}); retry later"), 503


def _job_client(config: ServerConfig, timeout: float):
    """A client of the serve config's Prometheus for one analysis job, with the jobs' request timeout."""
    if config.prometheus is None:
        return None
    return prometheus_client(config.model_copy(update={"prometheus": config.prometheus.model_copy(
        update={"timeout": timeout})}))


def shutdown(app: Flask) -> None:
    found: Engine = app.extensions[EXTENSION]
    if found.runner is not None:
        found.runner.stop()
    if found.analysis.threads:
        found.analysis.stop()
    found.events.stop()
    found.runtime.store.dispose()
    if found.runtime.prometheus is not None:
        found.runtime.prometheus.close()


# --- webhook ----------------------------------------------------------------------------------------------------
webhook_blueprint = Blueprint("webhook", __name__)


@webhook_blueprint.post("/alertmanager/webhook")
@documented("Receive an Alertmanager webhook (v4); persisted before the 2xx, processed asynchronously",
            {200: ("accepted and persisted", sc.WebhookAccepted),
             400: ("not a v4 webhook payload, or a value the store cannot hold", sc.Error),
             413: ("payload too large", sc.Error), 503: ("store unavailable; Alertmanager retries", sc.Error)},
            body=WebhookPayload, security="alertmanager")
def alertmanager_webhook():
    """Validate, persist, acknowledge. Processing happens in the intake loop, never in this request."""
    started = time.perf_counter()
    found = engine()
    if not found.credentials.alertmanager_ok(request.headers.get("Authorization")):
        found.metrics.count_delivery("unauthorized")
        return jsonify(error="missing or wrong credentials"), 401, {"WWW-Authenticate": 'Bearer realm="rules-engine"'}
    body = inputs.capped_body(request, found.config.max_payload_bytes)
    try:
        payload = parse_payload(body)
    except PayloadError as error:
        found.metrics.count_delivery("invalid")
        # 4xx: Alertmanager does not retry it (it resends the group at the next group_interval anyway).
        return jsonify(error="not an Alertmanager webhook payload (version 4)", problems=error.problems[:20]), 400
    try:
        event_id = found.events.append(body=body.decode("utf-8"), remote_addr=request.remote_addr or "",
                                       external_url=payload.external_url, group_key=payload.group_key,
                                       status=payload.status, alert_count=len(payload.alerts))
    except (SQLAlchemyError, OSError, RuntimeError) as error:  # OSError: the lock file, TimeoutError
        found.metrics.count_delivery("unavailable")
        reason = st.describe_error(error)
        log.error("could not persist a webhook event: %s", reason)
        # 503 (never 429): Alertmanager retries 5xx with backoff, so the delivery is not lost.
        return jsonify(error=f"store unavailable ({reason}); nothing was stored, retry"), 503
    if found.runner is not None:
        found.runner.intake_wake.set()
    firing = sum(1 for a in payload.alerts if a.status == "firing")
    found.metrics.count_delivery("accepted", firing, len(payload.alerts) - firing, time.perf_counter() - started)
    return jsonify(status="accepted", event_id=event_id, alerts=len(payload.alerts)), 200


# --- operator API -----------------------------------------------------------------------------------------------
api_blueprint = Blueprint("api", __name__, url_prefix="/api/v1")
DECISION_RESPONSES = {200: ("the workflow after the decision", sc.Workflow),
                      403: ("the operator's roles do not cover the playbook's level", sc.Error),
                      404: ("no such workflow", sc.Error), 409: ("the workflow is not waiting for approval", sc.Error)}


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
@documented("This document", {200: ("OpenAPI 3.1", None)}, security=None, errors=())
def openapi():
    return jsonify(openapi_document(current_app))


@api_blueprint.get("/workflows")
@documented("List workflows, newest first", {200: ("workflows", sc.WorkflowList)}, query=sc.WorkflowQuery)
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
@documented("One workflow with its steps and audit trail",
            {200: ("the workflow", sc.Workflow), 404: ("no such workflow", sc.Error)})
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
@documented("Approve a workflow waiting for approval", DECISION_RESPONSES, body=sc.Decision, body_required=False)
def approve(workflow_id: str):
    return _decide(workflow_id, "approve")


@api_blueprint.post("/workflows/<workflow_id>/reject")
@documented("Reject a workflow waiting for approval", DECISION_RESPONSES, body=sc.Decision, body_required=False)
def reject(workflow_id: str):
    return _decide(workflow_id, "reject")


@api_blueprint.get("/playbooks")
@documented("Loaded playbooks", {200: ("playbooks", sc.PlaybookList)})
def list_playbooks():
    return jsonify(playbooks=[{
        "name": p.name, "description": p.description, "server_kind": p.server_kind, "category": p.category,
        "risk": p.risk, "optimization_level": p.optimization_level, "approval_required": p.approval.required,
        "dry_run": p.dry_run or engine().runtime.dry_run, "cooldown_seconds": p.cooldown,
        "series_labels": p.series_labels, "max_concurrent": p.max_concurrent, "matchers": p.match.matchers,
        "by_annotation": p.match.by_annotation, "steps": [{"name": s.name, "type": s.type} for s in p.steps],
    } for p in engine().runtime.playbooks.values()])


@api_blueprint.get("/audit")
@documented("The append-only audit log", {200: ("audit entries", sc.AuditList)}, query=sc.AuditQuery)
def audit_log():
    workflow_id = inputs.query_text(request, "workflow_id")
    limit = inputs.query_limit(request, default=1000, maximum=10000)
    with engine().runtime.store.read() as conn:
        return jsonify(audit=st.audit_entries(conn, workflow_id, limit=limit))


# --- analysis, recommendations, starting workflows ---------------------------------------------------------------
@api_blueprint.post("/analysis")
@documented("Start an analysis job: a backtest of the named (or inline) rules over the server's Prometheus",
            {202: ("queued; poll the job's URL (also in Location)", sc.AnalysisJob),
             409: ("this server has no Prometheus configured", sc.Error),
             429: ("too many jobs are waiting; retry later (Retry-After)", sc.Error)}, body=sc.AnalysisRequest)
def submit_analysis():
    found = engine()
    body = inputs.parse_body(request, sc.AnalysisRequest, found.config.max_payload_bytes)
    if found.config.prometheus is None:
        return jsonify(error="analysis jobs need the serve config's `prometheus:` section; none is configured"), 409
    try:
        planned = analysis.plan(body, found.rules, found.analysis.settings)
    except analysis.RequestProblem as problem:
        raise inputs.InputError(problem.location, problem.message) from None
    try:
        job = analysis.submit(found.runtime.store, body, planned, g.principal.name,
                              found.analysis.settings.max_queued)
    except analysis.QueueFull as full:
        return jsonify(error=str(full)), 429, {"Retry-After": "30"}
    found.analysis.wake.set()
    location = url_for("api.show_analysis", job_id=job["id"])
    return jsonify({**job, "url": location}), 202, {"Location": location}


@api_blueprint.get("/analysis")
@documented("Analysis jobs, newest first (without their results)", {200: ("jobs", sc.AnalysisJobList)},
            query=sc.AnalysisQuery)
def list_analysis():
    limit = inputs.query_limit(request, default=100, maximum=1000)
    with engine().runtime.store.read() as conn:
        jobs = analysis.list_jobs(conn, limit)
    return jsonify(jobs=[{**job, "url": url_for("api.show_analysis", job_id=job["id"])} for job in jobs])


@api_blueprint.get("/analysis/<job_id>")
@documented("An analysis job: its state and, once succeeded, its findings, SLOs and health (the export contract)",
            {200: ("the job", sc.AnalysisJob), 404: ("no such job", sc.Error)})
def show_analysis(job_id: str):
    inputs.path_text(job_id, "id")
    found = engine()
    analysis.fail_abandoned(found.runtime.store)  # a job whose process stopped reads as failed at once
    with found.runtime.store.read() as conn:
        job = analysis.job_record(conn, job_id)
    if job is None:
        return jsonify(error=f"no analysis job {job_id!r}"), 404
    return jsonify({**job, "url": url_for("api.show_analysis", job_id=job_id)})


@api_blueprint.get("/analysis/<job_id>/report.html")
@documented("An analysis job's HTML report: per finding the signal with its thresholds and firing intervals, SLO "
            "burn-downs, the fleet overview; one self-contained page",
            {200: ("the report (text/html)", None), 404: ("no such job", sc.Error),
             409: ("the job has not succeeded (yet)", sc.Error)})
def show_analysis_report(job_id: str):
    inputs.path_text(job_id, "id")
    found = engine()
    analysis.fail_abandoned(found.runtime.store)
    with found.runtime.store.read() as conn:
        job = analysis.job_report(conn, job_id)
    if job is None:
        return jsonify(error=f"no analysis job {job_id!r}"), 404
    state, report = job
    if report is None:
        return jsonify(error=f"analysis job {job_id!r} is {state}: a report exists once it has succeeded"), 409
    return Response(with_plotlyjs(report), mimetype="text/html")


@api_blueprint.post("/optimization/recommend")
@documented("Ranked recommendations for findings: priority, estimated improvement, risks, the exact settings per "
            "server kind, the playbook that applies", {200: ("recommendations", sc.RecommendResponse)},
            body=sc.RecommendRequest)
def recommend_endpoint():
    found = engine()
    body = inputs.parse_body(request, sc.RecommendRequest, found.config.max_payload_bytes)
    answer = recommend_findings([f.model_dump() for f in body.findings],
                                {k: v.model_dump() for k, v in body.current.items()}, found.runtime.prometheus,
                                list(found.runtime.playbooks.values()), found.pack_servers())
    return jsonify(answer)


@api_blueprint.post("/workflows")
@documented("Start a playbook's workflow from an analysis finding or a recommendation (same approval rules as "
            "alerts: it waits for approval unless its playbook needs none or runs dry)",
            {201: ("workflows created (and any that already existed for the same episodes)", sc.StartedWorkflows),
             200: ("every workflow already existed: nothing new was started", sc.StartedWorkflows),
             403: ("the playbook runs without approval, and the operator's roles do not cover its level",
                   sc.Error),
             404: ("no such playbook", sc.Error),
             409: ("the series is within the playbook's cooldown", sc.Error)}, body=sc.StartWorkflow)
def start_workflow():
    found = engine()
    body = inputs.parse_body(request, sc.StartWorkflow, found.config.max_payload_bytes)
    source = body.finding or body.recommendation
    findings = [body.finding] if body.finding is not None else body.recommendation.findings
    name = body.playbook or source.playbook or next((f.playbook for f in findings if f.playbook), None)
    if not name:
        raise inputs.InputError("body.playbook", "no playbook named here nor in the finding/recommendation")
    playbook = found.runtime.playbooks.get(name)
    if playbook is None:
        return jsonify(error=f"no playbook {name!r} is loaded; have: {sorted(found.runtime.playbooks)}"), 404
    principal: Principal = g.principal
    runs_unapproved = not (found.runtime.dry_run or playbook.dry_run) and not playbook.approval.required
    if runs_unapproved and playbook.optimization_level not in principal.levels:
        return jsonify(error=f"playbook {name} runs without approval; {principal.name} (roles "
                             f"{list(principal.roles)}) may not start {playbook.optimization_level} workflows"), 403
    origin = "api:finding" if body.finding is not None else "api:recommendation"
    context = {"started_from": origin, **({"recommendation": body.recommendation.model_dump()}
                                         if body.recommendation is not None else {})}
    started = start_workflows(found.runtime, playbook, [f.model_dump() for f in findings], principal.name, origin,
                              context)
    if found.runner is not None:
        found.runner.wake()
    if not started.workflows and started.suppressed:
        return jsonify(error=f"the series is within playbook {name}'s cooldown "
                             f"({playbook.cooldown:.0f}s); nothing was started"), 409
    return jsonify(started.to_json()), 201 if started.created else 200


# --- health, readiness, metrics -------------------------------------------------------------------------------
health_blueprint = Blueprint("health", __name__)


@health_blueprint.get("/api/v1/health")
@documented("Liveness", {200: ("alive", sc.Health)}, security=None, errors=())
def health():
    return jsonify(status="healthy", timestamp=rfc3339(time.time(), "us"))


@health_blueprint.get("/api/v1/ready")
@documented("Readiness (the store answers, background loops alive, the intake keeps up)",
            {200: ("ready", sc.Ready), 503: ("not ready", sc.Ready)}, security=None, errors=())
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
    if not all(t.is_alive() for t in found.analysis.threads):
        problems.append("an analysis worker has stopped")
    if found.runner is not None and found.runner.intake_problem():
        problems.append(found.runner.intake_problem())
    if problems:
        return jsonify(status="not ready", problems=problems), 503
    return jsonify(status="ready", playbooks=len(found.runtime.playbooks),
                   processing=found.runner is not None, events_unprocessed=backlog.count)


@health_blueprint.get("/metrics")
@documented("The engine's own Prometheus metrics", {200: ("text exposition format", None)}, security=None,
            errors=())
def metrics():
    return Response(generate_latest(engine().metrics.registry), mimetype=CONTENT_TYPE_LATEST)
