"""Load with accounting: a real Alertmanager delivers thousands of alerts to a real `rules-engine serve` that is
killed -9 and restarted twice during the delivery; afterwards every number must add up.

Why this test exists: each reliability property (persist before 2xx, idempotency per episode, resumable intake)
has its own small test, but only a run at volume with crashes in the middle shows that they hold together, that
nothing is lost in the gaps between them, and that the receiver does not grow while it works. The accounting:

- alerts sent = alerts stored: every alert Alertmanager accepted is one episode record, its fingerprint one of
  ours, none missing, none twice; every delivery (event) stored is processed, and the episodes count every alert
  of every event (sum of `deliveries` = sum of `alert_count`), so duplicates are counted, not dropped unseen;
- what Alertmanager says agrees: its successful webhook requests <= events stored <= its requests, and each of
  its aggregation groups (group key) reached the store;
- workflows = episodes: one workflow per distinct episode that matches the playbook, however many times it was
  delivered (Alertmanager retries after the kills, "new alerts added" resends of the big groups);
- memory flat: the gunicorn workers' VmRSS grows by at most MEMORY_BOUND over the last quarter of the load, after
  a quarter that already filled what fills once (the same worker processes: the last incarnation serves the whole
  second half).

Every other alert is grouped by alertname (a few big notifications, re-sent whole as alerts join), the others are
not grouped at all (`group_by: ['...']`: one notification per alert, thousands of small requests at once).

The count is RULES_ENGINE_LOAD_ALERTS (default 10,000: about a minute per store on two shared cores, SQLite and
PostgreSQL alike; 2,000 take about 40 s). The test prints its figures (`-s` shows them).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import distinct, func, select

from rules_engine.playbooks import store as st
from rules_engine.playbooks import workflow as wf
from rules_engine.playbooks.payload import label_fingerprint
from rules_engine.spec.times import rfc3339
from tests import processes
from tests.conftest import require_binary
from tests.test_e2e_alerting import AM_TOKEN, OPERATOR_TOKEN, running_serve

pytestmark = pytest.mark.integration

DEFAULT_ALERTS = 10_000
ALERTS = int(os.environ.get("RULES_ENGINE_LOAD_ALERTS", DEFAULT_ALERTS))
BATCH = 100  # alerts per POST /api/v2/alerts
PACE = 0.1  # seconds between two POSTs: delivery goes on through the whole push, so the kills land in it
GROUPED_ALERTNAMES = 5  # the grouped half is spread over this many alertnames: this many big notifications
REMEDIATE_EVERY = 4  # every 4th alert of each half carries remediate="yes" and so matches the playbook
# group_interval is also Alertmanager's timeout for a whole send, retries included: long enough that a request
# queued behind thousands of others is answered in time (else Alertmanager gives up on requests the receiver
# then stores), short enough that a group whose send failed is re-sent within seconds.
GROUP_WAIT, GROUP_INTERVAL = "1s", "5s"
# The gunicorn workers may grow by this much over the last quarter of the load. What fills once (allocator arenas
# at the peak of concurrent requests, SQLite's page cache of each pooled connection, SQLAlchemy's statement cache)
# fills during the quarter before it; a leak per alert or per request grows in both quarters, thousands of alerts
# each, and shows far beyond the bound. Measured from warm-up to the end: +4 to +22 MiB from ~165 MiB over 5,000
# alerts, and the same +11 to +21 MiB over 10,000 (a 20,000-alert run): a step, not a slope; so the bound is
# applied to the last quarter alone, not to the step.
MEMORY_BOUND_BYTES = 20 * 1024 * 1024
MEMORY_BOUND_RATIO = 0.10
DEADLINE = 240.0  # seconds for any one wait of the run (delivery, settling)

PLAYBOOK = """\
kind: Playbook
name: load-remediate
match: {matchers: ['remediate="yes"']}
optimization_level: moderate
approval: {required: true}
series_labels: [instance]
steps:
  - {name: recommend, type: recommend, bottleneck: queue_buildup}
