"""`tune`: a threshold sweep equals one backtest per candidate, on recorded and on live (real Prometheus) history."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import rules_engine
from rules_engine.evaluate.series import EvaluationError
from rules_engine.simulate import FleetSpec, Incident, simulate
from rules_engine.source.frame import RangeFrame
from rules_engine.source.snapshot import SnapshotSource
from rules_engine.spec.incidents import load_incidents
from tests import processes
from tests.conftest import require_binary
from tests.frames import instance_frame

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "snapshots" / "demo.snapshot"
TRUTH = ROOT / "snapshots" / "demo.truth.json"
START, END = "2026-11-18T00:00:00Z", "2026-11-20T00:00:00Z"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rules_engine.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def with_rule(ruleset, name: str, threshold: float, for_: pd.Timedelta | None = None):
    """The rule set with one rule's threshold (and `for`) changed; its other rules are kept: they decide what is
    fetched. Validated again, as a file saying so would be."""
    def changed(rule):
        data = rule.model_dump(by_alias=True) | {rule.direction: threshold}
        if for_ is not None:
            data["for"] = for_
        return type(rule).model_validate(data)

    packs = [pack.model_copy(update={"rules": [changed(rule) if rule.name == name else rule for rule in pack.rules]})
             for pack in ruleset.packs]
    return dataclasses.replace(ruleset, packs=packs)


def expected_from_backtest(backtest, incidents, grace: pd.Timedelta):
    """What a candidate should say, read from a plain backtest's findings."""
    findings = backtest.findings
    firing = sum((f.duration(backtest.end) - max(backtest.start - f.start, pd.Timedelta(0))
                  for f in findings), pd.Timedelta(0))
    delays = []
    for incident in incidents:
        end = (incident.end or backtest.end) + grace
        hits = [max(f.start - incident.start, pd.Timedelta(0)) for f in findings
                if f.labels.get("instance") == incident.labels["instance"] and f.start < end
                and (f.end or backtest.end) > incident.start]
        delays.append(min(hits) if hits else None)
    return len(findings), firing, delays


@pytest.mark.parametrize("rule, thresholds", [
    ("VLLMKVCacheNearlyFull", [0.5, 0.8, 0.93, 0.95, 0.97]),  # a window mean computed here, a severity ladder
    ("VLLMQueueBuildup", [1.0, 3.0, 5.0, 20.0]),
])
def test_a_sweep_equals_one_backtest_per_candidate(rule, thresholds):
    ruleset = rules_engine.load_ruleset([str(ROOT / "rules")])
    source = SnapshotSource(SNAPSHOT)
    incidents = load_incidents(TRUTH)
    fors = ["5m", "15m"]
    sweep = rules_engine.tune(ruleset, source, rule, START, END, thresholds=thresholds, fors=fors, incidents=incidents)
    assert len(sweep.candidates) == len(thresholds) * len(fors)
    assert sweep.incidents and all(i.category == sweep.category for i in sweep.incidents)
    for candidate in sweep.candidates:
        changed = with_rule(ruleset, rule, threshold=candidate.threshold, for_=candidate.for_)
        backtest = rules_engine.backtest(changed, source, START, END, rules=[rule])
        alerts, firing, delays = expected_from_backtest(backtest, sweep.incidents, sweep.grace)
        assert candidate.alerts == alerts, candidate
        assert candidate.alerts_per_day == pytest.approx(alerts / 2)
        assert (candidate.firing_share * sweep.series * (backtest.end - backtest.start)).total_seconds() \
            == pytest.approx(firing.total_seconds(), abs=1)
        assert candidate.detected == sum(d is not None for d in delays)
        seen = [d for d in delays if d is not None]
        assert candidate.max_delay == (max(seen) if seen else None)
    own = next(c for c in sweep.candidates if c.threshold == sweep.threshold and c.for_ == sweep.for_) \
        if any(c.for_ == sweep.for_ for c in sweep.candidates) else None
    if own is not None:
        plain = rules_engine.backtest(ruleset, source, START, END, rules=[rule])
        assert own.alerts == len(plain.findings)


def test_default_candidates_surround_the_rule_threshold():
    ruleset = rules_engine.load_ruleset([str(ROOT / "rules")])
    sweep = rules_engine.tune(ruleset, SnapshotSource(SNAPSHOT), "VLLMKVCacheNearlyFull", START, END)
    thresholds = [c.threshold for c in sweep.candidates]
    assert 0.95 in thresholds and 20 <= len(thresholds) <= 26
    assert min(thresholds) >= 0.475 and max(thresholds) <= 1.0  # half the threshold .. the largest value seen
    assert {c.for_ for c in sweep.candidates} == {pd.Timedelta("15m")}
    assert all(c.detected is None for c in sweep.candidates)  # no incidents given


