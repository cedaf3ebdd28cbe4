"""Golden files: the exact output of `rules-engine generate --tests` for tests/golden/spec, reviewed as diffs.

Regenerate after an intended change with one command, then review `git diff tests/golden/expected`:

    UPDATE_GOLDEN=1 python -m pytest tests/test_compile_golden.py
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from rules_engine.cli import main
from rules_engine.api import generate
from rules_engine.compile.generate import GenerateOptions, write_outputs
from rules_engine.spec import load_ruleset

GOLDEN = Path(__file__).parent / "golden"
SPEC = GOLDEN / "spec"
EXPECTED = GOLDEN / "expected"


def generated_files() -> dict[str, str]:
    return generate(load_ruleset(SPEC), GenerateOptions(tests=True)).files


def test_generated_output_matches_golden_files():
    files = generated_files()
    if os.environ.get("UPDATE_GOLDEN"):
        for stale in EXPECTED.rglob("*"):
            if stale.is_file() and stale.relative_to(EXPECTED).as_posix() not in files:
                stale.unlink()
        write_outputs(generate(load_ruleset(SPEC), GenerateOptions(tests=True)), EXPECTED)
        pytest.skip("golden files rewritten; review `git diff tests/golden/expected`")
    expected = {p.relative_to(EXPECTED).as_posix(): p.read_text() for p in EXPECTED.rglob("*") if p.is_file()}
    assert sorted(files) == sorted(expected), "generated file set differs; regenerate with UPDATE_GOLDEN=1"
    for path, text in files.items():
        assert text == expected[path], f"{path} differs from tests/golden/expected/{path}; regenerate with UPDATE_GOLDEN=1"


def test_generate_command_is_byte_identical_across_runs(tmp_path):
    runner = CliRunner()
    outputs = []
    for name in ("first", "second"):
        result = runner.invoke(main, ["generate", "--rules", str(SPEC), "--out", str(tmp_path / name), "--tests"])
        assert result.exit_code == 0, result.output
        outputs.append({p.relative_to(tmp_path / name).as_posix(): p.read_bytes()
                        for p in (tmp_path / name).rglob("*") if p.is_file()})
    assert outputs[0] == outputs[1]
    assert "prometheus/demo.rules.yml" in outputs[0]


def test_generate_reports_bad_rules_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: RulePack\nname: bad\nrules:\n  - name: X\n    category: queue_buildup\n    signal: up\n")
    result = CliRunner().invoke(main, ["generate", "--rules", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2  # bad rules exit 2 from every command
    assert f"{bad}:4" in result.output and "above" in result.output
    assert not (tmp_path / "out").exists()


def test_strict_fails_when_parts_are_not_compiled(tmp_path):
    result = CliRunner().invoke(main, ["generate", "--rules", str(SPEC), "--out", str(tmp_path), "--strict"])
    assert result.exit_code == 1
    assert "Mann-Whitney" in (tmp_path / "NOT_COMPILED.md").read_text()


def test_generate_refuses_a_ruleset_without_packs_or_slos(tmp_path):
    playbooks_only = Path(__file__).parent.parent / "rules" / "playbooks"
    result = CliRunner().invoke(main, ["generate", "--rules", str(playbooks_only), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "nothing to generate" in result.output
