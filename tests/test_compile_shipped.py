"""The generated files the repository ships (grafana/, alertmanager/generated/) match the shipped rules."""
from __future__ import annotations

import re

from scripts.regenerate_shipped import ROOT, readme_with_rules_table, rules_table, shipped_files


def test_shipped_generated_files_are_up_to_date():
    stale = [path for path, text in shipped_files().items()
             if not (ROOT / path).exists() or (ROOT / path).read_text() != text]
    assert not stale, f"regenerate with `python scripts/regenerate_shipped.py`: {stale}"


def test_shipped_dashboards_cover_every_pack_and_the_slos():
    files = shipped_files()
    assert {"grafana/dashboards/vllm.json", "grafana/dashboards/tgi.json", "grafana/dashboards/sglang.json"} <= set(files)
    assert "grafana/dashboards/slo-overview.json" in files
    assert "grafana/provisioning/dashboards/rules-engine.yml" in files
    assert "alertmanager/generated/rules-engine.yml" in files


def test_readme_table_lists_what_rules_ship():
    readme = (ROOT / "README.md").read_text()
    assert readme_with_rules_table(readme, rules_table()) == readme, \
        "the README's table per server kind drifted from rules/: regenerate with `python scripts/regenerate_shipped.py`"
    # Every shipped alert of a server kind's pack appears in it, the throughput rules among them.
    for name in ("VLLMLowThroughput", "TGIThroughputBelowDemand", "TGILowThroughput", "SGLangThroughputBelowDemand",
                 "SGLangLowThroughput", "GPUUtilizationCollapse"):
        assert f"`{name}`" in readme


def test_shipped_annotations_print_values_for_people():
    """The alert Prometheus sends says "3.571 requests/s" or "2.34s", not "3.5711146384479724"."""
    from rules_engine.promql.templates import render_template
    from rules_engine.spec.loader import load_ruleset

    labels = {"instance": "vllm-0:8000", "gpu": "0", "Hostname": "node-a"}
    for _, rule in load_ruleset(ROOT / "rules").rules():
        for value in (3.5711146384479724, 0.123456789, 1234.56789):
            for text in (rule.annotations.summary, rule.annotations.description):
                rendered = render_template(text, labels, value)
                assert not re.search(r"\d\.\d{5,}|\d{5,}", rendered), f"{rule.name}: {rendered}"
