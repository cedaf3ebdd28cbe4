"""The JSON export: the contract in DESIGN.md (a top-level `findings` list; see `finding_record`)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from rules_engine.evaluate.engine import Backtest
from rules_engine.evaluate.findings import Finding
from rules_engine.promql.templates import render_readable
from rules_engine.spec.models import format_duration
from rules_engine.spec.times import rfc3339

EXPORT_VERSION = 1


def _number(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def finding_record(finding: Finding, range_end: pd.Timestamp) -> dict[str, Any]:
    """A finding as the export writes it; its summary and description rendered for its own labels and value."""
    return {
        "rule": finding.rule,
        "kind": finding.kind,
        "category": finding.category,
        "severity": finding.severity,
        "labels": dict(finding.labels),
        "start": rfc3339(finding.start),
        "end": rfc3339(finding.end),
        "duration_seconds": finding.duration(range_end).total_seconds(),
        "value": _number(finding.value),
        "threshold": _number(finding.threshold),
        "recommendation": finding.recommendation,
        "playbook": finding.playbook,
        "pack": finding.pack,
        "summary": render_readable(finding.summary, finding.labels, finding.value),
        "description": render_readable(finding.description, finding.labels, finding.value),
        "runbook_url": finding.runbook_url,
        "rule_labels": dict(finding.rule_labels),
        "details": _jsonable(finding.details),
    }


def backtest_record(backtest: Backtest, source: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    record = {
        "version": EXPORT_VERSION,
        "range": {"start": rfc3339(backtest.start), "end": rfc3339(backtest.end), "step": format_duration(backtest.step)},
        "source": source,
        "rules": [
            {"pack": o.pack, "rule": o.rule, "kind": o.kind, "category": o.category, "series": o.series,
             "findings": o.findings, "error": o.error, "warnings": list(o.warnings), "queries": o.queries,
             "reads": o.reads}
            for o in backtest.outcomes
        ],
        "findings": [finding_record(f, backtest.end) for f in backtest.findings],
        "not_evaluated": [{"rule": o.rule, "reason": o.error} for o in backtest.failed]
                         + [{"slo": r.slo, "reason": r.error} for r in backtest.slos if r.error],
        "slos": [result.to_dict() for result in backtest.slos],
        "health": backtest.health().to_dict(),
    }
    record.update(extra or {})
    return record


def export_text(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_export(record: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(export_text(record))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, pd.Timestamp):
        return rfc3339(value)
    if isinstance(value, pd.Timedelta):
        return format_duration(value)
    if isinstance(value, float):
        return _number(value)
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return value
