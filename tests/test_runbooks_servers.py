"""Every alert of the shipped TGI and SGLang packs links a runbook section that exists, and names a playbook
that exists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from rules_engine.playbooks.runtime import load_playbooks
from rules_engine.playbooks import workflow as wf
from rules_engine.playbooks.executor import claim_next, run_workflow
from rules_engine.spec import load_ruleset
from tests.test_playbooks import alert, get, ingest, runtime, store  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent


def github_anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("server", ["tgi", "sglang"])
def test_every_alert_links_its_runbook_section(server):
    pack = load_ruleset(ROOT / "rules" / f"{server}.yaml").packs[0]
    assert pack.server == server
    runbook = ROOT / "docs" / "runbooks" / f"{server}.md"
    anchors = {github_anchor(line[3:]) for line in runbook.read_text().splitlines() if line.startswith("## ")}
    for rule in pack.rules:
        path, _, anchor = rule.annotations.runbook_url.partition("#")
        assert path == f"docs/runbooks/{server}.md" and anchor == rule.name.lower(), rule.name
        assert anchor in anchors, f"{rule.name}: no section '## {rule.name}' in {runbook}"
    assert anchors == {rule.name.lower() for rule in pack.rules}, "a runbook section without an alert"


@pytest.mark.parametrize("server", ["tgi", "sglang"])
def test_playbooks_named_by_rules_exist_and_match_them(server):
    playbooks = load_playbooks(sorted((ROOT / "rules" / "playbooks").glob(f"{server}-*.yaml")))
    pack = load_ruleset(ROOT / "rules" / f"{server}.yaml").packs[0]
    for rule in pack.rules:
        if rule.playbook is None:
            continue
        playbook = playbooks[rule.playbook]
        assert playbook.server_kind == server
        assert playbook.matches({"alertname": rule.name}, {}), (rule.name, rule.playbook)


@pytest.mark.parametrize("server", ["tgi", "sglang"])
def test_shipped_playbooks_dry_run_every_alert_with_the_servers_knobs(store, server):
    """Each alert that names a playbook starts a workflow that completes in dry run, sends only under the
    orchestrator (a label value cannot add path segments), and carries that server's own launch flags."""
    shipped = load_playbooks(sorted((ROOT / "rules" / "playbooks").glob(f"{server}-*.yaml")))
    rt = runtime(store, *shipped.values(), dry_run=True, variables={"orchestrator_url": "http://orch:8000"})
    pack = load_ruleset(ROOT / "rules" / f"{server}.yaml").packs[0]
    # TGI alerts carry instance and job (no model label); SGLang alerts instance and model_name.
    extra = {"job": "tgi/../x"} if server == "tgi" else {"model_name": "m/../x"}
    alerted = [rule.name for rule in pack.rules if rule.playbook]
    for number, name in enumerate(alerted):
        ingest(rt, alert(alertname=name, instance=f"{server}-{number}:8000", **extra))
    urls, flags = [], set()
    while (workflow_id := claim_next(rt)) is not None:
        assert run_workflow(rt, workflow_id) == wf.COMPLETED
        for step in get(rt, workflow_id).steps:
            if "would_send" in step.output:
                urls.append(step.output["would_send"]["url"])
            flags |= {detail["flag"] for detail in step.output.get("details", [])}
    assert len(urls) >= len(alerted) and all(url.startswith("http://orch:8000/v1/") for url in urls), urls
    assert all("/../" not in url for url in urls)
    assert flags and all(flag.startswith("(") or flag in SERVER_FLAGS[server] for flag in flags), flags


# Launch flags each server really has (text-generation-launcher --help; sglang.launch_server --help), read from
# their sources (reference/llm-servers.md §5).
SERVER_FLAGS = {
    "tgi": {"--max-batch-total-tokens", "--max-concurrent-requests", "--max-batch-prefill-tokens", "--max-batch-size",
            "--waiting-served-ratio", "--max-waiting-tokens", "--kv-cache-dtype", "--quantize",
            "--cuda-memory-fraction", "--max-total-tokens", "--num-shard", "--speculate"},
    "sglang": {"--mem-fraction-static", "--max-running-requests", "--chunked-prefill-size", "--schedule-policy",
               "--schedule-conservativeness", "--kv-cache-dtype", "--cuda-graph-max-bs", "--dp-size",
               "--context-length"},
}


@pytest.mark.parametrize("server", ["tgi", "sglang"])
def test_every_flag_the_pack_runbook_and_playbooks_name_is_a_real_flag(server):
    texts = [ROOT / "rules" / f"{server}.yaml", ROOT / "rules" / "slo" / f"{server}.yaml",
             ROOT / "docs" / "runbooks" / f"{server}.md", *(ROOT / "rules" / "playbooks").glob(f"{server}-*.yaml")]
    named = {flag for path in texts for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", path.read_text())}
    assert named and named <= SERVER_FLAGS[server] | EXTRA_FLAGS[server], named - SERVER_FLAGS[server]


# Flags named in explanations rather than changed by a playbook.
EXTRA_FLAGS = {"tgi": set(), "sglang": {"--enable-metrics", "--disable-radix-cache", "--pp-size"}}
