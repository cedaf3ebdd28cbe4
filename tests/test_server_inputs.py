"""Every input of the HTTP API is answered with a 4xx naming what is wrong, never a 500; a store that cannot
write (locked, read-only, full) is a 503 that stores nothing, so Alertmanager retries the delivery.
"""
from __future__ import annotations

import contextlib
import http.client
import sqlite3
import threading
import time

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from werkzeug.serving import make_server

from rules_engine.server.app import create_app, shutdown
from tests.test_playbooks import alert, payload, playbook
from tests.test_server import am_headers, config, drain, event_count, op


@pytest.fixture
def app(tmp_path, database_url):
    application = create_app(config(tmp_path, database_url=database_url), playbooks={"pb": playbook()},
                             start_runner=False)
    yield application
    shutdown(application)


def pending_workflow(app) -> str:
    client = app.test_client()
    client.post("/alertmanager/webhook", data=payload(alert()), headers=am_headers())
    drain(app)
    return client.get("/api/v1/workflows", headers=op("viewer-token")).json["workflows"][0]["id"]


@pytest.mark.parametrize("body, problem", [
    ("[]", "body: must be a JSON object"), ('"x"', "body: must be a JSON object"), ("3", "body: must be a JSON object"),
    ("{not json", "body: must be a JSON object"), ('{"comment": 3}', "body.comment: must be a string"),
    ('{"reason": ["no"]}', "body.reason: must be a string"), ('{"comment": "a\\u0000b"}', "body.comment: contains a NUL"),
    ('{"comment": "\\ud800"}', "body.comment: is not valid Unicode"),
])
@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_decisions_need_an_object_with_text(app, decision, body, problem):
    workflow_id = pending_workflow(app)
    response = app.test_client().post(f"/api/v1/workflows/{workflow_id}/{decision}", data=body,
                                      headers={**op("senior-token"), "Content-Type": "application/json"})
    assert response.status_code == 400 and response.json["error"].startswith(problem), response.json
    approved = app.test_client().post(f"/api/v1/workflows/{workflow_id}/{decision}", json={"comment": "ok"},
                                      headers=op("senior-token"))
    assert approved.status_code == 200  # nothing was decided by the refused request


@pytest.mark.parametrize("path", ["/api/v1/audit", "/api/v1/workflows"])
def test_limit_is_a_positive_integer_and_clamped_to_its_maximum(app, path):
    client = app.test_client()
    pending_workflow(app)
    for bad in ("abc", "1e3", "-1", "0", "1.5", "", "²"):
        response = client.get(f"{path}?limit={bad}", headers=op("viewer-token"))
        assert response.status_code == 400 and response.json["error"].startswith("query.limit: must be"), bad
    for good in ("1", "0001", "10000000000000000000000", "9" * 5000):
        assert client.get(f"{path}?limit={good}", headers=op("viewer-token")).status_code == 200, good
    assert len(client.get(f"{path}?limit=1", headers=op("viewer-token")).json[path.rsplit("/", 1)[1]]) == 1


@pytest.mark.parametrize("url, location", [
    ("/api/v1/workflows?instance=a%00b", "query.instance"), ("/api/v1/workflows?alertname=%00", "query.alertname"),
    ("/api/v1/workflows?playbook=%00", "query.playbook"), ("/api/v1/audit?workflow_id=%00", "query.workflow_id"),
    ("/api/v1/workflows/a%00b", "path.id"),
])
def test_nul_in_a_query_or_path_gets_400_on_every_store(app, url, location):
    response = app.test_client().get(url, headers=op("viewer-token"))
    assert response.status_code == 400 and response.json["error"].startswith(f"{location}: contains a NUL")
    decided = app.test_client().post("/api/v1/workflows/a%00b/approve", headers=op("senior-token"))
    assert decided.status_code == 400 and decided.json["error"].startswith("path.id")


