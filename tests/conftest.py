"""Shared pytest fixtures: real Prometheus / Alertmanager / promtool on loopback (see tests/processes.py).

A missing binary skips the test with a reason on a developer machine, but fails it under CI (`CI` set), where
the binaries are part of the contract and a silent skip would hide a broken install step.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

import pytest

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