def test_a_raw_sample_snapshot_tunes_both_sides_of_a_pushed_down_threshold():
    """VLLMHighTTFT's backtest query carries its comparison (pushed down); the demo snapshot holds the raw samples,
    so tune computes the whole signal and sweeps thresholds looser than the rule's too."""
    ruleset = rules_engine.load_ruleset([str(ROOT / "rules")])
    sweep = rules_engine.tune(ruleset, SnapshotSource(SNAPSHOT), "VLLMHighTTFT", START, END, thresholds=[1, 2, 3, 4])
    assert sweep.filtered_at is None and not sweep.notes
    assert [c.threshold for c in sweep.candidates] == [1.0, 2.0, 3.0, 4.0]
    assert [c.alerts for c in sweep.candidates] == sorted((c.alerts for c in sweep.candidates), reverse=True)
    plain = rules_engine.backtest(ruleset, SnapshotSource(SNAPSHOT), START, END, rules=["VLLMHighTTFT"])
    assert sweep.candidates[1].alerts == len(plain.findings) > 0


def test_only_threshold_rules_are_tuned():
    ruleset = rules_engine.load_ruleset([str(ROOT / "rules")])
    with pytest.raises(EvaluationError, match="is a trend rule"):
        rules_engine.tune(ruleset, SnapshotSource(SNAPSHOT), "VLLMKVCacheSaturationPredicted", START, END)
    with pytest.raises(EvaluationError, match="no rule or SLO named"):
        rules_engine.tune(ruleset, SnapshotSource(SNAPSHOT), "Nope", START, END)


def test_tune_cli_on_the_demo(tmp_path):
    report = tmp_path / "tune.html"
    result = run("tune", "--rules", "rules/", "--rule", "VLLMKVCacheNearlyFull", "--snapshot", str(SNAPSHOT),
                 "--incidents", str(TRUTH), "--thresholds", "0.9:0.98:5", "--for", "10m,15m", "--report", str(report))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    own = [line for line in lines if line.startswith("*")]
    assert len(own) == 1 and own[0].split()[1:3] == ["0.95", "15m"]
    assert "incidents  2 of category memory_pressure" in result.stdout
    assert "missed at the rule's own threshold: kv_pressure on vllm-5:8000" in result.stdout
    assert sum(1 for line in lines if line.rstrip().endswith(("0", "1", "2")) and "m " in line) >= 10
    page = report.read_text()
    assert page.count('class="plotly-graph-div"') == 1 and "incidents detected (%)" in page


