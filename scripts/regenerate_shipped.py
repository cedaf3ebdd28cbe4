"""Regenerate the generated files the repository ships, from the shipped rules in rules/:

    python scripts/regenerate_shipped.py

writes grafana/dashboards/*.json, grafana/provisioning/** and alertmanager/generated/rules-engine.yml (the
Alertmanager fragment; alertmanager/alertmanager.yml is hand-written and already routes every `rule_pack` alert
to the engine). tests/test_compile_shipped.py fails when these drift from the rules.
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


def main() -> int:
    for path, text in sorted(shipped_files().items()):
        target = ROOT / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
