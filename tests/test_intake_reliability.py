"""One bad alert must not stop the intake, on SQLite and on PostgreSQL, at three depths:
the webhook refuses what the store cannot hold (4xx naming the field, never a 200); an event the store still
refuses in the intake is retried a bounded number of times, then quarantined and audited while the queue moves on;
and /api/v1/ready says when the intake is stuck, and why.
"""
from __future__ import annotations

import json
import random
import time

import pytest
from sqlalchemy import create_engine, select, text, update

from rules_engine.playbooks import store as st
from rules_engine.playbooks.intake import process_next_event
MAX_ATTEMPTS = 3
from rules_engine.server.app import create_app, shutdown
from tests.test_playbooks import alert, payload, playbook, runtime
from tests.test_server import am_headers, config, drain, event_count


@pytest.fixture
def app(tmp_path, database_url):
    application = create_app(config(tmp_path, database_url=database_url, intake_stall_seconds=60),
                             playbooks={"pb": playbook()}, start_runner=False)
    yield application
    shutdown(application)


def with_alert(**changes) -> str:
    """A one-alert payload with fields of its alert replaced (`labels` merged)."""
    body = json.loads(payload(alert()))
    target = body["alerts"][0]
    target["labels"].update(changes.pop("labels", {}))
    target.update(changes)
    return json.dumps(body)


UNSTORABLE = {
    "NUL in alertname": (with_alert(labels={"alertname": "Queue\x00Buildup"}), "alerts[0].labels.alertname", "NUL"),
    "NUL in a label name": (with_alert(labels={"inst\x00ance": "i1"}), "[key]", "NUL"),
    "NUL in an annotation": (with_alert(annotations={"summary": "\x00"}), "alerts[0].annotations.summary", "NUL"),
    "NUL in generatorURL": (with_alert(generatorURL="http://p/\x00"), "alerts[0].generatorURL", "NUL"),
    "65-character fingerprint": (with_alert(fingerprint="f" * 65), "alerts[0].fingerprint", "at most 64"),
    "300-byte label name": (with_alert(labels={"n" * 300: "v"}), "[key]", "at most 256"),
    "3000-byte label value": (with_alert(labels={"instance": "é" * 1500}), "alerts[0].labels.instance",
                              "at most 2048"),
    "startsAt past year 9999 in UTC": (with_alert(startsAt="9999-12-31T23:00:00-05:00"), "alerts[0].startsAt",
                                       "outside years 0001-9999"),
    "NUL in groupKey": (json.dumps({**json.loads(payload(alert())), "groupKey": "{}:\x00"}), "groupKey", "NUL"),
    "2049-byte ASCII label value": (with_alert(labels={"model": "m" * 2049}), "alerts[0].labels.model",
                                    "at most 2048"),
    "300-byte commonLabels name": (json.dumps({**json.loads(payload(alert())), "commonLabels": {"n" * 300: "v"}}),
                                   "commonLabels.", "at most 256"),
}