"""


def alertmanager_config(serve_port: int, token_file: Path) -> dict:
    """Two routes to the receiver: one grouped by alertname, one not grouped at all."""
    receiver = {"name": "rules-engine", "webhook_configs": [{
        "url": f"http://127.0.0.1:{serve_port}/alertmanager/webhook", "send_resolved": True, "max_alerts": 0,
        "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}}]}
    timers = {"group_wait": GROUP_WAIT, "group_interval": GROUP_INTERVAL, "repeat_interval": "1h"}
    return {
        "route": {"receiver": "rules-engine", "group_by": ["alertname"], **timers, "routes": [
            {"receiver": "rules-engine", "matchers": ['grouping="alertname"'], "group_by": ["alertname"], **timers},
            {"receiver": "rules-engine", "matchers": ['grouping="none"'], "group_by": ["..."], **timers}]},
        "receivers": [receiver],
    }


def load_alerts(count: int, starts_at: float) -> list[dict]:
    """`count` distinct alerts (one series each), every other one grouped; a fixed startsAt, so
    each is one episode whatever Alertmanager re-sends, and an endsAt past the run so none resolves during it."""
    alerts = []
    for i in range(count):
        grouped = i % 2 == 0
        labels = {"alertname": f"LoadQueueBuildup{i % GROUPED_ALERTNAMES}" if grouped else "LoadQueueBuildup",
                  "grouping": "alertname" if grouped else "none", "instance": f"vllm-{i}:8000",
                  "model_name": "llama", "severity": "high", "rule_pack": "load",
                  "remediate": "yes" if i // 2 % REMEDIATE_EVERY == 0 else "no"}
        alerts.append({"labels": labels, "annotations": {"summary": f"load alert {i}"},
                       "startsAt": rfc3339(starts_at), "endsAt": rfc3339(starts_at + 3600),
                       "generatorURL": "http://load-test/graph"})
    return alerts


# --- what the receiver stored ----------------------------------------------------------------------------------
@dataclass
class Stored:
    events: int
    unprocessed: int
    failed_events: int  # processed with an error (quarantined)
    alert_deliveries: int  # alerts summed over events
    episodes: int
    distinct_episode_keys: int
    episode_deliveries: int  # deliveries summed over episodes
    workflows: int
    distinct_workflow_keys: int
    group_keys: int


def stored(store: st.Store) -> Stored:
    with store.read() as conn:
        def one(query):
            return conn.execute(query).scalar_one() or 0

        return Stored(
            events=one(select(func.count()).select_from(st.events)),
            unprocessed=st.unprocessed_event_count(conn),
            failed_events=one(select(func.count()).select_from(st.events).where(st.events.c.error.is_not(None))),
            alert_deliveries=one(select(func.sum(st.events.c.alert_count))),
            episodes=one(select(func.count()).select_from(st.episodes)),
            distinct_episode_keys=one(select(func.count()).select_from(
                select(st.episodes.c.fingerprint, st.episodes.c.starts_at).distinct().subquery())),
            episode_deliveries=one(select(func.sum(st.episodes.c.deliveries))),
            workflows=one(select(func.count()).select_from(st.workflows)),
            distinct_workflow_keys=one(select(func.count()).select_from(
                select(st.workflows.c.playbook, st.workflows.c.fingerprint, st.workflows.c.starts_at)
                .distinct().subquery())),
            group_keys=one(select(func.count(distinct(st.events.c.group_key)))),
        )


def delivered_alerts(store: st.Store) -> int:
    """Alerts in the events stored so far (with repeats): the cheap progress measure while delivery runs."""
    with store.read() as conn:
        return conn.execute(select(func.sum(st.events.c.alert_count))).scalar_one() or 0


# --- what Alertmanager says --------------------------------------------------------------------------------------
def webhook_metrics(am: processes.RunningAlertmanager) -> dict[str, float]:
    """Alertmanager's own counters for the webhook integration, and its alert counts."""
    text = requests.get(f"{am.url}/metrics", timeout=10).text
    wanted = {"alertmanager_notifications_total", "alertmanager_notifications_failed_total",
              "alertmanager_notification_requests_total", "alertmanager_notification_requests_failed_total"}
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted and sample.labels.get("integration") == "webhook":
                found[sample.name.removeprefix("alertmanager_")] = sample.value
            elif sample.name == "alertmanager_alerts" and sample.labels.get("state") == "active":
                found["alerts_active"] = sample.value
            elif (sample.name == "alertmanager_alerts_received_total"
                  and sample.labels.get("status") == "firing"):
                found["alerts_received_firing"] = found.get("alerts_received_firing", 0) + sample.value
    return found


