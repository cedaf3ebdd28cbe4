"""The Flask application through its test client: auth, validation, persist-before-ack, operator API, metrics.

The background runner is off (`start_runner=False`) where a test needs to see the state between persisting and
processing; it then drives the intake by hand with the same functions the runner calls.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import time

from pathlib import Path

import pytest
from sqlalchemy import func, select

from rules_engine.playbooks import store as st
from rules_engine.playbooks import workflow as wf
from rules_engine.playbooks.intake import process_next_event
from rules_engine.server.app import create_app, shutdown
from rules_engine.server.config import ConfigError, ServerConfig, load_config, prometheus_client
from tests.test_playbooks import alert, payload, playbook

AM_TOKEN = "am-secret-token-123"
OPERATORS = {"viewer-token": ["viewer"], "operator-token": ["operator"], "senior-token": ["senior"]}


def config(tmp_path, **overrides) -> ServerConfig:
    (tmp_path / "am-token").write_text(AM_TOKEN + "\n")
    base = {
        "database_url": f"sqlite:///{tmp_path / 'engine.db'}", "sqlite_synchronous": "NORMAL",
        "alertmanager_auth": {"bearer_token": {"file": str(tmp_path / "am-token")}},
        "operators": [{"name": roles[0], "token": {"sha256": hashlib.sha256(token.encode()).hexdigest()},
                       "roles": roles} for token, roles in OPERATORS.items()],
        "poll_interval": 0.05, "variables": {"orchestrator_url": "http://127.0.0.1:9"},
    }
    base.update(overrides)
    return ServerConfig.model_validate(base)


@pytest.fixture
def app(tmp_path):
    application = create_app(config(tmp_path), playbooks={"pb": playbook()}, start_runner=False)
    yield application
    shutdown(application)


@pytest.fixture
def client(app):
    return app.test_client()


def am_headers(token: str = AM_TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def op(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def event_count(app) -> int:
    with app.extensions["rules_engine"].runtime.store.read() as conn:
        return conn.execute(select(func.count()).select_from(st.events)).scalar_one()


def drain(app) -> None:
    while process_next_event(app.extensions["rules_engine"].runtime):
        pass


def test_wrong_or_missing_credentials_get_401_and_nothing_is_stored(client, app, caplog):
    caplog.set_level(logging.DEBUG)
    body = payload(alert())
    assert client.post("/alertmanager/webhook", data=body, headers={"Content-Type": "application/json"}
                       ).status_code == 401
    assert client.post("/alertmanager/webhook", data=body, headers=am_headers("wrong-token")).status_code == 401
    # The operator credential is not the Alertmanager credential, and vice versa.
    assert client.post("/alertmanager/webhook", data=body, headers=am_headers("senior-token")).status_code == 401
    assert client.get("/api/v1/workflows", headers=op(AM_TOKEN)).status_code == 401
    assert event_count(app) == 0
    assert "wrong-token" not in caplog.text and AM_TOKEN not in caplog.text


def test_basic_auth_for_alertmanager(tmp_path):
    (tmp_path / "pw").write_text("s3cret")
    application = create_app(config(tmp_path, alertmanager_auth={
        "basic_username": "alertmanager", "basic_password": {"file": str(tmp_path / "pw")}}),
        playbooks={"pb": playbook()}, start_runner=False)
    client = application.test_client()

    def basic(user, password):
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    assert client.post("/alertmanager/webhook", data=payload(alert()),
                       headers=basic("alertmanager", "s3cret")).status_code == 200
    assert client.post("/alertmanager/webhook", data=payload(alert()),
                       headers=basic("alertmanager", "wrong")).status_code == 401
    assert client.post("/alertmanager/webhook", data=payload(alert()),
                       headers=basic("someone", "s3cret")).status_code == 401
    shutdown(application)


@pytest.mark.parametrize("scheme", ["Token", "Basic", "Digest", "bearer-ish", ""])
def test_the_alertmanager_token_under_another_scheme_gets_401(client, app, scheme):
    headers = {"Authorization": f"{scheme} {AM_TOKEN}".lstrip(), "Content-Type": "application/json"}
    assert client.post("/alertmanager/webhook", data=payload(alert()), headers=headers).status_code == 401
    assert event_count(app) == 0
    # The scheme is case-insensitive (RFC 9110): the same token under "bearer" is accepted.
    headers["Authorization"] = f"bearer {AM_TOKEN}"
    assert client.post("/alertmanager/webhook", data=payload(alert()), headers=headers).status_code == 200


@pytest.mark.parametrize("scheme", ["Token", "Basic", "Digest", ""])
def test_an_operator_token_under_another_scheme_gets_401(client, scheme):
    headers = {"Authorization": f"{scheme} senior-token".lstrip()}
    assert client.get("/api/v1/workflows", headers=headers).status_code == 401
    assert client.get("/api/v1/workflows", headers={"Authorization": "BEARER senior-token"}).status_code == 200


def test_basic_auth_credentials_under_the_bearer_scheme_get_401(tmp_path):
    (tmp_path / "pw").write_text("s3cret")
    application = create_app(config(tmp_path, alertmanager_auth={
        "basic_username": "alertmanager", "basic_password": {"file": str(tmp_path / "pw")}}),
        playbooks={"pb": playbook()}, start_runner=False)
    encoded = base64.b64encode(b"alertmanager:s3cret").decode()
    for scheme in ("Bearer", "Token"):
        assert application.test_client().post("/alertmanager/webhook", data=payload(alert()), headers={
            "Authorization": f"{scheme} {encoded}"}).status_code == 401
    shutdown(application)


def test_malformed_payloads_get_400_naming_the_field(client, app):
    bad = client.post("/alertmanager/webhook", data="{not json", headers=am_headers())
    assert bad.status_code == 400 and "not valid JSON" in bad.json["problems"][0]
    wrong_version = json.loads(payload(alert()))
    wrong_version["version"] = "3"
    response = client.post("/alertmanager/webhook", data=json.dumps(wrong_version), headers=am_headers())
    assert response.status_code == 400 and any(p.startswith("version") for p in response.json["problems"])
    no_fingerprint = json.loads(payload(alert()))
    del no_fingerprint["alerts"][0]["fingerprint"]
    response = client.post("/alertmanager/webhook", data=json.dumps(no_fingerprint), headers=am_headers())
    assert response.status_code == 400 and "alerts[0].fingerprint: Field required" in response.json["problems"]
    assert event_count(app) == 0


def test_the_event_is_persisted_before_the_2xx_and_processed_afterwards(client, app):
    response = client.post("/alertmanager/webhook", data=payload(alert()), headers=am_headers())
    assert response.status_code == 200 and response.json["status"] == "accepted"
    engine = app.extensions["rules_engine"]
    with engine.runtime.store.read() as conn:
        row = conn.execute(select(st.events).where(st.events.c.id == response.json["event_id"])).first()
        assert row is not None and row.processed_at is None  # persisted, not processed inside the request
        assert st.list_workflows(conn) == []
    drain(app)
    listed = client.get("/api/v1/workflows", headers=op("viewer-token")).json["workflows"]
    assert [w["state"] for w in listed] == [wf.PENDING_APPROVAL]


def test_operator_api_filters_roles_and_decisions(client, app):
    body = payload(alert(instance="i1"), alert(instance="i2"))
    client.post("/alertmanager/webhook", data=body, headers=am_headers())
    drain(app)
    everything = client.get("/api/v1/workflows", headers=op("viewer-token")).json["workflows"]
    assert len(everything) == 2
    only_i2 = client.get("/api/v1/workflows?instance=i2", headers=op("viewer-token")).json["workflows"]
    assert [w["instance"] for w in only_i2] == ["i2"]
    assert client.get("/api/v1/workflows?state=BOGUS", headers=op("viewer-token")).status_code == 400
    workflow_id = only_i2[0]["id"]
    # The playbook is `moderate`: a viewer and a conservative-only operator may not decide it.
    for token in ("viewer-token", "operator-token"):
        denied = client.post(f"/api/v1/workflows/{workflow_id}/approve", headers=op(token))
        assert denied.status_code == 403 and "may not approve moderate" in denied.json["error"]
    approved = client.post(f"/api/v1/workflows/{workflow_id}/approve", json={"comment": "go"},
                           headers=op("senior-token"))
    assert approved.status_code == 200 and approved.json["state"] == wf.APPROVED
    assert approved.json["decided_by"] == "senior"
    again = client.post(f"/api/v1/workflows/{workflow_id}/approve", headers=op("senior-token"))
    assert again.status_code == 409
    other = everything[0]["id"] if everything[0]["id"] != workflow_id else everything[1]["id"]
    rejected = client.post(f"/api/v1/workflows/{other}/reject", json={"reason": "peak hours"},
                           headers=op("senior-token"))
    assert rejected.json["state"] == wf.REJECTED and rejected.json["reason"] == "peak hours"
    shown = client.get(f"/api/v1/workflows/{workflow_id}", headers=op("viewer-token")).json
    assert [s["name"] for s in shown["steps"]] == ["recommend", "scale", "undo"]
    actions = [(e["actor"], e["action"]) for e in shown["audit"]]
    assert ("viewer", "approve_denied") in actions and ("senior", "transition") in actions
    assert client.get("/api/v1/workflows/nope", headers=op("viewer-token")).status_code == 404
    playbooks = client.get("/api/v1/playbooks", headers=op("viewer-token")).json["playbooks"]
    assert playbooks[0]["name"] == "pb" and playbooks[0]["optimization_level"] == "moderate"


def test_health_readiness_metrics_and_openapi(client, app):
    assert client.get("/api/v1/health").json["status"] == "healthy"
    assert client.get("/api/v1/ready").json["status"] == "ready"
    client.post("/alertmanager/webhook", data=payload(alert()), headers=am_headers())
    client.post("/alertmanager/webhook", data="{}", headers=am_headers())
    client.post("/alertmanager/webhook", data="{}", headers=am_headers("x"))
    before = client.get("/metrics").text
    assert "rules_engine_events_unprocessed 1.0" in before
    drain(app)
    metrics = client.get("/metrics").text
    assert 'rules_engine_workflows{state="PENDING_APPROVAL"} 1.0' in metrics
    for outcome in ("accepted", "invalid", "unauthorized"):
        assert f'rules_engine_webhook_requests_total{{outcome="{outcome}"}} 1.0' in metrics
    assert 'rules_engine_webhook_alerts_total{status="firing"} 1.0' in metrics
    document = client.get("/api/v1/openapi.json").json
    assert document["openapi"].startswith("3.") and "/api/v1/workflows/{workflow_id}/approve" in document["paths"]


def test_readiness_fails_when_the_store_is_gone(tmp_path):
    application = create_app(config(tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}"),
                             playbooks={"pb": playbook()}, start_runner=False)
    (tmp_path / "x.db").unlink()
    (tmp_path / "x.db").mkdir()  # the path is now a directory: the store cannot answer
    application.extensions["rules_engine"].runtime.store.dispose()
    response = application.test_client().get("/api/v1/ready")
    assert response.status_code == 503 and response.json["problems"][0].startswith("store")


def test_a_thousand_alert_payload_is_accepted_and_processed(client, app):
    alerts = [alert(instance=f"i{i}") for i in range(1000)]
    started = time.perf_counter()
    response = client.post("/alertmanager/webhook", data=payload(*alerts), headers=am_headers())
    ack = time.perf_counter() - started
    assert response.status_code == 200 and response.json["alerts"] == 1000
    assert ack < 2.0
    drain(app)
    with app.extensions["rules_engine"].runtime.store.read() as conn:
        assert len(st.list_workflows(conn, limit=2000)) == 1000


def test_the_background_runner_processes_and_executes(tmp_path):
    application = create_app(config(tmp_path), playbooks={"pb": playbook(dry_run=True)})
    client = application.test_client()
    try:
        client.post("/alertmanager/webhook", data=payload(alert()), headers=am_headers())
        deadline = time.time() + 10
        states = []
        while time.time() < deadline:
            states = [w["state"] for w in client.get("/api/v1/workflows", headers=op("viewer-token")).json["workflows"]]
            if states == [wf.COMPLETED]:
                break
            time.sleep(0.05)
        assert states == [wf.COMPLETED]
    finally:
        shutdown(application)


def test_config_errors_are_clear(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("listen: 127.0.0.1:1\noperators: [{name: a, token: {env: NOPE}, roles: [wizard]}]\n")
    with pytest.raises(ConfigError, match="unknown role"):
        load_config(path)
    path.write_text("bogus: 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_config(path)


# --- command line -------------------------------------------------------------------------------------------------
def test_workflows_cli_lists_shows_approves_and_rejects(tmp_path, app, client):
    from click.testing import CliRunner

    from rules_engine.cli import main

    client.post("/alertmanager/webhook", data=payload(alert(instance="i1"), alert(instance="i2")),
                headers=am_headers())
    drain(app)
    database = app.extensions["rules_engine"].config.database_url
    runner = CliRunner()
    listed = runner.invoke(main, ["workflows", "list", "--database", database, "--json"])
    assert listed.exit_code == 0, listed.output
    ids = [w["id"] for w in json.loads(listed.output)]
    assert len(ids) == 2
    approved = runner.invoke(main, ["workflows", "approve", ids[0], "--database", database, "--comment", "ok"])
    assert approved.exit_code == 0 and "APPROVED" in approved.output
    rejected = runner.invoke(main, ["workflows", "reject", ids[1], "--database", database, "--reason", "no"])
    assert rejected.exit_code == 0 and "REJECTED" in rejected.output
    again = runner.invoke(main, ["workflows", "approve", ids[1], "--database", database])
    assert again.exit_code != 0 and "cannot become APPROVED" in again.output
    shown = runner.invoke(main, ["workflows", "show", ids[0], "--database", database])
    body = json.loads(shown.output)
    assert body["state"] == wf.APPROVED and body["decided_by"].startswith("cli:")
    table = runner.invoke(main, ["workflows", "list", "--database", database, "--state", "REJECTED"])
    assert ids[1] in table.output and ids[0] not in table.output


def test_serve_refuses_to_start_without_credentials_or_with_broken_playbooks(tmp_path):
    from click.testing import CliRunner

    from rules_engine.cli import main

    path = tmp_path / "serve.yaml"
    path.write_text(f"database_url: sqlite:///{tmp_path / 'x.db'}\nplaybooks: [{REPO / 'rules' / 'playbooks'}]\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(path)])
    assert result.exit_code == 2 and "alertmanager_auth is required" in result.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "p.yaml").write_text("kind: Playbook\nname: p\nmatch: {}\nsteps: []\n")
    (tmp_path / "tok").write_text("t")
    path.write_text(f"database_url: sqlite:///{tmp_path / 'x.db'}\nplaybooks: [{tmp_path / 'bad'}]\n"
                    f"alertmanager_auth: {{bearer_token: {{file: {tmp_path / 'tok'}}}}}\n"
                    "operators: [{name: a, token: {file: " + str(tmp_path / "tok") + "}, roles: [admin]}]\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(path)])
    assert result.exit_code == 2 and "p.yaml" in result.output and "steps" in result.output


# --- shipped configuration ----------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parent.parent


def test_shipped_alertmanager_config_passes_amtool_and_routes_to_the_engine():
    import shutil
    import subprocess

    import yaml

    from tests.conftest import require_binary

    require_binary("amtool")
    path = REPO / "alertmanager" / "alertmanager.yml"
    checked = subprocess.run([shutil.which("amtool"), "check-config", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load(path.read_text())
    route = next(r for r in config["route"]["routes"] if r["receiver"] == "rules-engine")
    assert route["continue"] is True and {"alertname", "instance"} <= set(route["group_by"])
    webhook = next(r for r in config["receivers"] if r["name"] == "rules-engine")["webhook_configs"][0]
    assert webhook["url"].endswith("/alertmanager/webhook") and webhook["send_resolved"] is True
    assert webhook["http_config"]["authorization"]["credentials_file"]  # a file, never an inline secret
    # amtool routes a compiled alert (it carries rule_pack) to the engine.
    routed = subprocess.run([shutil.which("amtool"), "config", "routes", "test", f"--config.file={path}",
                             "rule_pack=vllm", "alertname=VLLMQueueBuildup"], capture_output=True, text=True)
    assert "rules-engine" in routed.stdout, routed.stdout + routed.stderr


def test_example_serve_config_is_valid():
    assert load_config(REPO / "alertmanager" / "serve.example.yaml").roles["admin"] == [
        "conservative", "moderate", "aggressive"]


def test_outbound_webhooks_on_workflow_state_changes(tmp_path):
    from rules_engine.playbooks.runner import deliver_notifications
    from tests.test_playbooks_orchestrator import running_orchestrator

    with running_orchestrator() as orch:
        application = create_app(config(tmp_path, notify_urls=[f"{orch.url}/hooks/workflows"]),
                                 playbooks={"pb": playbook()}, start_runner=False)
        client = application.test_client()
        client.post("/alertmanager/webhook", data=payload(alert()), headers=am_headers())
        drain(application)
        workflow_id = client.get("/api/v1/workflows", headers=op("viewer-token")).json["workflows"][0]["id"]
        client.post(f"/api/v1/workflows/{workflow_id}/reject", headers=op("senior-token"))
        rt = application.extensions["rules_engine"].runtime
        assert deliver_notifications(rt) == 2  # waiting for approval, then rejected
        assert deliver_notifications(rt) == 0  # delivered: not sent again
        shutdown(application)
    calls = sorted(orch.calls_to("/hooks/workflows"), key=lambda c: c.body["at"])  # sent concurrently
    assert [(c.body["from_state"], c.body["to_state"], c.body["actor"]) for c in calls] == [
        (None, wf.PENDING_APPROVAL, "alertmanager"), (wf.PENDING_APPROVAL, wf.REJECTED, "senior")]
    assert calls[0].body["alertname"] and calls[0].body["optimization_level"]


def test_oversized_payloads_get_413_and_alertname_filter(tmp_path):
    application = create_app(config(tmp_path, max_payload_bytes=2000), playbooks={"pb": playbook()},
                             start_runner=False)
    client = application.test_client()
    big = payload(*[alert(instance=f"i{i}") for i in range(20)])
    assert client.post("/alertmanager/webhook", data=big, headers=am_headers()).status_code == 413
    assert event_count(application) == 0
    client.post("/alertmanager/webhook", data=payload(alert()), headers=am_headers())
    drain(application)
    assert len(client.get("/api/v1/workflows?alertname=QueueBuildup", headers=op("viewer-token")).json["workflows"]) == 1
    assert client.get("/api/v1/workflows?alertname=Other", headers=op("viewer-token")).json["workflows"] == []
    shutdown(application)


# --- the prometheus: section --------------------------------------------------------------------------------------
def test_prometheus_section_its_shorthand_and_the_command_line_url(tmp_path):
    (tmp_path / "token").write_text("t0k\n")
    path = tmp_path / "serve.yaml"
    path.write_text(json.dumps({"prometheus": {"url": "http://mimir/prometheus", "bearer_token_file": str(
        tmp_path / "token"), "headers": {"X-Scope-OrgID": "t1"}}}))
    assert load_config(path).prometheus.timeout == 10  # a verify step gives up sooner than a backtest
    # `serve --prometheus URL` replaces the URL only: the file's token and tenant still apply.
    overridden = load_config(path, prometheus_url="http://other:9090")
    assert overridden.prometheus.url == "http://other:9090"
    assert overridden.prometheus.headers == {"X-Scope-OrgID": "t1"}
    assert prometheus_client(overridden).url == "http://other:9090"
    short = load_config(None, prometheus_url="http://prometheus:9090")
    assert short.prometheus.url == "http://prometheus:9090"
    older = ServerConfig.model_validate({"prometheus_url": "http://p:9090", "prometheus_timeout": 3})
    assert older.prometheus.timeout == 3
    assert prometheus_client(ServerConfig()) is None


@pytest.mark.parametrize("section, message", [
    ({"prometheus": {"url": "http://p", "timeout": "soon"}}, "prometheus.timeout: Input should be a valid number"),
    ({"prometheus": {"url": "http://p", "tenant": "t1"}}, "prometheus.tenant: unknown key"),
    ({"prometheus": {"url": "http://p", "bearer_token": "x"}}, "bearer_token: secrets are not written in the config"),
    ({"prometheus": {"url": "http://p", "basic_auth": "bob"}}, r"prometheus.basic_auth: .*must be \[user, password\]"),
    ({"prometheus": {"url": "http://p"}, "prometheus_url": "http://q"}, "give `prometheus` or its shorthand"),
])
def test_bad_prometheus_settings_name_the_field(tmp_path, section, message):
    path = tmp_path / "serve.yaml"
    path.write_text(json.dumps(section))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_prometheus_settings_checked_when_the_client_is_built_name_the_field():
    for section, message in [({"url": "http://p", "timeout": 0}, "prometheus: timeout must be positive"),
                             ({"url": "http://p", "bearer_token_file": "/nonexistent"},
                              "prometheus: cannot read bearer token file /nonexistent")]:
        with pytest.raises(ConfigError, match=message):
            prometheus_client(ServerConfig.model_validate({"prometheus": section}))