@pytest.mark.parametrize("args, message", [
    (["--rule", "VLLMKVCacheNearlyFull", "--thresholds", "a,b"], "--thresholds 'a,b'"),
    (["--rule", "VLLMKVCacheNearlyFull", "--for", "5q"], "invalid duration"),
    (["--rule", "VLLMKVCacheSaturationPredicted"], "is a trend rule"),
    (["--rule", "VLLMKVCacheNearlyFull", "--incidents", "rules/vllm.yaml"],
     "rules/vllm.yaml: expected a list of incidents"),
])
def test_tune_cli_bad_arguments_exit_2(args, message):
    result = run("tune", "--rules", "rules/", "--snapshot", str(SNAPSHOT), *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.integration
def test_tune_against_prometheus_sweeps_below_a_pushed_down_threshold(tmp_path):
    """Live Prometheus: the raw signal is queried, so thresholds below the rule's own are judged too; the
    simulator's incident is detected with a small delay at the rule's threshold."""
    require_binary(processes.PROMTOOL)
    require_binary(processes.PROMETHEUS)
    end = pd.Timestamp("2026-11-20T00:00:00Z")
    simulate(tmp_path / "fleet.om", FleetSpec(start=(end - pd.Timedelta("8h")).timestamp(), end=end.timestamp(),
                                              instances=3, seed=5),
             [Incident("ttft_spike", ("vllm-1:8000",), start="5h", duration=1800, magnitude=8.0)],
             truth_path=tmp_path / "truth.json")
    processes.backfill(tmp_path / "fleet.om", tmp_path / "data")
    with processes.running_prometheus(tmp_path / "data") as prometheus:
        result = run("tune", "--rules", "rules/", "--rule", "VLLMHighTTFT", "--prometheus", prometheus.url,
                     "--start", (end - pd.Timedelta("6h")).isoformat(), "--end", end.isoformat(),
                     "--incidents", str(tmp_path / "truth.json"), "--thresholds", "0.5,1,2,4")
        ruleset = rules_engine.load_ruleset([str(ROOT / "rules")])
        with rules_engine.PrometheusSource(prometheus.url) as source:
            loose = rules_engine.backtest(with_rule(ruleset, "VLLMHighTTFT", threshold=0.5), source,
                                          end - pd.Timedelta("6h"), end, rules=["VLLMHighTTFT"])
    assert result.returncode == 0, result.stderr
    assert "note:" not in result.stdout  # nothing left out: the raw signal came from Prometheus
    rows = {float(line.split()[0].lstrip("*")) if not line.startswith("*") else float(line.split()[1]): line
            for line in result.stdout.splitlines() if line.strip() and line.lstrip("* ")[:1].isdigit()}
    assert set(rows) == {0.5, 1.0, 2.0, 4.0}
    assert rows[0.5].split()[2] == str(len(loose.findings))
    own = rows[2.0].split()
    assert own[0] == "*" and own[6] == "1/1"  # the spike on vllm-1 is detected at the shipped threshold
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["incidents"][0]["category"] == "high_latency"


def test_incident_files_name_the_item_and_field(tmp_path):
    path = tmp_path / "incidents.yaml"
    path.write_text("- {instance: a, start: 2026-11-19T02:00:00Z, end: 2026-11-19T01:00:00Z}\n"
                    "- {start: nope}\n"
                    "- {labels: {instance: b, model_name: m}, start: 1795053600, category: high_latency}\n")
    with pytest.raises(rules_engine.SpecError) as rejected:
        load_incidents(path)
    problems = [str(problem) for problem in rejected.value.problems]
    assert problems[0] == f"{path}: incidents[0]: end 2026-11-19T01:00:00+00:00 is not after start 2026-11-19T02:00:00+00:00"
    assert f"{path}: incidents[1].labels: Field required" in problems
    assert any(p.startswith(f"{path}: incidents[1].start: invalid time 'nope'") for p in problems)
    path.write_text("incidents:\n  - {labels: {instance: b, model_name: m}, start: 1795053600, category: high_latency}\n")
    (incident,) = load_incidents(path)
    assert incident.labels == {"instance": "b", "model_name": "m"} and incident.end is None
    assert incident.start == pd.Timestamp("2026-11-19T02:00:00Z")


def test_threshold_runs_equal_the_runs_of_each_comparison():
    from rules_engine.evaluate.alerting import _runs, threshold_runs

    rng = np.random.default_rng(1)
    for _ in range(300):
        rows, series = rng.integers(1, 40), rng.integers(1, 5)
        values = np.round(rng.normal(0, 1, (rows, series)), 1)  # rounded: ties with thresholds happen
        values[rng.random((rows, series)) < 0.2] = np.nan
        thresholds = np.unique(np.round(rng.normal(0, 1, rng.integers(1, 8)), 1))
        runs = threshold_runs(values, thresholds)
        each = (values[None] > thresholds[:, None, None]).transpose(1, 0, 2).reshape(rows, -1)
        expected = _runs(each)
        assert np.array_equal(runs.column, expected.column)
        assert np.array_equal(runs.first, expected.first) and np.array_equal(runs.last, expected.last)


class FrameSource:
    """Generated range frames by query (pure-logic test of a below rule with a guard; no server involved)."""

    def __init__(self, frames):
        self.frames = frames

    def query_range(self, query, start, end, step):
        frame = self.frames[query]
        return RangeFrame(query, frame.values.loc[start:end], frame.labels)


def test_a_below_rule_with_a_guard_sweeps_like_its_backtests(tmp_path):
    (tmp_path / "pack.yaml").write_text(
        "kind: RulePack\nname: t\nkeep_labels: [instance]\nrules:\n"
        "  - {name: Low, category: batch_size_suboptimal, signal: running, stat: min, window: 5m, below: 4,"
        " for: 3m, keep_firing_for: 1m, guard: waiting > 2}\n")
    ruleset = rules_engine.load_ruleset([str(tmp_path / "pack.yaml")])
    rng = np.random.default_rng(3)
    grid = pd.date_range("2026-01-01", periods=2000, freq="30s", tz="UTC")
    running = rng.poisson(6, (2000, 4)).astype(float)
    running[rng.random((2000, 4)) < 0.02] = np.nan
    waiting = np.where(rng.random((2000, 4)) < 0.8, 3.0, np.nan)
    source = FrameSource({"running": instance_frame(grid, {f"i{n}": running[:, n] for n in range(4)}, "running"),
                          "waiting > 2": instance_frame(grid, {f"i{n}": waiting[:, n] for n in range(4)},
                                                        "waiting > 2")})
    start, end = grid[100], grid[-1]
    thresholds = [1.0, 2.0, 3.0, 4.0, 5.5]
    for for_ in ("0s", "3m"):
        # One `for` per sweep: a sweep fetches the warm-up of its longest `for`, a backtest that of its own.
        sweep = rules_engine.tune(ruleset, source, "Low", start, end, thresholds=thresholds, fors=[for_])
        assert len(sweep.candidates) == 5
        for candidate in sweep.candidates:
            changed = with_rule(ruleset, "Low", candidate.threshold, candidate.for_)
            backtest = rules_engine.backtest(changed, source, start, end, rules=["Low"], pushdown=False)
            alerts, firing, _ = expected_from_backtest(backtest, [], sweep.grace)
            assert candidate.alerts == alerts
            assert (candidate.firing_share * sweep.series * (end - start)).total_seconds() \
                == pytest.approx(firing.total_seconds(), abs=1)
        assert sum(c.alerts for c in sweep.candidates) > 0
    both = rules_engine.tune(ruleset, source, "Low", start, end, thresholds=thresholds, fors=["0s", "3m"])
    assert [c for c in both.candidates if c.for_ == pd.Timedelta("3m")] == sweep.candidates
