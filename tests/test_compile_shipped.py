"""The generated files the repository ships (grafana/, alertmanager/generated/) match the shipped rules."""
from __future__ import annotations

from scripts.regenerate_shipped import ROOT, shipped_files


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
