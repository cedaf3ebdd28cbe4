"""`rules-engine serve` settings: the config file is read like rule files are (bounded YAML, duplicate keys refused,
file:line in every error), `max_resumes` is a setting of the file and of the command line, and the playbooks'
`vars.NAME` are checked against the config's `variables:` before the server starts."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from rules_engine.cli import main
from rules_engine.playbooks import store as st
from rules_engine.playbooks import workflow as wf
from rules_engine.playbooks.executor import claim_next, run_workflow
from rules_engine.playbooks.runtime import load_playbooks
from rules_engine.server.app import create_app, shutdown
from rules_engine.server.config import ConfigError, load_config
from rules_engine.spec import SpecError
from tests.test_playbooks import alert, ingest, playbook
from tests.test_playbooks_failures import failure_reason
from tests.processes import free_port, stop_process_group
from tests.test_server import config as server_config

REPO = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    return path


# --- the config file is read through the bounded YAML loader, errors at file:line ---------------------------------
def test_an_alias_bomb_in_the_config_is_refused_at_its_line(tmp_path):
    levels = ["  x0: &a [" + ", ".join(["lol"] * 9) + "]"]
    levels += [f"  x{n}: &{'abcde'[n]} [" + ", ".join([f"*{'abcde'[n - 1]}"] * 9) + "]" for n in range(1, 5)]
    path = _write(tmp_path, "listen: 127.0.0.1:8080\nvariables:\n" + "\n".join(levels) + "\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value).startswith(f"{path}:7: invalid YAML: aliases expand to more than")


def test_config_problems_name_file_line_and_field(tmp_path):
    path = _write(tmp_path, "listen: 127.0.0.1:8080\nthreads: 4\nthreads: 8\n")
    with pytest.raises(ConfigError, match=f"^{path}:3: threads: duplicate key$"):
        load_config(path)
    path = _write(tmp_path, "listen: 127.0.0.1:8080\nnotify:\n  attempts: 0\n  bogus: 1\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value).splitlines() == [
        f"{path}:3: notify.attempts: Input should be greater than or equal to 1", f"{path}:4: notify.bogus: unknown key"]
    path = _write(tmp_path, "listen: [127.0.0.1\n")
    with pytest.raises(ConfigError, match=f"^{path}:2: invalid YAML: "):
        load_config(path)
    path = _write(tmp_path, "- listen\n")
    with pytest.raises(ConfigError, match=f"^{path}:1: expected a mapping of settings$"):
        load_config(path)
    # A setting given on the command line is the command line's problem, not the file's line.
    path = _write(tmp_path, "threads: 4\n")
    with pytest.raises(ConfigError, match="^command line: threads: Input should be greater than or equal to 1$"):
        load_config(path, threads=0)
    assert load_config(_write(tmp_path, "# nothing set\n")).max_resumes == 5


# --- max_resumes ---------------------------------------------------------------------------------------------------
def test_max_resumes_from_the_config_file_bounds_the_servers_executor(tmp_path):
    base = server_config(tmp_path).model_dump(mode="json")
    path = _write(tmp_path, json.dumps({**base, "max_resumes": 1}))
    app = create_app(load_config(path), playbooks={"pb": playbook(approval={"required": False})},
                     start_runner=False)
    try:
        rt = app.extensions["rules_engine"].runtime
        workflow_id = ingest(rt, alert()).created[0]
        assert claim_next(rt) == workflow_id
        for _ in range(2):  # each owner dies before finishing a step: the lease expires, another resumes
            with rt.store.write() as conn:
                conn.execute(update(st.workflows).values(lease_until=time.time() - 1))
            assert claim_next(rt) == workflow_id
        assert run_workflow(rt, workflow_id) == wf.FAILED  # the default (5) would have carried on
        assert "resumed 2 times without progress" in failure_reason(rt, workflow_id)
    finally:
        shutdown(app)


def test_max_resumes_on_the_command_line():
    runner = CliRunner()
    helped = " ".join(runner.invoke(main, ["serve", "--help"]).output.split())
    assert "--max-resumes INTEGER Times a workflow interrupted by a crash is resumed in a row without progress" in helped
    refused = runner.invoke(main, ["serve", "--max-resumes", "-1"])
    assert refused.exit_code == 2
    assert "command line: max_resumes: Input should be greater than or equal to 0" in refused.output


# --- vars.NAME against the config's variables ---------------------------------------------------------------------
def test_playbook_variables_must_be_configured_unless_dry_run(tmp_path):
    shipped = [REPO / "rules" / "playbooks"]
    assert load_playbooks(shipped, variables={"orchestrator_url": "http://o:8000"})
    with pytest.raises(SpecError) as refused:
        load_playbooks(shipped, variables={"orchestrator": "http://o:8000"})
    first = refused.value.problems[0]
    assert first.path.endswith(".yaml") and first.line and first.field.startswith("steps[")
    assert "`vars.orchestrator_url` is not set in the serve config's `variables:` (set: orchestrator)" in first.message
    assert "playbook '" in first.message and "step '" in first.message
    (tmp_path / "p.yaml").write_text(
        "kind: Playbook\nname: p\ndry_run: true\nmatch: {matchers: ['alertname=\"A\"']}\n"
        "steps: [{name: call, type: http, request: {url: '{{ vars.orchestrator_url }}/v1'}}]\n")
    assert load_playbooks([tmp_path / "p.yaml"], variables={})  # a dry run shows `<unset: vars.NAME>` instead


def _shipped_playbooks_without_variables(tmp_path: Path) -> Path:
    """A serve config that passes every other check: credentials, operators, the shipped playbooks and rules."""
    (tmp_path / "tok").write_text("t")
    return _write(tmp_path, f"database_url: sqlite:///{tmp_path / 'x.db'}\nlisten: 127.0.0.1:{free_port()}\n"
                            f"playbooks: [{REPO / 'rules' / 'playbooks'}]\nrules: [{REPO / 'rules'}]\n"
                            f"alertmanager_auth: {{bearer_token: {{file: {tmp_path / 'tok'}}}}}\n"
                            f"operators: [{{name: a, token: {{file: {tmp_path / 'tok'}}}, roles: [admin]}}]\n")


def test_serve_refuses_playbooks_whose_variables_the_config_lacks(tmp_path):
    path = _shipped_playbooks_without_variables(tmp_path)
    # A child process: were the check to pass, serve would start serving instead of returning.
    child = subprocess.Popen([sys.executable, "-m", "rules_engine.cli", "serve", "--config", str(path)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = child.communicate(timeout=60)
    finally:
        stop_process_group(child)
    assert child.returncode == 2, output
    assert "playbooks do not load" in output
    assert "vllm-scale-out.yaml:" in output and "`vars.orchestrator_url` is not set" in output


def test_the_variables_check_applies_where_steps_run(tmp_path):
    from rules_engine.commands.serve import _check

    path = _shipped_playbooks_without_variables(tmp_path)
    with pytest.raises(ConfigError, match="`vars.orchestrator_url` is not set"):
        _check(load_config(path))
    _check(load_config(path, dry_run=True))  # shown as `<unset: vars.orchestrator_url>`
    _check(load_config(path, process=False))  # receives only: no step runs in this process
    _check(load_config(path, variables={"orchestrator_url": "http://127.0.0.1:9"}))  # as bench/bench_webhook.py