# --- the receiver's processes ------------------------------------------------------------------------------------
def worker_pids(master_pid: int) -> list[int]:
    """The gunicorn workers: the processes whose parent is the master."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == master_pid:
                found.append(int(entry))
    return sorted(found)


def vm_rss(pid: int) -> int:
    """Resident set size in bytes, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def thread_count(pid: int) -> int:
    """Threads of a process (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def wait_for(what: str, probe: Callable[[], object], timeout: float = DEADLINE, interval: float = 0.25):
    return processes.wait_for(what, probe, timeout, interval)


@dataclass
class Receiver:
    """`rules-engine serve`, killed -9 and restarted at will; every incarnation is stopped at the end."""

    config_path: Path
    port: int
    stack: contextlib.ExitStack
    proc: subprocess.Popen | None = None
    kills: list[dict] = field(default_factory=list)

    def start(self) -> None:
        # After a kill -9 the receiver answers 503 on /ready until its intake has caught up with the backlog the
        # kill left: thousands of deliveries, which take longer than a plain start on two shared cores.
        self.proc = self.stack.enter_context(running_serve(self.config_path, self.port, ready_timeout=DEADLINE))

    def kill(self, **note) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # master and workers at once: nothing gets to clean up
        self.proc.wait(10)
        self.kills.append(note)

    def workers(self) -> list[int]:
        pids = wait_for("the gunicorn workers", lambda: worker_pids(self.proc.pid), timeout=30)
        return pids


def serve_config(root: Path, port: int, database_url: str) -> Path:
    path = root / "serve.yaml"
    path.write_text(yaml.safe_dump({
        "listen": f"127.0.0.1:{port}", "database_url": database_url, "playbooks": [str(root / "playbooks")],
        "alertmanager_auth": {"bearer_token": {"file": str(root / "am-token")}},
        "operators": [{"name": "alice", "roles": ["admin"],
                       "token": {"sha256": hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()}}],
        "workers": 2, "threads": 4, "poll_interval": 0.2, "lease_seconds": 10,
    }))
    return path


@pytest.mark.slow
def test_alertmanager_delivering_thousands_of_alerts_through_two_kill_9s_loses_and_doubles_nothing(
        tmp_path, database_url):
    for binary in (processes.ALERTMANAGER,):
        require_binary(binary)
    started = time.monotonic()
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "load.yaml").write_text(PLAYBOOK)
    (tmp_path / "am-token").write_text(AM_TOKEN + "\n")
    alerts = load_alerts(ALERTS, starts_at=time.time() - 60)
    expected = {label_fingerprint(a["labels"]) for a in alerts}
    expected_workflows = sum(1 for a in alerts if a["labels"]["remediate"] == "yes")
    batches = [alerts[i:i + BATCH] for i in range(0, len(alerts), BATCH)]
    # Delivery in six acts, paced so Alertmanager is always in the middle of sending: 20% with the first kill
    # as the delivery of their last batch starts; 10% pushed while the receiver is down; 10% with the second kill
    # likewise (among the resends of everything the first incarnation missed); 10% pushed while down. The last
    # incarnation takes the resends, warms up, then takes the other half of the alerts in two quarters: the
    # memory comparison is over the second of them.
    cut = [round(len(batches) * f) for f in (0.2, 0.3, 0.4, 0.5, 0.75)]
    acts = [batches[:cut[0]], batches[cut[0]:cut[1]], batches[cut[1]:cut[2]], batches[cut[2]:cut[3]],
            batches[cut[3]:cut[4]], batches[cut[4]:]]

    port = processes.free_port()
    store = st.open_store(database_url)
    with contextlib.ExitStack() as stack:
        stack.callback(store.dispose)
        am = stack.enter_context(processes.running_alertmanager(
            alertmanager_config(port, tmp_path / "am-token")))
        receiver = Receiver(serve_config(tmp_path, port, database_url), port, stack)
        pushed = 0

        def push(act: list[list[dict]]) -> None:
            nonlocal pushed
            for batch in act:
                am.post_alerts(batch)
                pushed += len(batch)
                time.sleep(PACE)

        def kill_during_delivery(act: list[list[dict]]) -> None:
            """Push the act and kill -9 the receiver as soon as the delivery of its last batch starts reaching
            the store."""
            push(act[:-1])
            before = delivered_alerts(store)
            push(act[-1:])
            wait_for("a delivery under way", lambda: delivered_alerts(store) > before, interval=0.01)
            receiver.kill(delivered=delivered_alerts(store), pushed=pushed)

        def push_while_down(act: list[list[dict]]) -> None:
            """Push the act to Alertmanager while the receiver is dead, and see Alertmanager fail to deliver."""
            failed = webhook_metrics(am)["notification_requests_failed_total"]
            push(act)
            wait_for("Alertmanager failing to deliver to the dead receiver",
                     lambda: webhook_metrics(am)["notification_requests_failed_total"] > failed)
            receiver.kills[-1]["failed_requests_while_down"] = (
                webhook_metrics(am)["notification_requests_failed_total"] - failed)

        receiver.start()
        kill_during_delivery(acts[0])
        push_while_down(acts[1])
        receiver.start()
        kill_during_delivery(acts[2])
        push_while_down(acts[3])
        receiver.start()

        def settled(total: int) -> Stored | None:
            """Every alert pushed so far stored and processed, and Alertmanager done sending: no request for two
            group intervals (a failed group is re-sent within one)."""
            now = stored(store)
            if now.episodes < total or now.unprocessed:
                return None
            before = webhook_metrics(am)["notification_requests_total"]
            time.sleep(2 * parse_seconds(GROUP_INTERVAL))
            after = stored(store)
            if webhook_metrics(am)["notification_requests_total"] != before or after.unprocessed:
                return None
            return after

        wait_for("the first half stored, processed and acknowledged", lambda: settled(pushed), interval=0.5)
        workers = receiver.workers()
        warm_rss = {pid: vm_rss(pid) for pid in workers}
        push(acts[4])
        wait_for("the third quarter stored, processed and acknowledged", lambda: settled(pushed), interval=0.5)
        mid_rss = {pid: vm_rss(pid) for pid in workers}
        pushed_at_mid = pushed
        push(acts[5])
        final = wait_for("every alert stored, processed and acknowledged", lambda: settled(pushed), interval=0.5)
        assert receiver.workers() == workers, "a gunicorn worker was replaced during the second half"
        final_rss = {pid: vm_rss(pid) for pid in workers}
        sent = webhook_metrics(am)
        with store.read() as conn:
            fingerprints = set(conn.execute(select(st.episodes.c.fingerprint)).scalars())
            workflow_states = st.workflow_state_counts(conn)
            matching_episodes = sum(1 for labels in conn.execute(select(st.episodes.c.labels)).scalars()
                                    if json.loads(labels).get("remediate") == "yes")
        am_fingerprints = {a["fingerprint"] for a in am.alerts()}
        wall = time.monotonic() - started

    figures = {
        "store": store.dialect, "alerts_pushed": pushed, "alertmanager": sent, "kills": receiver.kills,
        "events": final.events, "alert_deliveries": final.alert_deliveries, "episodes": final.episodes,
        "duplicates": final.alert_deliveries - final.episodes, "group_keys": final.group_keys,
        "workflows": final.workflows, "matching_episodes": matching_episodes, "workflow_states": workflow_states,
        "rss_warm_mb": {pid: round(v / 2**20, 1) for pid, v in warm_rss.items()},
        "rss_mid_mb": {pid: round(v / 2**20, 1) for pid, v in mid_rss.items()},
        "rss_final_mb": {pid: round(v / 2**20, 1) for pid, v in final_rss.items()},
        "wall_seconds": round(wall, 1),
    }
    print("\nload accounting:", json.dumps(figures, indent=1))

    # Alertmanager accepted every alert, once.
    assert pushed == ALERTS and sent["alerts_active"] == ALERTS and am_fingerprints == expected
    # Alerts sent = alerts stored: one episode per alert, exactly ours, none twice.
    assert final.episodes == final.distinct_episode_keys == ALERTS
    assert fingerprints == expected
    # Every delivery stored was processed without error, and every alert of every delivery counted on its episode.
    assert final.unprocessed == 0 and final.failed_events == 0
    assert final.episode_deliveries == final.alert_deliveries
    # What Alertmanager says it sent agrees with what was stored: a request answered 2xx was stored; a stored
    # event came from a request (some Alertmanager counts as failed: the receiver died before answering).
    succeeded = sent["notification_requests_total"] - sent["notification_requests_failed_total"]
    assert succeeded <= final.events <= sent["notification_requests_total"]
    assert sent["notification_requests_failed_total"] >= 2  # both kills cost Alertmanager at least a request
    # One group key per aggregation group: each grouped alertname, and each ungrouped alert.
    assert final.group_keys == GROUPED_ALERTNAMES + ALERTS // 2
    # Workflows = episodes: one per episode matching the playbook, whatever the duplicates.
    assert final.alert_deliveries > final.episodes, "the kills should have caused resends"
    assert final.workflows == final.distinct_workflow_keys == matching_episodes == expected_workflows
    assert workflow_states == {wf.PENDING_APPROVAL: expected_workflows}
    # Memory flat: each worker within the bound of its size after the third quarter, at the end of the fourth.
    for pid, mid in mid_rss.items():
        bound = max(MEMORY_BOUND_BYTES, MEMORY_BOUND_RATIO * mid)
        assert final_rss[pid] - mid <= bound, (
            f"worker {pid} grew from {mid / 2**20:.1f} MiB to {final_rss[pid] / 2**20:.1f} MiB "
            f"over the last {ALERTS - pushed_at_mid} alerts (bound {bound / 2**20:.1f} MiB; "
            f"{warm_rss[pid] / 2**20:.1f} MiB after warm-up)")


def parse_seconds(duration: str) -> float:
    return float(duration.removesuffix("s"))


def test_a_worker_that_exits_is_replaced_and_the_receiver_stays_up(tmp_path):
    """gunicorn replaces a worker that exits (SIGTERM, or SIGABRT after a request outlived the worker timeout;
    both leave through sys.exit, which runs the atexit handlers the worker inherited from the master). The
    master's cleanup of the shared metrics directory ran in the exiting worker too: the replacement found no
    directory, failed to boot, and gunicorn shut the whole receiver down."""
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "load.yaml").write_text(PLAYBOOK)
    (tmp_path / "am-token").write_text(AM_TOKEN + "\n")
    port = processes.free_port()
    with running_serve(serve_config(tmp_path, port, f"sqlite:///{tmp_path / 'engine.db'}"), port) as proc:
        first = wait_for("two workers", lambda: len(pids := worker_pids(proc.pid)) == 2 and pids, timeout=30)
        os.kill(first[0], signal.SIGTERM)
        replacement = wait_for("a replacement worker", lambda: [
            pid for pid in worker_pids(proc.pid) if pid not in first], timeout=30)[0]
        # Booted means the app is built: its background loops (intake, executors, event committer) run as threads.
        wait_for("the replacement to boot, or the receiver to stop",
                 lambda: proc.poll() is not None or thread_count(replacement) > 3, timeout=30)
        body = {"version": "4", "groupKey": "after-replacement", "status": "firing", "receiver": "rules-engine",
                "alerts": load_alerts(1, time.time())}
        body["alerts"][0].update(status="firing", fingerprint=label_fingerprint(body["alerts"][0]["labels"]))
        for _ in range(4):  # whichever worker answers
            assert proc.poll() is None, "the receiver shut down"
            accepted = requests.post(f"http://127.0.0.1:{port}/alertmanager/webhook", json=body, timeout=10,
                                     headers={"Authorization": f"Bearer {AM_TOKEN}"})
            assert accepted.status_code == 200, accepted.text
            assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 200