@contextlib.contextmanager
def serving(app):
    """The app behind a real HTTP server on a loopback port (the test client cannot send a chunked body)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def post_chunked(port: int, body: bytes) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/alertmanager/webhook", body=iter([body[i:i + 500]
                                                                     for i in range(0, len(body), 500)]),
                           headers=am_headers(), encode_chunked=True)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_an_oversized_chunked_body_gets_413(tmp_path):
    application = create_app(config(tmp_path, max_payload_bytes=2000), playbooks={"pb": playbook()},
                             start_runner=False)
    big = payload(*[alert(instance=f"i{i}") for i in range(20)]).encode()
    small = payload(alert()).encode()
    try:
        with serving(application) as port:
            status, body = post_chunked(port, big)
            assert status == 413 and b"payload larger than 2000 bytes" in body
            assert post_chunked(port, small)[0] == 200
        assert event_count(application) == 1
    finally:
        shutdown(application)


# --- the store cannot write ---------------------------------------------------------------------------------------
def sqlite_app(tmp_path, url: str | None = None, **overrides):
    url = url or f"sqlite:///{tmp_path / 'engine.db'}"
    return create_app(config(tmp_path, database_url=url, **overrides), playbooks={"pb": playbook()},
                      start_runner=False)


def test_a_locked_store_gets_503_and_the_event_is_not_stored_later(tmp_path):
    application = sqlite_app(tmp_path, store_lock_timeout=0.5)
    holder = sqlite3.connect(tmp_path / "engine.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # another process's writer, holding the lock past our timeout
        response = application.test_client().post("/alertmanager/webhook", data=payload(alert()),
                                                  headers=am_headers())
        assert response.status_code == 503, response.json
        assert "database is locked" in response.json["error"] and "nothing was stored" in response.json["error"]
        holder.execute("ROLLBACK")
        # The committer is idle again: the refused event was not committed behind the 503's back.
        assert application.test_client().post("/alertmanager/webhook", data=payload(alert(instance="i2")),
                                              headers=am_headers()).status_code == 200
        assert event_count(application) == 1
    finally:
        holder.close()
        shutdown(application)


def test_a_commit_that_fails_gets_503_not_an_early_200(tmp_path):
    """The INSERT succeeds and only the COMMIT fails (an fsync error, a lost connection): the request must still
    be waiting for the commit, so it answers 503, not a 200 given before the event was durable. The commit is
    slow as well as failing, so a 200 released before it is seen every run, not only when threads race."""
    application = sqlite_app(tmp_path)
    store = application.extensions["rules_engine"].runtime.store

    @event.listens_for(store.engine, "commit")
    def _commit_fails(conn):
        time.sleep(0.5)
        raise OperationalError("COMMIT", None, sqlite3.OperationalError("disk I/O error"))

    try:
        response = application.test_client().post("/alertmanager/webhook", data=payload(alert()),
                                                  headers=am_headers())
        assert response.status_code == 503, response.json
        assert "disk I/O error" in response.json["error"] and "nothing was stored" in response.json["error"]
        event.remove(store.engine, "commit", _commit_fails)
        assert event_count(application) == 0
    finally:
        shutdown(application)


def test_a_read_only_store_gets_503(tmp_path, caplog):
    shutdown(sqlite_app(tmp_path))  # create the schema
    application = sqlite_app(tmp_path, url=f"sqlite:///file:{tmp_path / 'engine.db'}?mode=ro&uri=true")
    try:
        response = application.test_client().post("/alertmanager/webhook", data=payload(alert()),
                                                  headers=am_headers())
        assert response.status_code == 503 and "readonly database" in response.json["error"]
        assert "could not persist a webhook event: OperationalError: attempt to write a readonly" in caplog.text
        assert event_count(application) == 0
    finally:
        shutdown(application)


def test_a_full_store_gets_503_and_stores_nothing_half_way(tmp_path):
    application = sqlite_app(tmp_path)
    store = application.extensions["rules_engine"].runtime.store
    client = application.test_client()
    assert client.post("/alertmanager/webhook", data=payload(alert()), headers=am_headers()).status_code == 200

    @event.listens_for(store.engine, "connect")
    def _no_room(dbapi_connection, _record):  # SQLite refuses to grow the file: a real SQLITE_FULL
        dbapi_connection.execute("PRAGMA max_page_count = 1")  # clamps to the pages already used

    store.engine.dispose()
    big = payload(*[alert(instance=f"instance-{i}") for i in range(500)])
    response = client.post("/alertmanager/webhook", data=big, headers=am_headers())
    assert response.status_code == 503 and "database or disk is full" in response.json["error"], response.json
    event.remove(store.engine, "connect", _no_room)
    store.engine.dispose()
    assert event_count(application) == 1
    drain(application)  # and the store is still consistent: the first event is processed
    assert client.get("/api/v1/ready").status_code == 200
    shutdown(application)
