"""Shared pytest fixtures: real Prometheus / Alertmanager / promtool on loopback (see tests/processes.py).

A missing binary skips the test with a reason on a developer machine, but fails it under CI (`CI` set), where
the binaries are part of the contract and a silent skip would hide a broken install step.
"""
from __future__ import annotations

import contextlib
import os
import pwd
from typing import Callable, Iterator

import pytest
from sqlalchemy import create_engine, text

from rules_engine.playbooks import store as st
from tests import processes

# Alertmanager config that accepts alerts and routes them nowhere: enough for API-level tests.
NULL_ALERTMANAGER_CONFIG = """\
route:
  receiver: "null"
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: "null"
"""


def require_binary(name: str) -> None:
    """Skip (developer machine) or fail (CI) when a binary the test needs is not on PATH."""
    if processes.have_binary(name):
        return
    message = f"`{name}` not found on PATH (apt-get install -y prometheus prometheus-alertmanager)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must have it", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def promtool_bin() -> str:
    require_binary(processes.PROMTOOL)
    return processes.PROMTOOL


@pytest.fixture
def start_prometheus() -> Iterator[Callable[..., processes.RunningPrometheus]]:
    """Factory: `start_prometheus(data_dir=..., rule_files=[...], ...)` -> RunningPrometheus, stopped at teardown.
    Takes the keyword arguments of `processes.running_prometheus`."""
    require_binary(processes.PROMETHEUS)
    with contextlib.ExitStack() as stack:
        yield lambda **kwargs: stack.enter_context(processes.running_prometheus(**kwargs))


@pytest.fixture
def start_alertmanager() -> Iterator[Callable[..., processes.RunningAlertmanager]]:
    """Factory: `start_alertmanager(config, peers=...)` -> RunningAlertmanager, stopped at teardown."""
    require_binary(processes.ALERTMANAGER)
    with contextlib.ExitStack() as stack:
        yield lambda config=NULL_ALERTMANAGER_CONFIG, **kwargs: stack.enter_context(
            processes.running_alertmanager(config, **kwargs))


@pytest.fixture
def prometheus(start_prometheus) -> processes.RunningPrometheus:
    """An empty Prometheus (no scrape targets, no rules) on a fresh temp data dir."""
    return start_prometheus()


@pytest.fixture
def alertmanager(start_alertmanager) -> processes.RunningAlertmanager:
    """An Alertmanager with a route to a null receiver, clustering off."""
    return start_alertmanager()


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster for the session (tests/processes.running_postgres, fsync off). Skipped where
    the server binaries or psycopg are not installed: SQLite is the default store, PostgreSQL an option."""
    if processes.postgres_bindir() is None:
        message = "PostgreSQL server binaries not installed (apt-get install -y postgresql)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI installs it", pytrace=False)
        pytest.skip(message)
    pytest.importorskip("psycopg", reason="psycopg not installed (pip install 'psycopg[binary]')")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no `postgres` system user to run the server as")
    with processes.running_postgres(fsync=False) as url:
        yield url


def drop_schema(url: str) -> None:
    """A clean schema for the next test (the audit trigger forbids DELETE)."""
    engine = create_engine("postgresql+psycopg://" + url.split("://", 1)[1])
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS events, episodes, workflows, steps, audit, notifications, "
                          "notification_deliveries, analysis_jobs CASCADE"))
    engine.dispose()


@pytest.fixture
def pg_store(postgres_url):
    store = st.open_store(postgres_url)
    yield store
    store.dispose()
    drop_schema(postgres_url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> Iterator[str]:
    """The store URL of each supported dialect, empty at the start of the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'engine.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    drop_schema(url)
