"""rules-engine: declarative rules for LLM inference fleets, backtested over Prometheus history.

The Python API (rules_engine/api.py) is importable from here: `rules_engine.backtest(...)`, `rules_engine.tune(...)`, `rules_engine.generate(...)`,
`rules_engine.load_ruleset(...)`, `rules_engine.PrometheusSource(...)`, `rules_engine.SnapshotSource(...)`.
They load on first use, so `import rules_engine.spec` stays light.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "backtest": "rules_engine.api", "fetch_plan": "rules_engine.api", "recording_plan": "rules_engine.api",
    "generate": "rules_engine.api", "tune": "rules_engine.api", "load_incidents": "rules_engine.spec.incidents",
    "Backtest": "rules_engine.evaluate.engine",
    "GenerateOptions": "rules_engine.compile.generate", "load_ruleset": "rules_engine.spec.loader",
    "RuleSet": "rules_engine.spec.loader", "SpecError": "rules_engine.spec.loader",
    "PrometheusSource": "rules_engine.source.prometheus", "SnapshotSource": "rules_engine.source.snapshot",
    "EvaluationError": "rules_engine.evaluate.series", "SourceError": "rules_engine.source.base",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'rules_engine' has no attribute {name!r}")
