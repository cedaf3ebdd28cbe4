"""Pack alerts reach people: the shipped alertmanager.yml and `generate --alertmanager-config` route every pack alert
to the engine's webhook AND to the user's own receivers, judged by `amtool config routes test` and by a live
Alertmanager delivering one alert to both (the engine's `serve` and a receiver standing in for a pager).

The bug this guards against: a matching child route with `continue: true` and no sibling after it. Alertmanager
then never falls back to the top-level receiver, so only the webhook gets pack alerts and nobody is paged.
"""
from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rules_engine.cli import main
from rules_engine.compile import alertmanager
from rules_engine.spec import load_ruleset
from tests import processes
from tests.conftest import require_binary
from tests.processes import wait_for
from tests.test_e2e_alerting import AM_TOKEN, PLAYBOOK, RULE_PACK, running_serve, serve_config, workflow_of
from tests.test_playbooks_orchestrator import running_orchestrator

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "alertmanager" / "alertmanager.yml"
# A user's own config: a pager as the top-level receiver, chat for one team (which does not stop routing).
USER_BASE = {
    "route": {"receiver": "pager", "group_by": ["alertname"],
              "routes": [{"receiver": "team-chat", "matchers": ['team="inference"'], "continue": True},
                         {"receiver": "blackhole", "matchers": ['severity="info"']}]},
    "receivers": [{"name": "pager"}, {"name": "team-chat"}, {"name": "blackhole"}],
}


def routes_test(config: Path, labels: dict[str, str], expected: list[str]) -> subprocess.CompletedProcess:
    """`amtool config routes test --verify.receivers=...`: exit 0 only when exactly `expected` receive."""
    return subprocess.run(["amtool", "config", "routes", "test", f"--config.file={config}",
                           f"--verify.receivers={','.join(expected)}", *[f"{k}={v}" for k, v in labels.items()]],
                          capture_output=True, text=True, timeout=60)


def merged_user_config(tmp_path: Path) -> Path:
    """`rules-engine generate --alertmanager-config USER_BASE` on the shipped rules."""
    base = tmp_path / "base.yml"
    base.write_text(yaml.safe_dump(USER_BASE))
    result = CliRunner().invoke(main, ["generate", "--rules", str(ROOT / "rules"), "--out", str(tmp_path / "out"),
                                       "--alertmanager-config", str(base)])
    assert result.exit_code == 0, result.output
    return tmp_path / "out" / "alertmanager" / "alertmanager.yml"


@pytest.mark.parametrize(("labels", "expected"), [
    ({"alertname": "VllmQueueBuildup", "rule_pack": "vllm", "severity": "high"}, ["rules-engine", "default"]),
    ({"alertname": "Watchdog"}, ["default"]),
])
def test_shipped_config_routes_pack_alerts_to_the_engine_and_your_receiver(labels, expected):
    require_binary("amtool")
    checked = subprocess.run(["amtool", "check-config", str(SHIPPED)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = routes_test(SHIPPED, labels, expected)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("labels", "expected"), [
    # A pack alert: the engine, and the user's tree exactly as before the merge.
    ({"alertname": "VllmKvCachePressure", "rule_pack": "vllm", "severity": "high"}, ["rules-engine", "pager"]),
    # (as in the base alone: once team-chat matched, the top-level pager is no fallback)
    ({"alertname": "VllmKvCachePressure", "rule_pack": "vllm", "team": "inference"}, ["rules-engine", "team-chat"]),
    ({"alertname": "SloBurn", "rule_pack": "slo", "severity": "info"}, ["rules-engine", "blackhole"]),
    # Not a pack alert: the engine never sees it.
    ({"alertname": "NodeDown"}, ["pager"]),
    ({"alertname": "NodeDown", "rule_pack": "someone-elses"}, ["pager"]),
])
def test_generated_config_keeps_the_users_routing_and_adds_the_engine(tmp_path, labels, expected):
    require_binary("amtool")
    config = merged_user_config(tmp_path)
    checked = subprocess.run(["amtool", "check-config", str(config)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = routes_test(config, labels, expected)
    assert result.returncode == 0, result.stdout + result.stderr


def test_merge_moves_the_base_routes_under_one_branch_and_is_idempotent():
    fragment = alertmanager.fragment(load_ruleset(ROOT / "rules"))
    once = alertmanager.merge(USER_BASE, fragment)
    engine, branch = once["route"]["routes"]
    assert engine["receiver"] == alertmanager.RECEIVER and engine["continue"] is True
    assert branch == {"receiver": "pager", "routes": USER_BASE["route"]["routes"]}
    assert alertmanager.merge(once, fragment) == once
    # The shipped config is already in merged form: merging into it changes only the engine's route.
    shipped = yaml.safe_load(SHIPPED.read_text())
    assert alertmanager.merge(shipped, fragment)["route"]["routes"][1] == {"receiver": "default", "routes": []}


@pytest.mark.integration
def test_live_alertmanager_delivers_one_pack_alert_to_the_engine_and_to_a_person(tmp_path):
    """One alert posted as Prometheus posts it reaches `rules-engine serve` (a workflow starts) and the person's
    webhook receiver, through the config `generate --alertmanager-config` wrote."""
    for binary in ("amtool", processes.ALERTMANAGER):
        require_binary(binary)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "e2e.yaml").write_text(RULE_PACK)
    (tmp_path / "rules" / "e2e-playbook.yaml").write_text(PLAYBOOK)
    (tmp_path / "am-token").write_text(AM_TOKEN + "\n")
    with contextlib.ExitStack() as stack:
        person = stack.enter_context(running_orchestrator())  # records every POST: the person's pager
        port = processes.free_port()
        base = {"route": {"receiver": "pager", "group_wait": "0s", "group_interval": "1s"},
                "receivers": [{"name": "pager", "webhook_configs": [{"url": f"{person.url}/pager"}]}]}
        (tmp_path / "base.yml").write_text(yaml.safe_dump(base))
        result = CliRunner().invoke(main, [
            "generate", "--rules", str(tmp_path / "rules"), "--out", str(tmp_path / "out"),
            "--alertmanager-config", str(tmp_path / "base.yml"),
            "--webhook-url", f"http://127.0.0.1:{port}/alertmanager/webhook",
            "--token-file", str(tmp_path / "am-token")])
        assert result.exit_code == 0, result.output
        config = yaml.safe_load((tmp_path / "out" / "alertmanager" / "alertmanager.yml").read_text())
        config["route"]["routes"][0].update(group_wait="0s", group_interval="1s")
        am = stack.enter_context(processes.running_alertmanager(config))
        serve = serve_config(tmp_path, "serve", port, "http://127.0.0.1:1", "http://127.0.0.1:1")
        stack.enter_context(running_serve(serve, port))

        labels = {"alertname": "E2EQueueBuildup", "rule_pack": "e2e", "severity": "high",
                  "category": "queue_buildup", "instance": "vllm-1:8000", "model_name": "llama"}
        am.post_alerts([{"labels": labels, "annotations": {"playbook": "e2e-scale-out"}}])

        paged = wait_for("the person's receiver to get the alert", lambda: person.calls_to("/pager"), timeout=30)
        assert [a["labels"] for a in paged[0].body["alerts"]] == [labels]
        started = wait_for("the engine to start a workflow for the alert",
                           lambda: workflow_of(port, "llama", ("PENDING_APPROVAL",)), timeout=30)
        assert started["labels"] == labels
