"""What commands print and how they exit: `--export -`, NO_COLOR, `validate --format json`, exit 2 on bad rules."""
from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "snapshots" / "demo.snapshot"
BAD_RULES = "kind: RulePack\nname: x\nrules:\n  - name: A\n    category: nope\n    signal: up\n    above: 1\n"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rules_engine.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env=env)


def run_on_terminal(*args: str, env: dict) -> str:
    """stdout of the CLI when it is a terminal (a pseudo-terminal), as a person running it sees it."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "rules_engine.cli", *args], stdout=follower,
                               stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the pseudo-terminal closes when the child exits
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=300) == 0
    return b"".join(chunks).decode()


def test_export_to_stdout_is_the_json_alone(tmp_path):
    result = run("evaluate", "--rules", "rules/", "--snapshot", str(SNAPSHOT), "--rule", "VLLMQueueBuildup",
                 "--export", "-")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)  # nothing but the JSON: it parses whole
    assert record["findings"] and record["findings"][0]["rule"] == "VLLMQueueBuildup"
    to_file = tmp_path / "findings.json"
    assert run("evaluate", "--rules", "rules/", "--snapshot", str(SNAPSHOT), "--rule", "VLLMQueueBuildup",
               "--export", str(to_file)).returncode == 0
    assert json.loads(to_file.read_text())["findings"] == record["findings"]


def test_no_color_is_honoured_on_a_terminal():
    args = ("evaluate", "--rules", "rules/", "--snapshot", str(SNAPSHOT), "--rule", "VLLMQueueBuildup", "--no-progress")
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    coloured = run_on_terminal(*args, env=env)
    assert "\x1b[" in coloured and "CRITICAL" in coloured
    plain = run_on_terminal(*args, env={**env, "NO_COLOR": "1"})
    assert "\x1b[" not in plain and "CRITICAL" in plain


def test_validate_json(tmp_path):
    good = run("validate", "--rules", "rules/", "--format", "json")
    assert good.returncode == 0, good.stderr
    summary = json.loads(good.stdout)
    assert summary["ok"] is True and summary["problems"] == [] and summary["rules"] > 10 and summary["playbooks"] > 0
    (tmp_path / "bad.yaml").write_text(BAD_RULES)
    bad = run("validate", "--rules", str(tmp_path), "--format", "json")
    assert bad.returncode == 2
    report = json.loads(bad.stdout)
    assert report["ok"] is False
    assert {"file": str(tmp_path / "bad.yaml"), "line": 5, "field": "rules[0].category"}.items() <= report["problems"][0].items()


@pytest.mark.parametrize("command", [
    ["validate"],
    ["evaluate", "--snapshot", str(SNAPSHOT)],
    ["record", "--prometheus", "http://127.0.0.1:9", "--time-range", "1h", "--out", "{tmp}/x.snapshot"],
    ["generate", "--out", "{tmp}/out"],
    ["tune", "--rule", "A", "--snapshot", str(SNAPSHOT)],
])
def test_every_command_exits_2_on_bad_rules(tmp_path, command):
    (tmp_path / "bad.yaml").write_text(BAD_RULES)
    result = run(command[0], "--rules", str(tmp_path / "bad.yaml"), *[a.format(tmp=tmp_path) for a in command[1:]])
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{tmp_path / 'bad.yaml'}:5: rules[0].category" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.snapshot").exists()
