"""Benchmark `rules-engine generate`: 1,000 rules across 20 packs, then `promtool check rules` on the output.

    python bench/bench_generate.py [--packs 20] [--rules-per-pack 50] [--repeat 3]

Prints the time to load + compile + write (best of --repeat), the time promtool takes to check the generated
files (the peer: the real tool every generated file must pass), their ratio, and the time `promtool test rules`
takes on the generated tests of one pack.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from rules_engine.api import generate
from rules_engine.compile.generate import GenerateOptions, write_outputs
from rules_engine.spec import load_ruleset

SIGNALS = [
    ("queue_buildup", "sum by (instance, model_name) (vllm:num_requests_waiting)", 5),
    ("high_latency", "histogram_quantile(0.95, sum by (le, instance, model_name) "
                     "(rate(vllm:time_to_first_token_seconds_bucket[5m])))", 2),
    ("memory_pressure", "max by (instance, model_name) (vllm:gpu_cache_usage_perc)", 0.9),
    ("error_rate", "sum by (instance, model_name) (rate(vllm:request_success_total{finished_reason=\"abort\"}[5m])) "
                   "/ sum by (instance, model_name) (rate(vllm:request_success_total[5m]))", 0.05),
    ("low_throughput", "sum by (instance, model_name) (rate(vllm:generation_tokens_total[5m]))", 100),
]
STATS = [None, "mean", "p95", "max", "p99"]


def pack_document(index: int, rules: int) -> dict:
    """A pack of `rules` rules over the signals above, varying window statistics, ladders, guards and `for`."""
    documents = []
    for number in range(rules):
        category, signal, threshold = SIGNALS[number % len(SIGNALS)]
        rule: dict = {"name": f"Bench{index:02d}Rule{number:03d}", "category": category,
                      "signal": signal.replace("[5m]", f"[{1 + number % 5}m]")}
        stat = STATS[(number // len(SIGNALS)) % len(STATS)]
        if stat:
            rule.update(stat=stat, window=f"{5 * (1 + number % 4)}m")
        if category == "low_throughput":
            rule["below"] = threshold
        else:
            rule["above"] = threshold * (1 + number / 100)
        if number % 3 == 0:
            rule["severity"] = "high"
        if number % 4 == 1:
            rule["guard"] = "sum by (instance, model_name) (rate(vllm:request_success_total[5m])) > 0.1"
        rule["for"] = f"{(number % 10) + 1}m"
        documents.append(rule)
    return {"kind": "RulePack", "name": f"bench_{index:02d}", "server": "vllm", "selector": '{job="vllm"}',
            "keep_labels": ["instance", "model_name"], "rules": documents}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packs", type=int, default=20)
    parser.add_argument("--rules-per-pack", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    promtool = shutil.which("promtool")
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        root = Path(tmp)
        (root / "rules").mkdir()
        for index in range(args.packs):
            (root / "rules" / f"bench_{index:02d}.yaml").write_text(
                yaml.safe_dump(pack_document(index, args.rules_per_pack), sort_keys=False))
        best = float("inf")
        for attempt in range(args.repeat):
            out = root / f"out{attempt}"
            began = time.perf_counter()
            ruleset = load_ruleset(root / "rules")
            generated = generate(ruleset, GenerateOptions(tests=True))
            write_outputs(generated, out)
            best = min(best, time.perf_counter() - began)
        alerts = sum(len(p.alerts) for p in generated.packs)
        recordings = sum(len(p.recordings) for p in generated.packs)
        rules = len(ruleset.rule_names())
        print(f"generate: {rules} rules in {args.packs} packs -> {recordings} recording + {alerts} alerting rules, "
              f"{len(generated.files)} files: {best:.2f} s (best of {args.repeat}; load + compile + promtool tests "
              f"+ dashboards + write)")
        if promtool is None:
            print("promtool not found: check not timed")
            return 0
        files = sorted(str(p) for p in (out / "prometheus").glob("*.yml"))
        began = time.perf_counter()
        result = subprocess.run([promtool, "check", "rules", *files], capture_output=True, text=True)
        check = time.perf_counter() - began
        if result.returncode != 0:
            print(result.stdout[-2000:], result.stderr[-2000:], file=sys.stderr)
            return 1
        print(f"promtool check rules: {len(files)} files: {check:.2f} s")
        # The generated unit tests of one pack (every pack has the same shape): promtool evaluates every rule of
        # the file at every step, so this is the slow part of CI, reported per pack.
        first_test = sorted(p.name for p in (out / "tests").glob("*.yml"))[0]
        began = time.perf_counter()
        result = subprocess.run([promtool, "test", "rules", first_test], cwd=out / "tests", capture_output=True, text=True)
        test = time.perf_counter() - began
        print(f"promtool test rules ({first_test}, {args.rules_per_pack} rules): "
              f"{'SUCCESS' if result.returncode == 0 else 'FAILED'} in {test:.2f} s")
        if result.returncode != 0:
            print(result.stdout[-3000:], file=sys.stderr)
        print(f"ratio generate / promtool check: {best / check:.2f}")
        return 0 if result.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
