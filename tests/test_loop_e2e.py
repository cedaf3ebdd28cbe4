"""The no-Docker loop end to end (`scripts/loop.py`, short intervals): a live simulated incident's metric ->
Prometheus (generated rules) -> Alertmanager -> the person's receiver, and -> `rules-engine serve`'s webhook -> a
playbook workflow, approved and run (dry run). Prints the time of every hop."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import requests

from tests import processes
from tests.conftest import require_binary
from tests.processes import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
THRESHOLD = 20  # the queue rule's `above` in PACK
PACK = ROOT / "docs" / "loop" / "fast-pack.yaml"  # the shipped queue rule with test-sized windows, and a trend rule
INCIDENTS = ROOT / "docs" / "loop" / "incidents.yaml"


def parse(text: str) -> float:
    return pd.Timestamp(text).timestamp()  # RFC 3339 with up to nanoseconds, as Prometheus and Alertmanager write


def iso(seconds: float) -> str:
    return pd.Timestamp(seconds, unit="s").strftime("%H:%M:%S.%f")[:-3] + "Z"


@pytest.fixture
def loop(tmp_path):
    for binary in (processes.PROMETHEUS, processes.ALERTMANAGER, processes.PROMTOOL):
        require_binary(binary)
    assert f"above: {THRESHOLD}\n" in PACK.read_text()
    work = tmp_path / "loop"
    log = open(tmp_path / "loop.log", "wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "loop.py"), "--rules", str(PACK),
                             "--playbooks", str(ROOT / "rules"), "--incidents", str(INCIDENTS),
                             "--instances", "2", "--history", "15m", "--horizon", "1h", "--step", "1s",
                             "--scrape-interval", "1s", "--interval", "1s", "--fast", "--workdir", str(work)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        state = wait_for("the loop to come up", lambda: proc.poll() is None and (work / "loop.json").is_file()
                         and json.loads((work / "loop.json").read_text()), timeout=300, interval=0.5)
        yield state, tmp_path / "loop.log"
    finally:
        processes.stop_process_group(proc, 30)  # the loop and every process it started share its group
        log.close()
    for pid in state["pids"].values():  # nothing outlives the loop
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_an_incident_reaches_a_person_and_a_playbook(loop):
    state, loop_log = loop
    urls, token = state["urls"], state["operator_token"]
    truth = requests.get(f"{urls['exporter']}/truth", timeout=5).json()
    incident = next(i for i in truth["incidents"] if i["instance"] == "vllm-1:8000")
    auth = {"Authorization": f"Bearer {token}"}
    person_log = Path(state["person_log"])

    def paged(alertname: str = "VLLMQueueBuildup"):
        if not person_log.is_file():
            return None
        for line in person_log.read_text().splitlines():
            entry = json.loads(line)
            for alert in entry["notification"]["alerts"]:
                if alert["labels"].get("alertname") == alertname and alert["status"] == "firing":
                    return entry["received"], alert
        return None

    def workflow(*states):
        listed = requests.get(f"{urls['serve']}/api/v1/workflows", headers=auth, timeout=5).json()["workflows"]
        return next((w for w in listed if w["alertname"] == "VLLMQueueBuildup" and w["state"] in states), None)

    received, alert = wait_for("the person's receiver to be paged", paged, timeout=240, interval=0.5)
    assert alert["labels"]["instance"] == "vllm-1:8000" and alert["labels"]["rule_pack"] == "loop"
    # serve runs with dry_run (no orchestrator here): a dry run needs no approval and records what it would do.
    done = wait_for("the playbook workflow to run", lambda: workflow("COMPLETED"), timeout=60, interval=0.5)
    detail = requests.get(f"{urls['serve']}/api/v1/workflows/{done['id']}", headers=auth, timeout=5).json()
    assert detail["playbook"] == "vllm-scale-out" and detail["dry_run"] is True
    acted = next(s for s in detail["steps"] if s["name"] == "scale-out")
    assert acted["state"] == "SUCCEEDED" and acted["output"]["would_send"]["json"]["instance"] == "vllm-1:8000"
    started = detail

    # The hops, from the parts' own records.
    prom = urls["prometheus"]
    start = parse(incident["start"])
    window = f"{int(received - start) + 10}s"

    def samples(selector: str) -> list[tuple[float, float]]:  # raw samples: scrape and evaluation timestamps
        result = requests.get(f"{prom}/api/v1/query", params={"query": f"{selector}[{window}]", "time": received},
                              timeout=10).json()["data"]["result"]
        return [(float(t), float(v)) for series in result for t, v in series["values"]]

    scraped = [t for t, v in samples('vllm:num_requests_waiting{instance="vllm-1:8000"}') if t >= start and v > THRESHOLD]
    firing = [t for t, _ in samples('ALERTS{alertname="VLLMQueueBuildup",alertstate="firing",instance="vllm-1:8000"}')]
    active = [a for a in requests.get(f"{prom}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
              if a["labels"]["alertname"] == "VLLMQueueBuildup"]
    in_am = [a for a in requests.get(f"{urls['alertmanager']}/api/v2/alerts", timeout=5,
                                     params={"filter": 'alertname="VLLMQueueBuildup"'}).json()]
    hops = [
        ("incident starts (simulated)", start),
        (f"metric scraped above {THRESHOLD} (first such sample in Prometheus)", min(scraped)),
        ("alert pending in Prometheus (activeAt)", min(parse(a["activeAt"]) for a in active)),
        ("alert firing in Prometheus (first ALERTS sample)", min(firing)),
        ("alert in Alertmanager (its startsAt, as Prometheus sent it)", min(parse(a["startsAt"]) for a in in_am)),
        ("person's receiver paged", received),
        ("webhook -> workflow created in serve", parse(started["created_at"])),
        ("playbook step scale-out finished (dry run)", parse(acted["finished_at"])),
    ]
    if state["monitor"]:  # the engine-only rule: monitor -> Alertmanager -> the person
        monitored, alert = wait_for("the person to be paged for the monitor's trend alert",
                                    lambda: paged("VLLMQueueGrowing"), timeout=120, interval=0.5)
        assert alert["labels"]["instance"] == "vllm-1:8000"
        hops += [("monitor's trend alert starts (startsAt)", parse(alert["startsAt"])),
                 ("person's receiver paged for it", monitored)]
    print("\nhop timestamps (UTC), seconds since the incident started:")
    for name, when in hops:
        print(f"  {iso(when)}  +{when - start:6.1f}s  {name}")
    times = [when for _, when in hops[:8]]
    assert times[1] <= times[3] <= times[5] and times[3] <= times[6] <= times[7], hops
    assert "PAGE firing: VLLMQueueBuildup vllm-1:8000" in loop_log.read_text()
    # Prometheus scrapes the live fleet, serve and (where this checkout has it) the monitor.
    up = {r["metric"]["job"]: r["value"][1] for r in requests.get(
        f"{prom}/api/v1/query", params={"query": "up"}, timeout=5).json()["data"]["result"]}
    expected_jobs = {"vllm", "rules-engine"} | ({"rules-engine-monitor"} if state["monitor"] else set())
    assert up == {job: "1" for job in expected_jobs}, up