@pytest.mark.parametrize("body, field, reason", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_what_the_store_cannot_hold_gets_400_naming_the_field(app, body, field, reason):
    client = app.test_client()
    response = client.post("/alertmanager/webhook", data=body, headers=am_headers())
    assert response.status_code == 400, response.json
    assert any(field in problem and reason in problem for problem in response.json["problems"]), response.json
    assert event_count(app) == 0


def test_values_at_the_limits_are_stored_and_processed(app):
    """The limits are what the store holds: a label value of 2048 bytes of incompressible text is a workflow's
    series key on PostgreSQL's btree index, a 64-character fingerprint fits its column."""
    rng = random.Random(7)
    value = "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(682)) + "xy"  # 682 x 3 + 2 = 2048 bytes
    assert len(value.encode()) == 2048
    body = with_alert(labels={"instance": value, "n" * 256: "v", "model": "m" * 2048}, fingerprint="f" * 64)
    response = app.test_client().post("/alertmanager/webhook", data=body, headers=am_headers())
    assert response.status_code == 200, response.json
    drain(app)
    with app.extensions["rules_engine"].runtime.store.read() as conn:
        assert conn.execute(select(st.events.c.error)).scalar_one() is None
        assert [w.instance for w in st.list_workflows(conn)] == [value]


def refuse_alertname(store: st.Store, alertname: str) -> None:
    """Make the store itself refuse episodes of one alertname, as it refuses a value it cannot hold."""
    with store.engine.begin() as conn:
        if store.dialect == "sqlite":
            conn.exec_driver_sql(f"CREATE TRIGGER refuse BEFORE INSERT ON episodes WHEN NEW.alertname = "
                                 f"'{alertname}' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
        else:
            conn.exec_driver_sql(f"CREATE OR REPLACE FUNCTION refuse() RETURNS trigger AS $$ BEGIN IF NEW.alertname"
                                 f" = '{alertname}' THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; "
                                 "END; $$ LANGUAGE plpgsql")
            conn.exec_driver_sql("CREATE TRIGGER refuse BEFORE INSERT ON episodes FOR EACH ROW "
                                 "EXECUTE FUNCTION refuse()")


def test_an_event_the_store_refuses_is_quarantined_and_the_queue_moves_on(database_url):
    store = st.open_store(database_url)
    try:
        refuse_alertname(store, "Poison")
        rt = runtime(store, playbook())
        poison = st.insert_event(store, payload(alert(alertname="Poison")))
        good = st.insert_event(store, payload(alert(instance="i2")))
        rounds = 0
        while process_next_event(rt):
            rounds += 1
            assert rounds <= MAX_ATTEMPTS, "the poison event is retried without bound"
        with store.read() as conn:
            rows = {r.id: r for r in conn.execute(select(st.events)).all()}
            assert [w.instance for w in st.list_workflows(conn)] == ["i2"]
            failed = [e for e in st.audit_entries(conn) if e["action"] == "event_failed"]
        assert rows[good].processed_at is not None and rows[good].error is None
        assert rows[poison].processed_at is not None and rows[poison].attempts == MAX_ATTEMPTS
        assert "refused by the test" in rows[poison].error and "[SQL" not in rows[poison].error
        assert [(e["detail"]["event_id"], e["detail"]["attempts"]) for e in failed] == [(poison, MAX_ATTEMPTS)]
    finally:
        store.dispose()


def test_events_acknowledged_before_the_limits_existed_are_quarantined(database_url):
    """Events with a NUL alertname or an over-long fingerprint, stored by a receiver without these checks, fail
    once with the reason (they can never be stored) and the next event is processed."""
    store = st.open_store(database_url)
    try:
        rt = runtime(store, playbook())
        nul = st.insert_event(store, with_alert(labels={"alertname": "Queue\x00Buildup"}))
        long_fingerprint = st.insert_event(store, with_alert(fingerprint="f" * 65))
        st.insert_event(store, payload(alert(instance="i2")))
        while process_next_event(rt):
            pass
        with store.read() as conn:
            errors = dict(conn.execute(select(st.events.c.id, st.events.c.error)).all())
            assert st.unprocessed_event_count(conn) == 0
            assert [w.instance for w in st.list_workflows(conn)] == ["i2"]
        assert "NUL" in errors[nul] and "at most 64" in errors[long_fingerprint]
    finally:
        store.dispose()


def test_readiness_says_when_the_intake_is_stuck(app):
    client = app.test_client()
    assert client.get("/api/v1/ready").status_code == 200
    event_id = client.post("/alertmanager/webhook", data=payload(alert()), headers=am_headers()).json["event_id"]
    assert client.get("/api/v1/ready").json["events_unprocessed"] == 1  # young: still ready
    store = app.extensions["rules_engine"].runtime.store
    with store.write() as conn:  # as if nothing had processed it for an hour
        conn.execute(update(st.events).values(received_at=time.time() - 3600))
    response = client.get("/api/v1/ready")
    assert response.status_code == 503
    assert any(p.startswith("intake stalled: 1 event(s) unprocessed") and f"event {event_id}" in p
               and "limit 60s" in p for p in response.json["problems"]), response.json
    drain(app)
    assert client.get("/api/v1/ready").status_code == 200


def test_readiness_says_when_intake_rounds_keep_failing(tmp_path, database_url):
    application = create_app(config(tmp_path, database_url=database_url, poll_interval=0.05),
                             playbooks={"pb": playbook()})
    try:
        client = application.test_client()
        assert client.get("/api/v1/ready").status_code == 200
        other = create_engine(application.extensions["rules_engine"].runtime.store.engine.url)
        with other.begin() as conn:  # the intake's queue is gone: every round fails
            conn.execute(text("DROP TABLE events"))
        other.dispose()
        deadline = time.monotonic() + 30
        while not any(p.startswith("intake: the last") for p in client.get("/api/v1/ready").json.get("problems", [])):
            assert time.monotonic() < deadline, "readiness never reported the failing intake"
            application.extensions["rules_engine"].runner.rt.stop.wait(0.1)
        problems = client.get("/api/v1/ready").json["problems"]
        assert any("events" in p for p in problems if p.startswith("intake: the last")), problems
    finally:
        shutdown(application)
