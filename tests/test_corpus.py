"""Corpora of broken rule and playbook files, each beside the exact problem list the loader must give for it.

tests/corpus/<rules|playbooks>/NAME.yaml is loaded alone through `load_ruleset`; NAME.expected holds its problems,
one `file:line: field: message` per line, paths relative to tests/corpus. A reader sees what an SRE would see
without reading the loader. After a deliberate change of wording, regenerate every expectation with
`UPDATE_CORPUS=1 pytest tests/test_corpus.py` and review the diff.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from rules_engine.spec import SpecError, load_ruleset

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(CORPUS.glob("*/*.yaml"))
# Broken files the loader accepts today: they document a gap (xfail, strict: the day it is fixed, this says so).
KNOWN_GAPS: dict[str, str] = {}


def problems_of(path: Path) -> list[str]:
    try:
        load_ruleset(path)
    except SpecError as error:
        return [str(problem).replace(f"{CORPUS}{os.sep}", "") for problem in error.problems]
    return []


@pytest.mark.parametrize("case", CASES, ids=[str(case.relative_to(CORPUS)) for case in CASES])
def test_broken_file_gives_exactly_its_expected_problems(case: Path):
    name = str(case.relative_to(CORPUS))
    found = problems_of(case)
    if name in KNOWN_GAPS:
        if found:
            pytest.fail(f"{name} is refused now: drop it from KNOWN_GAPS and write its .expected")
        pytest.xfail(KNOWN_GAPS[name])
    expected_file = case.with_suffix(".expected")
    if os.environ.get("UPDATE_CORPUS"):
        expected_file.write_text("".join(f"{line}\n" for line in found))
    assert found, f"{name} loaded without a problem: a corpus file must be broken"
    assert expected_file.exists(), f"no {expected_file.name}: run UPDATE_CORPUS=1 pytest {__file__}"
    assert found == expected_file.read_text().splitlines()


def test_every_expectation_has_its_broken_file():
    orphans = [p.name for p in CORPUS.glob("*/*.expected") if not p.with_suffix(".yaml").exists()]
    assert orphans == []
