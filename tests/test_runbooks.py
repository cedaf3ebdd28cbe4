"""Every shipped alert links a runbook section that exists in the repository."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from rules_engine.spec.loader import load_ruleset

ROOT = Path(__file__).resolve().parent.parent


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.add(github_anchor(line.lstrip("#")))
    return found


SHIPPED = load_ruleset(ROOT / "rules")


@pytest.mark.parametrize("pack,rule", SHIPPED.rules(), ids=lambda value: getattr(value, "name", None))
def test_every_shipped_rule_links_an_existing_runbook_heading(pack, rule):
    url = rule.annotations.runbook_url
    assert url, f"{pack.name}/{rule.name} has no annotations.runbook_url"
    path, _, anchor = url.partition("#")
    assert not re.match(r"[a-z]+://", path), f"{rule.name}: runbook_url must be repo-relative, got {url}"
    assert (ROOT / path).is_file(), f"{rule.name}: {path} does not exist"
    assert anchor in anchors(ROOT / path), f"{rule.name}: no heading with anchor #{anchor} in {path}"


def test_github_anchor_follows_githubs_rules():
    assert github_anchor(" VLLMQueueBuildup") == "vllmqueuebuildup"
    assert github_anchor("What it means, and why?") == "what-it-means-and-why"
