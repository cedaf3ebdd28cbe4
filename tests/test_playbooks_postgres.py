"""The store on a real PostgreSQL: the same intake idempotency, concurrency and append-only audit as on SQLite.

A throwaway cluster (initdb in a temp dir, run as the `postgres` user since the server refuses root, TCP on a
free loopback port, trust auth) is started for the module. Skipped where the PostgreSQL server binaries or the
psycopg driver are not installed: SQLite is the default store, PostgreSQL an option.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DatabaseError

from rules_engine.playbooks import store as st
from rules_engine.playbooks import workflow as wf
from rules_engine.playbooks.executor import claim_next, run_workflow
from tests import processes
from tests.test_playbooks import alert, drain_concurrently_into_one_workflow, ingest, playbook, runtime
from tests.test_playbooks_orchestrator import running_orchestrator

pytestmark = pytest.mark.integration


def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return os.path.dirname(found[-1]) if found else None


@pytest.fixture(scope="module")
def postgres_url():
    bindir = _pg_bin()
    if bindir is None:
        message = "PostgreSQL server binaries not installed (apt-get install -y postgresql)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI installs it", pytrace=False)
        pytest.skip(message)
    pytest.importorskip("psycopg", reason="psycopg not installed (pip install 'psycopg[binary]')")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no `postgres` system user to run the server as")
    tmp = tempfile.mkdtemp(prefix="pg-")
    os.chown(tmp, user.pw_uid, user.pw_gid)
    data = os.path.join(tmp, "data")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*as_postgres, f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)
    port = processes.free_port()
    log = os.path.join(tmp, "postgres.log")
    proc = subprocess.Popen([*as_postgres, f"{bindir}/postgres", "-D", data, "-p", str(port), "-h", "127.0.0.1",
                             "-k", tmp, "-c", "fsync=off"], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([f"{bindir}/pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start: {open(log).read()[-2000:]}")
            time.sleep(0.1)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"  # the plain URL an operator writes
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def pg_store(postgres_url):
    store = st.open_store(postgres_url)
    yield store
    with store.engine.begin() as conn:  # a clean schema for the next test (the audit trigger forbids DELETE)
        conn.execute(text("DROP TABLE IF EXISTS events, episodes, workflows, steps, audit, notifications CASCADE"))
    store.dispose()


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
