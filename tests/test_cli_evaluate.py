"""`rules-engine evaluate` / `validate` on the shipped snapshot: the README's first command, exit codes, export."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "snapshots" / "demo.snapshot"


def run(*args: str) -> subprocess.CompletedProcess:
    """The CLI of this checkout (the `rules-engine` script may belong to another install)."""
    return subprocess.run([sys.executable, "-m", "rules_engine.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    export = tmp_path_factory.mktemp("demo") / "findings.json"
    result = run("evaluate", "--rules", "rules/", "--snapshot", str(SNAPSHOT), "--export", str(export))
    return result, json.loads(export.read_text())


def test_demo_report_tells_the_story(demo):
    result, record = demo
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for heading in ("Summary", "health", "SLOs", "Findings"):
        assert heading in out
    truth = json.loads((ROOT / "snapshots" / "demo.truth.json").read_text())
    # Every incident of the mixed demo fleet (vLLM of every generation, TGI, SGLang) is found on its instance (GPU
    # findings name the node by its Hostname label), under the incident's category; a restart is not an incident.
    for incident in truth["incidents"]:
        if incident["kind"] == "restart":
            continue
        node = incident["instance"].split(":")[0]
        assert any((f["labels"].get("Hostname") or f["labels"].get("instance", "").split(":")[0]) == node
                   and f["category"] == incident["category"] for f in record["findings"]), incident
    assert "Could not be evaluated" not in out


def test_export_contract(demo):
    _, record = demo
    assert record["findings"] and record["slos"] and "overall" in record["health"]
    kinds = {f["kind"] for f in record["findings"]}
    assert "threshold" in kinds
    for finding in record["findings"]:
        for key in ("rule", "kind", "category", "severity", "labels", "start", "end", "value", "threshold",
                    "recommendation", "playbook"):
            assert key in finding, key
        assert finding["category"] in ("high_latency", "low_throughput", "queue_buildup", "cache_inefficiency",
                                       "memory_pressure", "batch_size_suboptimal", "error_rate", "slo_burn")
        if finding["kind"] == "threshold":
            assert "instance" in finding["labels"]
        # Text for people: annotations rendered for the finding, durations spelled as Prometheus spells them, no
        # float noise ("3.5711146384479724").
        for text in (finding["summary"], finding["description"]):
            assert "{{" not in text and not re.search(r"\d\.\d{6,}", text), text
        assert finding["runbook_url"].startswith("docs/runbooks/"), finding["rule"]  # SLO burn alerts too
        window = finding["details"].get("window")
        assert window is None or re.fullmatch(r"(\d+[ywdhms]|\d+ms)+", window), window


def test_fail_on_min_severity_and_rule_filter(tmp_path):
    critical = run("evaluate", "--rules", "rules/vllm.yaml", "--snapshot", str(SNAPSHOT), "--fail-on", "critical",
                   "--rule", "VLLMQueueBuildup")
    assert critical.returncode == 1, critical.stdout + critical.stderr
    export = tmp_path / "only-critical.json"
    quiet = run("evaluate", "--rules", "rules/vllm.yaml", "--snapshot", str(SNAPSHOT), "--min-severity", "critical",
                "--rule", "VLLMLowPrefixCacheHitRate", "--export", str(export), "--fail-on", "critical")
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert json.loads(export.read_text())["findings"] == []
    unknown = run("evaluate", "--rules", "rules/vllm.yaml", "--snapshot", str(SNAPSHOT), "--rule", "Nope")
    assert unknown.returncode == 2 and "no rule or SLO named ['Nope']" in unknown.stderr


def test_query_missing_from_snapshot_is_reported_not_raised(tmp_path):
    # A metric the snapshot never recorded: that rule cannot be evaluated, the others are.
    pack = (ROOT / "rules" / "vllm.yaml").read_text().replace(
        "sum by (instance, model_name) (vllm:num_requests_waiting)",
        "sum by (instance, model_name) (vllm:num_requests_parked)", 1)
    (tmp_path / "changed.yaml").write_text(pack)
    result = run("evaluate", "--rules", str(tmp_path / "changed.yaml"), "--snapshot", str(SNAPSHOT),
                 "--fail-on", "critical")
    assert result.returncode == 3
    failed = result.stdout[result.stdout.index("Could not be evaluated"):]
    assert "VLLMQueueBuildup: snapshot" in failed and "no raw samples of" in failed and "re-record it" in failed
    assert "Traceback" not in result.stdout + result.stderr


def test_a_changed_query_over_recorded_series_replays_from_raw_samples(tmp_path):
    # The snapshot holds raw samples: a query the recording never ran, over series it did record, is computed.
    pack = (ROOT / "rules" / "vllm.yaml").read_text().replace(
        "sum by (instance, model_name) (vllm:num_requests_waiting)",
        "max by (instance, model_name) (vllm:num_requests_waiting)", 1)
    (tmp_path / "changed.yaml").write_text(pack)
    export = tmp_path / "export.json"
    result = run("evaluate", "--rules", str(tmp_path / "changed.yaml"), "--snapshot", str(SNAPSHOT),
                 "--rule", "VLLMQueueBuildup", "--export", str(export))
    assert result.returncode == 0, result.stdout + result.stderr
    original = tmp_path / "original.json"
    assert run("evaluate", "--rules", "rules/vllm.yaml", "--snapshot", str(SNAPSHOT), "--rule", "VLLMQueueBuildup",
               "--export", str(original)).returncode == 0
    episodes = [[(f["labels"]["instance"], f["start"], f["end"]) for f in json.loads(path.read_text())["findings"]]
                for path in (export, original)]
    # One engine per instance and model: max and sum agree, so the changed rule finds what the recorded one did.
    assert episodes[0] == episodes[1] and "vllm-2:8000" in {instance for instance, _, _ in episodes[0]}


def test_unreachable_prometheus_is_a_clear_error_and_unknown_health(tmp_path):
    export = tmp_path / "export.json"
    result = run("evaluate", "--rules", "rules/vllm.yaml", "--prometheus", "http://127.0.0.1:9", "--time-range", "1h",
                 "--no-progress", "--export", str(export))
    assert result.returncode == 3
    assert "cannot reach" in result.stdout.lower() + result.stderr.lower() or "connection refused" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    # Nothing was checked: no score, said in words, and every category is named as not covered.
    assert "health    unknown: none of the" in result.stdout and "/ 100" not in result.stdout
    health = json.loads(export.read_text())["health"]
    assert health["overall"] is None and health["checks"]["failed"] == health["checks"]["tried"] > 0
    assert set(health["categories"].values()) == {None} and set(health["not_covered"]) == set(health["categories"])


def test_a_partial_failure_is_shown_beside_the_score(tmp_path, demo):
    _, full = demo
    pack = (ROOT / "rules" / "vllm.yaml").read_text().replace(
        "sum by (instance, model_name) (vllm:num_requests_waiting)",
        "sum by (instance, model_name) (vllm:num_requests_parked)", 1)  # not in the snapshot: this rule fails
    (tmp_path / "changed.yaml").write_text(pack)
    export = tmp_path / "export.json"
    result = run("evaluate", "--rules", str(tmp_path / "changed.yaml"), "--snapshot", str(SNAPSHOT),
                 "--export", str(export))
    health = json.loads(export.read_text())["health"]
    failed, tried = health["checks"]["failed"], health["checks"]["tried"]
    assert health["overall"] is not None and 0 < failed < tried
    assert health["categories"]["queue_buildup"] is None
    assert health["not_covered"]["queue_buildup"].endswith("could not be evaluated")
    assert health["not_covered"]["slo_burn"] == "no rule or SLO in the set"
    assert f"partial: {failed} of {tried} rules and SLOs could not be evaluated" in result.stdout
    assert "not covered  " in result.stdout and "queue_buildup (" in result.stdout
    assert full["health"]["checks"]["failed"] == 0


def test_validate_lists_every_problem(tmp_path):
    (tmp_path / "bad.yaml").write_text("kind: RulePack\nname: x\nrules:\n  - name: A\n    category: nope\n"
                                       "    signal: up\n    above: 1\n    window: 5q\n")
    result = run("validate", "--rules", str(tmp_path))
    assert result.returncode == 2
    assert f"{tmp_path}/bad.yaml:5: rules[0].category" in result.stderr
    assert f"{tmp_path}/bad.yaml:8: rules[0].window: invalid duration '5q'" in result.stderr
    assert run("validate", "--rules", "rules/").returncode == 0


def test_bad_time_arguments():
    result = run("evaluate", "--rules", "rules/vllm.yaml", "--prometheus", "http://127.0.0.1:9", "--start", "yesterday")
    assert result.returncode == 2 and "invalid time 'yesterday'" in result.stderr


def test_the_readme_fix_dry_run_shows_the_plan_with_unset_variables_named(tmp_path):
    """README: `evaluate --snapshot ... --rules rules/ --fix --dry-run`, no --var: nothing fails for want of
    vars.orchestrator_url; each request that would be sent is shown, the missing variable named as such."""
    args = ["evaluate", "--rules", "rules/", "--snapshot", str(SNAPSHOT), "--rule", "VLLMQueueBuildup", "--fix",
            "--dry-run", "--database", f"sqlite:///{tmp_path / 'store.db'}"]
    result = run(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    # The queue incident on vllm-2, and the queue behind the engine hung by an XID error on vllm-0.
    assert "Dry run: 2 workflow(s)" in result.stdout and "FAILED" not in result.stdout
    assert "scale-out: POST <unset: vars.orchestrator_url>/v1/scale {" in result.stdout
    assert '"instance": "vllm-2:8000"' in result.stdout
    assert "unset: vars.orchestrator_url (set with --var NAME=VALUE)" in result.stdout


def test_fix_dry_run_starts_the_matching_playbooks_without_side_effects(tmp_path):
    database = f"sqlite:///{tmp_path / 'store.db'}"
    args = ["evaluate", "--rules", "rules/", "--snapshot", str(SNAPSHOT), "--rule", "VLLMQueueBuildup",
            "--rule", "VLLMPreemptions", "--rule", "vllm_ttft_under_2_5s", "--fix", "--dry-run", "--database", database,
            "--var", "orchestrator_url=http://127.0.0.1:9"]
    result = run(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    # Four rule findings (the queue behind a hung engine on vllm-0 included) and SLO burn episodes on two models
    # (their alerts have model_name but no instance).
    assert "Dry run: 6 workflow(s) from 8 finding(s)" in result.stdout
    assert result.stdout.count("COMPLETED") == 6  # the orchestrator URL is unreachable: nothing was sent
    again = run(*args)  # the same alert episodes: idempotent, no second workflow, and it says so
    assert "Dry run: 0 workflow(s)" in again.stdout
    assert "6 workflow(s) already existed for these alert episodes (deduplicated" in again.stdout
    listed = run("workflows", "list", "--database", database)
    assert listed.returncode == 0 and "vllm-scale-out" in listed.stdout and "vllm-kv-cache-pressure" in listed.stdout
    assert run("evaluate", "--rules", "rules/", "--snapshot", str(SNAPSHOT), "--dry-run").returncode == 2


def test_a_snapshot_time_range_ends_at_the_snapshot_end(tmp_path):
    export = tmp_path / "last-6h.json"
    result = run("evaluate", "--rules", "rules/", "--snapshot", str(SNAPSHOT), "--time-range", "6h",
                 "--export", str(export))
    assert result.returncode == 0, result.stderr
    assert json.loads(export.read_text())["range"] == {"start": "2026-11-19T18:00:00Z", "end": "2026-11-20T00:00:00Z",
                                                       "step": "30s"}


@pytest.mark.parametrize("url", ["http://[::1", "http://bob:secret@[::1/prefix"])
def test_an_unparsable_prometheus_url_is_a_clear_error(url):
    result = run("evaluate", "--rules", "rules/vllm.yaml", "--prometheus", url, "--time-range", "1h")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is not a URL: Invalid IPv6 URL" in result.stderr and "secret" not in result.stderr


def test_the_readme_first_command_is_the_makefile_demo_and_needs_no_system_pip():
    """A Debian/Ubuntu system Python refuses `pip install` outside a virtual environment (PEP 668)."""
    first = (ROOT / "README.md").read_text().split("```sh\n", 1)[1].split("\n", 1)[0]
    assert first.startswith("python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/rules-engine evaluate ")
    makefile = (ROOT / "Makefile").read_text()
    demo = makefile.split("\ndemo:\n\t", 1)[1].split("\n", 1)[0]
    assert demo.replace("$(PYTHON)", "python3").replace(" --quiet", "") == first
