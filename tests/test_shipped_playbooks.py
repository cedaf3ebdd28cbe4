"""The shipped playbooks agree with the shipped rules that name them."""
from __future__ import annotations

from pathlib import Path

import pytest

from rules_engine.spec.loader import load_ruleset

SHIPPED = load_ruleset(Path(__file__).resolve().parent.parent / "rules")
PLAYBOOKS = {playbook.name: playbook for playbook in SHIPPED.playbooks}
ROUTED = [(pack, rule) for pack, rule in SHIPPED.rules() if rule.playbook]


@pytest.mark.parametrize("pack,rule", ROUTED, ids=lambda value: getattr(value, "name", None))
def test_a_rules_playbook_matches_its_alert_by_alertname(pack, rule):
    """Alerts from rules written by other tools (no `playbook` annotation) still reach the playbook."""
    assert PLAYBOOKS[rule.playbook].matches({"alertname": rule.name}, {}), f"{rule.name} -> {rule.playbook}"


TTFT_SCALE_OUT = [(name, playbook) for name, playbook in [(r.name, r.playbook) for _, r in ROUTED]
                  + [(slo.name, slo.playbook) for slo in SHIPPED.slos]
                  if "ttft" in name.lower() and playbook and "scale-out" in playbook]


@pytest.mark.parametrize("alertname,playbook", TTFT_SCALE_OUT)
def test_ttft_alerts_that_scale_out_are_recommended_ttft_knobs(alertname, playbook):
    """A slow first token is queueing or slow prefill: the recommendation weighs the prefill budget as well as
    replicas, not only the queue."""
    (step,) = [step for step in PLAYBOOKS[playbook].steps if step.type == "recommend"]
    assert step.bottleneck_by_alertname.get(alertname) == "high_ttft"
