"""Regenerate the shipped demo snapshot: simulate a mixed fleet (vLLM of every generation with their GPUs, TGI,
SGLang) with incidents, load it into a real Prometheus, record every range result the shipped rules need. Run from
the repository root:

    python scripts/make_demo_snapshot.py

Needs `promtool` and `prometheus` (Debian: apt-get install prometheus). Deterministic for a given seed and end.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.processes import backfill, running_prometheus  # noqa: E402

END = "2026-11-20T00:00:00Z"
DURATION = "2d"
SCENARIO = "demo-mixed"
SHARDS = 4  # promtool holds a whole input file in memory: the mixed fleet's history loads in pieces
SNAPSHOT = ROOT / "snapshots" / "demo.snapshot"
TRUTH = ROOT / "snapshots" / "demo.truth.json"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        history = Path(tmp) / "history.om"
        subprocess.run([sys.executable, "-m", "rules_engine.cli", "simulate", "--scenario", SCENARIO, "--end", END,
                        "--duration", DURATION, "--seed", "0", "--out", str(history), "--truth", str(TRUTH),
                        "--shards", str(SHARDS)], check=True)
        backfill(sorted(Path(tmp).glob("history.*.om")), Path(tmp) / "data", jobs=2)
        with running_prometheus(Path(tmp) / "data") as prometheus:
            subprocess.run([sys.executable, "-m", "rules_engine.cli", "record", "--rules", str(ROOT / "rules"), "--prometheus", prometheus.url,
                            "--end", END, "--time-range", DURATION, "--step", "30s", "--out", str(SNAPSHOT)], check=True)


if __name__ == "__main__":
    main()
