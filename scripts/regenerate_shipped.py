"""Regenerate the generated files the repository ships, from the shipped rules in rules/:

    python scripts/regenerate_shipped.py

writes grafana/dashboards/*.json, grafana/provisioning/** and alertmanager/generated/rules-engine.yml (the
Alertmanager fragment; alertmanager/alertmanager.yml is hand-written and already routes every `rule_pack` alert
to the engine), and the README's table of what each server kind gets (between its RULES_TABLE markers).
tests/test_compile_shipped.py fails when these drift from the rules.
"""
from __future__ import annotations

import sys
from pathlib import Path

from rules_engine.api import generate
from rules_engine.spec.loader import load_ruleset

ROOT = Path(__file__).resolve().parent.parent
# generated path -> where the repository keeps it
SHIPPED_PREFIXES = {"grafana/": "grafana/", "alertmanager/rules-engine.yml": "alertmanager/generated/rules-engine.yml"}


def shipped_files(root: Path = ROOT) -> dict[str, str]:
    """repository path -> text, for every shipped generated file."""
    generated = generate(load_ruleset(root / "rules"))
    files = {}
    for path, text in generated.files.items():
        for prefix, target in SHIPPED_PREFIXES.items():
            if path.startswith(prefix):
                files[target + path[len(prefix):] if prefix.endswith("/") else target] = text
    return files


SERVER_KINDS = {"vllm": "vLLM", "tgi": "TGI", "sglang": "SGLang"}
CATEGORIES = ("high_latency", "low_throughput", "queue_buildup", "cache_inefficiency", "memory_pressure",
              "batch_size_suboptimal", "error_rate")  # DESIGN.md's vocabulary; slo_burn is the SLOs' row
RULES_TABLE_START = "<!-- RULES_TABLE: generated from rules/ by scripts/regenerate_shipped.py; do not edit -->\n"
RULES_TABLE_END = "<!-- /RULES_TABLE -->\n"


def rules_table(root: Path = ROOT) -> str:
    """The README's table of the shipped packs, SLOs, playbooks, runbooks, dashboards and alerts per server kind
    (alerts by category), then the packs for any server kind: read from rules/, never typed."""
    ruleset = load_ruleset(root / "rules")
    dashboards = {path for path in shipped_files(root) if path.startswith("grafana/dashboards/")}

    def code(items) -> str:
        return ", ".join(f"`{item}`" for item in items) or "none"

    def relative(document: str) -> str:
        return Path(ruleset.files[document]).resolve().relative_to(root.resolve()).as_posix()

    def slo_cell(kind: str) -> str:
        slos = [slo for slo in ruleset.slos if slo.server == kind]
        files = sorted({relative(f"SLO/{slo.name}") for slo in slos})
        return f"{code(files)}: {code(slo.name for slo in slos)}" if slos else "none"

    def packs(kind: str) -> list:
        return [pack for pack in ruleset.packs if pack.server == kind]

    rows = {
        "rule packs": lambda kind: code(relative(f"RulePack/{pack.name}") for pack in packs(kind)),
        "SLOs": slo_cell,
        "playbooks": lambda kind: code(p.name for p in ruleset.playbooks if p.server_kind == kind),
        "runbook": lambda kind: code(path for path in [f"docs/runbooks/{kind}.md"] if (root / path).is_file()),
        "dashboards": lambda kind: code(path for pack in packs(kind)
                                        for path in [f"grafana/dashboards/{pack.name}.json"] if path in dashboards),
    }
    for category in CATEGORIES:
        rows[f"`{category}`"] = lambda kind, category=category: code(
            rule.name for pack in packs(kind) for rule in pack.rules if rule.category == category)
    lines = ["| | " + " | ".join(SERVER_KINDS.values()) + " |", "|---" * (len(SERVER_KINDS) + 1) + "|"]
    lines += [f"| {title} | " + " | ".join(cell(kind) for kind in SERVER_KINDS) + " |" for title, cell in rows.items()]
    for pack in ruleset.packs:
        if pack.server not in SERVER_KINDS:
            by_category = {}
            for rule in pack.rules:
                by_category.setdefault(rule.category, []).append(rule.name)
            alerts = "; ".join(f"`{category}`: {code(names)}" for category, names in by_category.items())
            links = [path for path in (f"docs/runbooks/{pack.name}.md", f"grafana/dashboards/{pack.name}.json")
                     if (root / path).is_file() or path in dashboards]
            lines += ["", f"For any server kind, `{relative(f'RulePack/{pack.name}')}` ({code(links)}): {alerts}."]
    return "\n".join(lines) + "\n"


def readme_with_rules_table(readme: str, table: str) -> str:
    """`readme` with the text between its RULES_TABLE markers replaced by `table`."""
    head, start, rest = readme.partition(RULES_TABLE_START)
    _, end, tail = rest.partition(RULES_TABLE_END)
    if not start or not end:
        raise ValueError("README.md has no RULES_TABLE markers")
    return head + start + table + end + tail


def main() -> int:
    for path, text in sorted(shipped_files().items()):
        target = ROOT / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"wrote {path}")
    readme = ROOT / "README.md"
    readme.write_text(readme_with_rules_table(readme.read_text(), rules_table()))
    print("wrote README.md (rules table)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
