"""Loading rule packs: a good pack loads whole; a bad file is rejected whole with every problem located."""
import textwrap

import pandas as pd
import pytest

from rules_engine.spec import SpecError, load_ruleset
from rules_engine.spec.models import SeverityLadder
from rules_engine.promql.selectors import inject_selector

GOOD = """\
kind: RulePack
name: demo
server: vllm
selector: '{job="vllm"}'
keep_labels: [instance]
defaults:
  for: 5m
rules:
  - name: QueueBuildup
    category: queue_buildup
    signal: sum by (instance) (vllm:num_requests_waiting)
    stat: p95
    window: 15m
    above: 5
  - name: LowHitRate
    category: cache_inefficiency
    signal: vllm:hit_rate
    below: 0.2
    for: 1h
    severity: low
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_ruleset(path)
    return [str(p) for p in caught.value.problems]


def test_good_pack_loads_with_defaults_applied(tmp_path):
    ruleset = load_ruleset(write(tmp_path, "pack.yaml", GOOD))
    first, second = ruleset.packs[0].rules
    assert first.for_ == pd.Timedelta("5m") and second.for_ == pd.Timedelta("1h")
    assert first.window == pd.Timedelta("15m") and first.direction == "above" and first.threshold == 5
    assert first.severity == SeverityLadder()  # the seeds' ladder: 1.2 / 1.5 / 2.0
    assert second.severity == "low" and second.direction == "below"


def test_every_problem_is_listed_with_file_line_and_field(tmp_path):
    path = write(tmp_path, "bad.yaml", """\
        kind: RulePack
        name: bad
        rules:
          - name: A
            category: queue_buildup
            signal: sum(rate(x[5m])
            above: 1
            bogus: 2
          - name: B
            category: not_a_category
            signal: up
            for: 5x
            above: 1
          - name: C
            category: memory_pressure
            signal: up
            above: 1
            below: 2
        """)
    problems = problems_of(path)
    assert f"{path}:6: rules[0].signal: invalid PromQL 'sum(rate(x[5m])': unclosed left parenthesis" in problems
    assert f"{path}:8: rules[0].bogus: unknown key" in problems
    assert any(p.startswith(f"{path}:10: rules[1].category: Input should be 'high_latency'") for p in problems)
    assert any(p.startswith(f"{path}:12: rules[1].for: invalid duration '5x'") for p in problems)
    assert f"{path}:14: rules[2]: give exactly one of `above` or `below`" in problems
    assert len(problems) == 5


def test_a_folder_is_rejected_whole_and_duplicates_are_found(tmp_path):
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.yaml", GOOD.replace("name: demo", "name: other"))
    problems = problems_of(tmp_path)
    assert f"{tmp_path}/b.yaml:9: rules.QueueBuildup: duplicate rule name (also at {tmp_path}/a.yaml:9)" in problems
    assert f"{tmp_path}/b.yaml:15: rules.LowHitRate: duplicate rule name (also at {tmp_path}/a.yaml:15)" in problems


def test_duplicate_yaml_keys_and_missing_kind(tmp_path):
    write(tmp_path, "dup.yaml", GOOD.replace("    above: 5\n", "    above: 5\n    above: 6\n"))
    write(tmp_path, "nokind.yaml", "name: x\nrules: []\n")
    problems = problems_of(tmp_path)
    assert any(p.endswith("dup.yaml:15: rules[0].above: duplicate key") for p in problems)
    assert any("nokind.yaml:1: kind: missing `kind:`" in p for p in problems)


def test_ratio_ladder_needs_a_positive_threshold(tmp_path):
    path = write(tmp_path, "zero.yaml", GOOD.replace("above: 5", "above: 0"))
    assert any("ratio severity ladder needs a threshold > 0" in p for p in problems_of(path))


def test_window_and_stat_go_together(tmp_path):
    path = write(tmp_path, "w.yaml", GOOD.replace("    window: 15m\n", ""))
    assert any("`stat` and `window` go together" in p for p in problems_of(path))


def test_invalid_yaml_is_located(tmp_path):
    path = write(tmp_path, "broken.yaml", "kind: RulePack\nrules: [\n")
    assert problems_of(path)[0].startswith(f"{path}:3: invalid YAML")


def test_selector_is_injected_into_every_vector_selector():
    expr = "sum by (instance) (rate(a_total[5m] offset 1h)) / sum by (instance) (rate(b_total{job=\"x\"}[5m]))"
    got = inject_selector(expr, '{job="vllm", ns=~"prod-.*"}')
    assert 'a_total{job="vllm",ns=~"prod-.*"}[5m] offset 1h' in got
    assert 'b_total{job="x",ns=~"prod-.*"}' in got  # the rule's own matcher on a label wins


def test_shipped_packs_load():
    ruleset = load_ruleset("rules")
    assert {pack.name for pack in ruleset.packs} >= {"vllm"}


def test_an_slo_window_catalog_path_is_relative_to_its_file(tmp_path):
    folder = tmp_path / "slos"
    folder.mkdir()
    (folder / "slo.yaml").write_text(textwrap.dedent("""\
        kind: SLO
        name: avail
        objective: 99
        alerting: {windows: windows/custom.yaml}
        sli:
          ratio: {errors: 'sum(errors_total)', total: 'sum(requests_total)'}
        """))
    (slo,) = load_ruleset(tmp_path).slos
    assert slo.alerting.windows == str(folder / "windows" / "custom.yaml")
