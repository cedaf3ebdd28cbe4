"""The live simulated fleet: a scrape at time t is the simulator's own history at t (same counters, same
incidents), an instance that is down is absent, and incident schedules count from the serve start."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import time

import pytest
import requests

from rules_engine.simulate import FleetSpec, Incident
from rules_engine.simulate.live import LiveFleet, schedule
from tests import processes
from tests.processes import wait_for

START = 1_764_540_000.0
SPEC = FleetSpec(start=START, end=START + 1800, instances=2, step=10, seed=3, gap_probability=0.0,
                 long_gaps_per_day=0.0, restarts_per_day=0.0)
RESTART = Incident("restart", ("vllm-1:8000",), start="20m", duration=60)


def samples(text: str, family: str, instance: str) -> list[str]:
    pattern = re.compile(rf'^{re.escape(family)}\{{[^}}]*instance="{re.escape(instance)}"[^}}]*\}} (\S+)', re.M)
    return pattern.findall(text)


@pytest.fixture(scope="module")
def fleet() -> LiveFleet:
    return LiveFleet(SPEC, [RESTART])


def last_values(text: str) -> dict[str, str]:
    """series (name and labels) -> value of its last sample in an exposition, timestamps dropped."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit("} ", 1) if "} " in line else line.split(" ", 1)
            found[series] = value.split()[0]
    return found


def test_a_scrape_is_the_history_at_that_time_for_every_server_kind(tmp_path):
    mixed = LiveFleet(dataclasses.replace(SPEC, instances=1, tgi_instances=1, sglang_instances=1))
    times = mixed.series[0].times
    now = float(times[40]) + 3  # between two steps: each instance's latest step before it answers
    mixed.history_until(tmp_path / "h.om", now)
    history = last_values((tmp_path / "h.om").read_text())
    text = mixed.exposition(now).decode()
    scrape = last_values(text)
    assert {series: history[series] for series in scrape} == scrape
    assert set(scrape) == set(history)  # nobody is down at this step: every series is in the scrape
    for prefix in ("vllm:", "tgi_", "sglang:"):
        assert any(series.startswith(prefix) for series in scrape), prefix
    assert not re.search(r" \d{10}$", text, re.M)  # no timestamps: Prometheus stamps its scrape time
    assert text.endswith("# EOF\n")


def test_a_down_instance_is_absent_and_its_counters_restart(fleet):
    down = START + 20 * 60 + 30
    scrape = fleet.exposition(down).decode()
    assert samples(scrape, "vllm:prompt_tokens_total", "vllm-1:8000") == []
    assert samples(scrape, "vllm:prompt_tokens_total", "vllm-0:8000")
    before = float(samples(fleet.exposition(down - 60).decode(), "vllm:prompt_tokens_total", "vllm-1:8000")[0])
    after = float(samples(fleet.exposition(down + 60).decode(), "vllm:prompt_tokens_total", "vllm-1:8000")[0])
    assert after < before


def test_outside_the_simulated_range_is_an_error(fleet):
    with pytest.raises(ValueError, match="outside the simulated range"):
        fleet.exposition(SPEC.end + 1)


def test_schedule_counts_offsets_from_the_serve_start_and_repeats():
    incidents = [Incident("queue_buildup", ("vllm-0:8000",), start="2m", duration=60),
                 Incident("ttft_spike", ("vllm-1:8000",), start=START + 100)]
    scheduled = schedule(incidents, START, START + 1500, every=600)
    assert [(i.kind, i.start) for i in scheduled] == [
        ("queue_buildup", START + 120), ("queue_buildup", START + 720), ("queue_buildup", START + 1320),
        ("ttft_spike", START + 100), ("ttft_spike", START + 700), ("ttft_spike", START + 1300)]
    assert [i.start for i in schedule(incidents, START, START + 1500)] == [START + 120, START + 100]


@pytest.mark.integration
def test_simulate_serve_writes_history_and_serves_the_fleet_with_its_incident(tmp_path):
    port = processes.free_port()
    (tmp_path / "incidents.yaml").write_text("- {kind: queue_buildup, instance: vllm-1, start: 5s, duration: 10m, "
                                             "magnitude: 2.0}\n")
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "rules_engine.cli", "simulate", "--serve", f"127.0.0.1:{port}",
                             "--scenario", "none", "--instances", "2", "--duration", "30m", "--horizon", "1h",
                             "--step", "1", "--out", str(tmp_path / "history.om"),
                             "--incidents", str(tmp_path / "incidents.yaml")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        processes.wait_ready(proc, f"http://127.0.0.1:{port}/-/ready", tmp_path / "serve.log", "simulate --serve", 120)
        assert (tmp_path / "history.om").read_bytes().endswith(b"# EOF\n")
        truth = requests.get(f"http://127.0.0.1:{port}/truth", timeout=5).json()
        assert [(i["kind"], i["instance"]) for i in truth["incidents"]] == [("queue_buildup", "vllm-1:8000")]

        def waiting() -> float:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            return float(samples(text, "vllm:num_requests_waiting", "vllm-1:8000")[0])

        started = time.monotonic()
        wait_for("the queue of vllm-1 to build up live", lambda: waiting() > 20, timeout=60, interval=1)
        assert time.monotonic() - started < 60
    finally:
        processes.stop_process_group(proc)
        log.close()
    assert "serving 2 instances live" in (tmp_path / "serve.log").read_text()
