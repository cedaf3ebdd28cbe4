"""The generated files judged by the real tools: promtool check/test rules, amtool check-config, Alertmanager."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from rules_engine.compile import alertmanager
from rules_engine.api import generate
from rules_engine.compile.generate import GenerateOptions, write_outputs
from rules_engine.spec import load_ruleset
from tests.conftest import require_binary
from tests.processes import PROMTOOL

ROOT = Path(__file__).parent.parent
SPEC = Path(__file__).parent / "golden" / "spec"
SHIPPED = ROOT / "rules"
MINIMAL_ALERTMANAGER = {"route": {"receiver": "default"}, "receivers": [{"name": "default"}]}

pytestmark = pytest.mark.integration


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module", params=["golden", "shipped"])
def generated_dir(request, tmp_path_factory) -> Path:
    if request.param == "shipped":
        ruleset = load_ruleset(SHIPPED)  # packs, SLOs and playbooks, as users run it
    else:
        ruleset = load_ruleset(SPEC)
    out = tmp_path_factory.mktemp(request.param)
    write_outputs(generate(ruleset, GenerateOptions(tests=True)), out)
    return out


def test_promtool_check_rules_accepts_every_generated_file(generated_dir):
    require_binary(PROMTOOL)
    files = sorted((generated_dir / "prometheus").glob("*.yml"))
    assert files
    result = run([PROMTOOL, "check", "rules", *map(str, files)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules_passes_the_generated_tests(generated_dir):
    require_binary(PROMTOOL)
    tests = sorted((generated_dir / "tests").glob("*.test.yml"))
    assert tests
    result = run([PROMTOOL, "test", "rules", *[t.name for t in tests]], cwd=generated_dir / "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_generated_tests_fail_when_an_alert_threshold_drifts(tmp_path):
    """The generated tests judge the alert expressions: move one threshold and they must fail."""
    require_binary(PROMTOOL)
    write_outputs(generate(load_ruleset(SPEC), GenerateOptions(tests=True)), tmp_path)
    rule_file = tmp_path / "prometheus" / "demo.rules.yml"
    text = rule_file.read_text()
    drifted = text.replace("[10m:30s]) > 5\n", "[10m:30s]) > 50\n", 1)
    assert drifted != text
    rule_file.write_text(drifted)
    result = run([PROMTOOL, "test", "rules", "demo.test.yml"], cwd=tmp_path / "tests")
    assert result.returncode != 0
    assert "DemoQueueBuildup" in result.stdout + result.stderr


def _alertmanager_config(tmp_path: Path, base: dict) -> Path:
    fragment = yaml.safe_load((tmp_path / "alertmanager" / "rules-engine.yml").read_text())
    merged = alertmanager.merge(base, fragment)
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(merged, sort_keys=False))
    return path


def test_amtool_accepts_the_fragment_merged_into_a_minimal_config(tmp_path):
    require_binary("amtool")
    write_outputs(generate(load_ruleset(SPEC)), tmp_path)
    result = run(["amtool", "check-config", str(_alertmanager_config(tmp_path, MINIMAL_ALERTMANAGER))])
    assert result.returncode == 0, result.stdout + result.stderr
    generated = len(alertmanager.fragment(load_ruleset(SPEC))["inhibit_rules"])
    assert generated == 6  # 3 per pack: the demo pack and the SLOs
    assert f"{generated} inhibit rules" in result.stdout


def test_amtool_accepts_the_fragment_merged_into_the_shipped_config(tmp_path):
    require_binary("amtool")
    shipped = ROOT / "alertmanager" / "alertmanager.yml"
    if not shipped.exists():
        pytest.skip("alertmanager/alertmanager.yml is not shipped yet")
    write_outputs(generate(load_ruleset(SPEC)), tmp_path)
    base = yaml.safe_load(shipped.read_text())
    result = run(["amtool", "check-config", str(_alertmanager_config(tmp_path, base))])
    assert result.returncode == 0, result.stdout + result.stderr


def test_merge_is_idempotent():
    fragment = alertmanager.fragment(load_ruleset(SPEC))
    once = alertmanager.merge(MINIMAL_ALERTMANAGER, fragment)
    assert alertmanager.merge(once, fragment) == once
    assert once["route"]["routes"][0]["receiver"] == alertmanager.RECEIVER
    assert once["route"]["routes"][0]["continue"] is True


def test_alertmanager_inhibits_lower_severities_of_the_same_rule_and_series(tmp_path, start_alertmanager):
    """A critical alert silences the low/medium/high alerts of the same rule on the same series, not others."""
    write_outputs(generate(load_ruleset(SPEC)), tmp_path)
    base = {"route": {"receiver": "default", "group_wait": "0s", "group_interval": "1s"}, "receivers": [{"name": "default"}]}
    config = yaml.safe_load(_alertmanager_config(tmp_path, base).read_text())
    # The webhook target is not running here; only inhibition is judged.
    config["receivers"][-1]["webhook_configs"][0]["http_config"]["authorization"]["credentials_file"] = str(tmp_path / "token")
    (tmp_path / "token").write_text("secret\n")
    manager = start_alertmanager(config)

    def alert(severity: str, instance: str) -> dict:
        return {"labels": {"alertname": "DemoQueueBuildup", "rule_pack": "demo", "severity": severity,
                           "category": "queue_buildup", "instance": instance, "model_name": "m"}}

    manager.post_alerts([alert("critical", "a:8000"), alert("low", "a:8000"), alert("medium", "a:8000"),
                         alert("low", "b:8000")])
    deadline = time.monotonic() + 20
    while True:
        states = {(a["labels"]["instance"], a["labels"]["severity"]): a["status"]["state"]
                  for a in manager.alerts(alertname="DemoQueueBuildup")}
        if states.get(("a:8000", "low")) == "suppressed" and states.get(("a:8000", "medium")) == "suppressed":
            break
        assert time.monotonic() < deadline, f"inhibition not applied: {states}"
        time.sleep(0.1)
    assert states[("a:8000", "critical")] == "active"
    assert states[("b:8000", "low")] == "active"


def test_generate_merges_into_a_base_alertmanager_config(tmp_path):
    """`generate --alertmanager-config BASE` writes a full alertmanager.yml that amtool accepts."""
    require_binary("amtool")
    from click.testing import CliRunner

    from rules_engine.cli import main
    base = tmp_path / "base.yml"
    base.write_text(yaml.safe_dump(MINIMAL_ALERTMANAGER))
    result = CliRunner().invoke(main, ["generate", "--rules", str(SPEC), "--out", str(tmp_path / "out"),
                                       "--alertmanager-config", str(base), "--webhook-url", "http://engine:9000/alertmanager/webhook"])
    assert result.exit_code == 0, result.output
    merged = tmp_path / "out" / "alertmanager" / "alertmanager.yml"
    config = yaml.safe_load(merged.read_text())
    assert config["receivers"][-1]["webhook_configs"][0]["url"] == "http://engine:9000/alertmanager/webhook"
    checked = run(["amtool", "check-config", str(merged)])
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_generated_slo_tests_fail_when_a_burn_factor_drifts(tmp_path):
    require_binary(PROMTOOL)
    write_outputs(generate(load_ruleset(SPEC), GenerateOptions(tests=True)), tmp_path)
    rule_file = tmp_path / "prometheus" / "slo-demo_availability.rules.yml"
    text = rule_file.read_text()
    assert "(14.4 * 0.005)" in text
    rule_file.write_text(text.replace("(14.4 * 0.005)", "(30 * 0.005)"))
    result = run([PROMTOOL, "test", "rules", "slo-demo_availability.test.yml"], cwd=tmp_path / "tests")
    assert result.returncode != 0
    assert "page-quick fires when both windows burn" in result.stdout + result.stderr


def test_generated_regression_tests_fail_when_a_ratio_drifts(tmp_path):
    require_binary(PROMTOOL)
    write_outputs(generate(load_ruleset(SPEC), GenerateOptions(tests=True)), tmp_path)
    rule_file = tmp_path / "prometheus" / "demo.rules.yml"
    text = rule_file.read_text()
    assert "offset 1d) > 1.5" in text
    rule_file.write_text(text.replace("offset 1d) > 1.5", "offset 1d) > 3"))
    result = run([PROMTOOL, "test", "rules", "demo.regression.test.yml"], cwd=tmp_path / "tests")
    assert result.returncode != 0
    assert "DemoTTFTRegression" in result.stdout + result.stderr
