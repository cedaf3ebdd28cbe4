"""The store on a real PostgreSQL: the same intake idempotency, concurrency and append-only audit as on SQLite.

The throwaway cluster and the `pg_store` fixture are in tests/conftest.py.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import DatabaseError

from rules_engine.playbooks import store as st
from rules_engine.playbooks import workflow as wf
from rules_engine.playbooks.executor import claim_next, run_workflow
from tests.conftest import drop_schema
from tests.test_playbooks import alert, drain_concurrently_into_one_workflow, ingest, playbook, runtime
from tests.test_playbooks_orchestrator import running_orchestrator

pytestmark = pytest.mark.integration


def test_concurrent_receivers_on_postgres_start_one_workflow(pg_store, postgres_url):
    stores = [pg_store] + [st.open_store(postgres_url) for _ in range(3)]
    drain_concurrently_into_one_workflow(stores)
    with pg_store.read() as conn:
        assert st.unprocessed_event_count(conn) == 0
        assert conn.execute(select(st.episodes.c.deliveries)).scalar_one() == 20
    for s in stores[1:]:
        s.dispose()


def test_workflow_runs_and_audit_is_append_only_on_postgres(pg_store):
    with running_orchestrator() as orch:
        rt = runtime(pg_store, playbook(), variables={"orchestrator_url": orch.url})
        workflow_id = ingest(rt, alert()).created[0]
        wf.approve(pg_store, workflow_id, "alice")
        assert claim_next(rt) == workflow_id
        assert run_workflow(rt, workflow_id) == wf.COMPLETED
        resolved = ingest(rt, alert(status="resolved"))
    assert resolved.cancelled == []  # only workflows still waiting for approval are cancelled
    assert len(orch.calls_to("/v1/scale")) == 1
    with pytest.raises(DatabaseError, match="append-only"):
        with pg_store.write() as conn:
            conn.execute(update(st.audit).values(actor="someone else"))
    with pg_store.read() as conn:
        assert conn.execute(select(func.count()).select_from(st.audit)).scalar_one() > 3


def test_receivers_opening_the_store_at_once_all_start(postgres_url):
    """gunicorn boots its workers at the same moment and each opens the store, which creates the schema and
    replaces the audit trigger's function: on PostgreSQL two such DDL transactions at once failed one of them
    ("tuple concurrently updated"), that worker failed to boot and gunicorn stopped the whole receiver. Both on an
    empty database and on one whose schema exists (the common case: `serve` opens it once before forking)."""
    try:
        for _ in range(2):
            barrier = threading.Barrier(4)

            def open_at_once() -> st.Store:
                barrier.wait()
                return st.open_store(postgres_url)

            with ThreadPoolExecutor(4) as pool:
                stores = [future.result() for future in [pool.submit(open_at_once) for _ in range(4)]]
            for store in stores:
                store.dispose()
    finally:
        drop_schema(postgres_url)
