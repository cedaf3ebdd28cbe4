"""`rules-engine backfill`: raw history, then recording rules in dependency passes, with timestamps checked against
the raw expression queried from the same Prometheus."""
from __future__ import annotations

import math
import sys
import subprocess
from pathlib import Path

import pytest
import yaml

from rules_engine.simulate.backfill import BackfillError, recording_levels
from tests import processes
from tests.conftest import require_binary

START = 1_764_540_000  # a multiple of 60: the 15s grid
STEP = 15
RULES = {"groups": [
    {"name": "chained", "interval": "15s", "rules": [
        {"record": "job:c:rate1m", "expr": "sum(rate(c_total[1m]))"},
        {"record": "job:c:rate1m_doubled", "expr": "job:c:rate1m * 2"},
        {"record": "job:c:rate1m_doubled_plus_g", "expr": "job:c:rate1m_doubled + on() g"},
        {"alert": "Ignored", "expr": "g > 1"},
    ]},
    {"name": "plain", "interval": "15s", "rules": [{"record": "g_max", "expr": "max(g)"}]},
]}


def write_history(path: Path, samples: int = 480) -> None:
    """A counter with a varying rate and a gauge, scraped every 15s: 2h."""
    lines = ["# TYPE c counter"]
    total = 0
    for i in range(samples):
        total += 10 + (i * 7) % 13
        lines.append(f"c_total {total} {START + STEP * i}")
    lines.append("# TYPE g gauge")
    lines += [f"g {(i * 5) % 11} {START + STEP * i}" for i in range(samples)]
    path.write_text("\n".join(lines) + "\n# EOF\n")


def test_recording_levels_put_each_rule_after_the_rules_it_reads(tmp_path):
    path = tmp_path / "r.yml"
    path.write_text(yaml.safe_dump(RULES))
    passes = recording_levels([path])
    records = [[r["record"] for _, d in documents for g in d["groups"] for r in g["rules"]] for documents in passes]
    assert records == [["job:c:rate1m", "g_max"], ["job:c:rate1m_doubled"], ["job:c:rate1m_doubled_plus_g"]]
    assert passes[0][0][1]["groups"][0]["interval"] == "15s"  # groups keep their settings


def test_a_cycle_is_an_error(tmp_path):
    path = tmp_path / "r.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "a", "expr": "b + 1"}, {"record": "b", "expr": "a + 1"}]}]}))
    with pytest.raises(BackfillError, match="cycle: a, b"):
        recording_levels([path])


@pytest.mark.integration
def test_backfilled_recorded_values_equal_the_raw_expression_at_their_timestamps(tmp_path, start_prometheus):
    for binary in (processes.PROMTOOL, processes.PROMETHEUS):
        require_binary(binary)
    write_history(tmp_path / "history.om")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(RULES))
    result = subprocess.run([sys.executable, "-m", "rules_engine.cli", "backfill", "--data", str(tmp_path / "data"),
                             "--openmetrics", str(tmp_path / "history.om"), "--rules", str(tmp_path / "rules.yml")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pass 3 of 3" in result.stdout
    prom = start_prometheus(data_dir=tmp_path / "data")
    end = START + STEP * 479
    raw = {"job:c:rate1m": "sum(rate(c_total[1m]))", "job:c:rate1m_doubled": "sum(rate(c_total[1m])) * 2",
           "job:c:rate1m_doubled_plus_g": "sum(rate(c_total[1m])) * 2 + on() g", "g_max": "max(g)"}
    phases = set()
    for record, expr in raw.items():
        recorded = prom.query(f"{record}[3h]", time=end)
        assert len(recorded) == 1, record
        values = recorded[0]["values"]
        assert len(values) > 400, (record, len(values))  # the whole 2h, every 15s
        for stamp, value in values[::7]:
            expected = prom.query(expr, time=stamp)
            assert expected and math.isclose(float(value), float(expected[0]["value"][1]), rel_tol=1e-9), \
                (record, stamp, value, expected)
        phases |= {round(float(stamp) % STEP, 3) for stamp, _ in values}
    # promtool stamps at the group's evaluation phase (one phase per group), not on the grid: queried at a grid
    # time the recorded series answers with the evaluation before it, up to one interval late.
    assert len(phases) <= 2
    print(f"recorded-value phases within the {STEP}s interval: {sorted(phases)}")
