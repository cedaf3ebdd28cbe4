"""Every alert of the shipped TGI and SGLang packs links a runbook section that exists, and names a playbook
that exists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from rules_engine.playbooks.runtime import load_playbooks
from rules_engine.spec import load_ruleset

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
