"""`tune`: a sweep of 50 thresholds against one plain backtest of the same rule, same data, same invocation.

    python bench/bench_tune.py [--instances 50] [--days 7] [--candidates 50] [--repeat 3]

Two data sets:
- the shipped demo snapshot (a mixed fleet × 2 days at 30 s, recorded from a real Prometheus), rule
  VLLMKVCacheNearlyFull (a 15m mean, a severity ladder, for 15m) on its 8 vLLM instances;
- a generated fleet (--instances × --days at 30 s) served from memory, so fetching costs nothing and the ratio is
  evaluation against evaluation (the hardest case for the sweep: against Prometheus the fetch, paid once by each
  side, dominates both). Rule: a 10m mean with a guard, for 10m. The peer backtests with pushdown off, since a
  memory source serves raw series only (tune fetches the raw signal anyway).
Ratio = sweep seconds / backtest seconds (best of --repeat).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import rules_engine  # noqa: E402
from bench.bench_decode import best_of  # noqa: E402
from rules_engine.kinds import RULE_KINDS  # noqa: E402
from rules_engine.source.frame import RangeFrame  # noqa: E402
from rules_engine.spec.loader import load_ruleset  # noqa: E402

STEP = pd.Timedelta("30s")
PACK = """\
kind: RulePack
name: bench
keep_labels: [instance, model_name]
rules:
  - name: BenchQueue
    category: queue_buildup
    signal: sum by (instance, model_name) (vllm:num_requests_waiting)
    stat: mean
    window: 10m
    above: 5
    for: 10m
    guard: sum by (instance, model_name) (rate(vllm:request_success_total[5m])) > 0.05
"""


class MemorySource:
    """Range frames held in memory, sliced per query: a source whose fetching costs (almost) nothing."""

    def __init__(self, frames: dict[str, RangeFrame]):
        self.frames = frames

    def query_range(self, query, start, end, step) -> RangeFrame:
        frame = self.frames[query]
        return RangeFrame(query, frame.values.loc[start:end], frame.labels)


def generated_source(ruleset, instances: int, days: int, end: pd.Timestamp) -> MemorySource:
    rng = np.random.default_rng(0)
    grid = pd.date_range(end=end, periods=days * 2880 + 120, freq=STEP, tz="UTC")
    rows = len(grid)
    labels = pd.DataFrame({"instance": [f"vllm-{i}:8000" for i in range(instances)],
                           "model_name": [f"model-{i % 5}" for i in range(instances)]})
    daily = 1 + 0.6 * np.sin(np.arange(rows) / 2880 * 2 * np.pi)[:, None]
    waiting = rng.poisson(2.5 * daily, (rows, instances)).astype(float)
    for column in range(instances):  # a few queue incidents per instance
        for begin in rng.integers(0, rows - 200, size=3):
            waiting[begin:begin + rng.integers(20, 150), column] += rng.uniform(3, 20)
    traffic = np.where(rng.random((rows, instances)) < 0.9, 1.0, np.nan)  # guard: a sample where there is traffic
    (pack, rule), = [(p, r) for p, r in ruleset.rules()]
    signal, guard = RULE_KINDS[rule.type].signals(rule, pack)
    return MemorySource({signal: RangeFrame(signal, pd.DataFrame(waiting, index=grid), labels),
                         guard: RangeFrame(guard, pd.DataFrame(traffic, index=grid), labels)})


def compare(title: str, ruleset, source, rule: str, start, end, candidates: int, repeat: int, **backtest_args) -> None:
    plain, backtest = best_of(repeat, lambda: rules_engine.backtest(ruleset, source, start, end, STEP, rules=[rule],
                                                                    **backtest_args))
    threshold = next(r for _, r in ruleset.rules() if r.name == rule).threshold
    thresholds = list(np.linspace(threshold * 0.5, threshold * 1.5, candidates))
    swept, sweep = best_of(repeat, lambda: rules_engine.tune(ruleset, source, rule, start, end, STEP,
                                                             thresholds=thresholds))
    fors = ["5m", "10m", "15m"]
    swept_fors, sweep_fors = best_of(repeat, lambda: rules_engine.tune(ruleset, source, rule, start, end, STEP,
                                                                       thresholds=thresholds, fors=fors))
    print(f"{title}: {sweep.series} series x {(sweep.end - sweep.start) / pd.Timedelta('1D'):g} days, rule {rule}")
    print(f"  one backtest of the rule         {plain:7.3f} s  ({len(backtest.findings)} findings)")
    print(f"  tune, {len(sweep.candidates)} thresholds             {swept:7.3f} s  ratio {swept / plain:5.2f}")
    print(f"  tune, {len(sweep_fors.candidates)} (thresholds x 3 for)  {swept_fors:7.3f} s  ratio "
          f"{swept_fors / plain:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    shipped = load_ruleset([str(ROOT / "rules")])
    snapshot = rules_engine.SnapshotSource(ROOT / "snapshots" / "demo.snapshot")
    compare("demo snapshot", shipped, snapshot, "VLLMKVCacheNearlyFull", "2026-11-18T00:00:00Z",
            "2026-11-20T00:00:00Z", args.candidates, args.repeat)

    with tempfile.TemporaryDirectory() as folder:
        pack = Path(folder) / "bench.yaml"
        pack.write_text(PACK)
        ruleset = load_ruleset([str(pack)])
    end = pd.Timestamp("2026-11-20T00:00:00Z")
    source = generated_source(ruleset, args.instances, args.days, end)
    compare("generated fleet, in memory", ruleset, source, "BenchQueue", end - pd.Timedelta(days=args.days), end,
            args.candidates, args.repeat, pushdown=False)


if __name__ == "__main__":
    main()
