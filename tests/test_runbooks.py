"""Every shipped alert links a runbook section that exists in the repository."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rules_engine.spec.loader import load_ruleset
from tests import processes
from tests.conftest import require_binary

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


@pytest.mark.parametrize("slo", SHIPPED.slos, ids=lambda slo: slo.name)
def test_every_shipped_slo_links_its_server_kinds_runbook(slo):
    path, _, anchor = slo.runbook_url.partition("#")
    assert path == f"docs/runbooks/{slo.server}.md", f"{slo.name}: runbook_url {slo.runbook_url!r}"
    assert anchor in anchors(ROOT / path), f"{slo.name}: no heading with anchor #{anchor} in {path}"


def test_github_anchor_follows_githubs_rules():
    assert github_anchor(" VLLMQueueBuildup") == "vllmqueuebuildup"
    assert github_anchor("What it means, and why?") == "what-it-means-and-why"


def test_generate_runbook_base_url_prefixes_relative_links(tmp_path):
    require_binary(processes.PROMTOOL)
    base = "https://github.com/example/rules-engine/blob/main"
    result = subprocess.run([sys.executable, "-m", "rules_engine.cli", "generate", "--rules", "rules/gpu.yaml",
                             "--out", str(tmp_path / "out"), "--tests", "--runbook-base-url", base + "/"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    rules = yaml.safe_load((tmp_path / "out" / "prometheus" / "gpu.rules.yml").read_text())
    urls = {r["annotations"]["runbook_url"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert urls == {f"{base}/docs/runbooks/gpu.md#{a}" for a in
                    ("gpuxiderror", "gpuframebuffernearlyfull", "gpuutilizationcollapse")}
    # SLO burn-rate alerts link their server kind's runbook the same way.
    slo = subprocess.run([sys.executable, "-m", "rules_engine.cli", "generate", "--rules", "rules/slo/tgi.yaml",
                          "--out", str(tmp_path / "slo"), "--tests", "--runbook-base-url", base],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert slo.returncode == 0, slo.stderr
    slo_alerts = [r for path in (tmp_path / "slo" / "prometheus").glob("*.yml")
                  for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"] if "alert" in r]
    assert slo_alerts and {r["annotations"].get("runbook_url") for r in slo_alerts} == {
        f"{base}/docs/runbooks/tgi.md#slo-burn-rate-alerts"}
    # The promtool tests expect the same annotations, so they still pass.
    tests = sorted(str(p) for p in (tmp_path / "out" / "tests").glob("*.yml"))
    tests += sorted(str(p) for p in (tmp_path / "slo" / "tests").glob("*.yml"))
    checked = subprocess.run([processes.PROMTOOL, "test", "rules", *tests], capture_output=True, text=True,
                             cwd=tmp_path / "out" / "tests", timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    bad = subprocess.run([sys.executable, "-m", "rules_engine.cli", "generate", "--rules", "rules/gpu.yaml",
                          "--out", str(tmp_path / "x"), "--runbook-base-url", "github.com/x"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "--runbook-base-url" in bad.stderr and "not an absolute URL" in bad.stderr
