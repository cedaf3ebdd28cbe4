"""Names of recorded signals in Prometheus' `level:metric:operations` convention, read off the PromQL itself.

- level: the labels the signal keeps (`sum by (instance, model_name)` → `instance_model_name`), the pack's kept
  labels when the expression does not say, `all` when it aggregates everything away;
- metric: the metric the signal is built from, without `_bucket`/`_sum`/`_count`/`_total` and with `:` as `_`;
- operations: outermost first: `p95` for histogram_quantile(0.95, ...), `rate5m`, `mean5m` for a _sum/_count
  rate ratio, `ratio` for other divisions, aggregation operators other than `sum`, `gt0_05` for a filtering
  comparison `> 0.05` (guards).
Two different signals of one pack that would get one name both get a short hash of their expression appended,
so a name never depends on which of them came first.
"""
from __future__ import annotations

import hashlib
import re

import promql_parser

from rules_engine.promql.labels import output_labels

COMPARISONS = {">": "gt", "<": "lt", ">=": "ge", "<=": "le", "==": "eq", "!=": "ne"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count", "_total")
def _metric_base(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace(":", "_")


def _selectors(node, found: list) -> None:
    if isinstance(node, promql_parser.VectorSelector):
        found.append(node)
    elif isinstance(node, promql_parser.MatrixSelector):
        found.append(node.vector_selector)
    elif isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.AggregateExpr, promql_parser.SubqueryExpr)):
        _selectors(node.expr, found)
    elif isinstance(node, promql_parser.BinaryExpr):
        _selectors(node.lhs, found)
        _selectors(node.rhs, found)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            _selectors(arg, found)


def _binary_ops(node) -> set[str]:
    ops: set[str] = set()
    if isinstance(node, promql_parser.BinaryExpr):
        ops.add(str(node.op))
        ops |= _binary_ops(node.lhs) | _binary_ops(node.rhs)
    elif isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.AggregateExpr, promql_parser.SubqueryExpr)):
        ops |= _binary_ops(node.expr)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            ops |= _binary_ops(arg)
    return ops


def _range_of(node) -> str | None:
    """`5m` for a call on a range selector (rate(x[5m])), else None."""
    if isinstance(node, promql_parser.Call):
        for arg in node.args:
            if isinstance(arg, promql_parser.MatrixSelector):
                return promql_parser.display_duration(arg.range)
            if isinstance(arg, promql_parser.SubqueryExpr):
                return promql_parser.display_duration(arg.range)
    return None


def _operations(node, found: list[str]) -> None:
    """Operation tokens, outermost first."""
    if isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr)):
        _operations(node.expr, found)
    elif isinstance(node, promql_parser.AggregateExpr):
        if str(node.op) not in ("sum",):
            found.append(str(node.op))
        _operations(node.expr, found)
    elif isinstance(node, promql_parser.BinaryExpr):
        op = str(node.op)
        if op in COMPARISONS and isinstance(node.rhs, promql_parser.NumberLiteral):
            found.append(COMPARISONS[op] + f"{node.rhs.val:g}".replace(".", "_").replace("-", "minus"))
        if op == "/":
            mean = _mean_of(node)
            if mean:
                found.append(mean)
                return
            found.append("ratio")
        _operations(node.lhs, found)
        _operations(node.rhs, found)
    elif isinstance(node, promql_parser.Call):
        name = node.func.name
        if name == "histogram_quantile" and isinstance(node.args[0], promql_parser.NumberLiteral):
            found.append("p" + f"{node.args[0].val * 100:g}".replace(".", "_"))
        else:
            window = _range_of(node)
            found.append(f"{name}{window or ''}")
        for arg in node.args:
            _operations(arg, found)
    elif isinstance(node, promql_parser.SubqueryExpr):
        _operations(node.expr, found)


def _mean_of(node: promql_parser.BinaryExpr) -> str | None:
    """`mean5m` for rate(x_sum[5m]) / rate(x_count[5m]) (possibly aggregated): the mean of a histogram/summary."""
    left: list = []
    right: list = []
    _selectors(node.lhs, left)
    _selectors(node.rhs, right)
    if len(left) != 1 or len(right) != 1:
        return None
    if not (left[0].name or "").endswith("_sum") or not (right[0].name or "").endswith("_count"):
        return None
    if _metric_base(left[0].name) != _metric_base(right[0].name):
        return None
    calls: list[str] = []
    _operations(node.lhs, calls)
    windows = [token[len("rate"):] for token in calls if token.startswith("rate")]
    return f"mean{windows[0]}" if windows else "mean"


def recording_name(expr: str, default_level: list[str]) -> str:
    """`level:metric:operations` for a signal expression (before any collision suffix)."""
    node = promql_parser.parse(expr)
    labels = output_labels(node)
    if labels is None:
        labels = list(default_level)
    level = "_".join(labels) if labels else "all"

    selectors: list = []
    _selectors(node, selectors)
    bases: list[str] = []
    for selector in selectors:
        base = _metric_base(selector.name or "series")
        if base not in bases:
            bases.append(base)
    joiner = "_per_" if "/" in _binary_ops(node) else "_or_"
    metric = joiner.join(bases[:2]) if bases else "scalar"

    operations: list[str] = []
    _operations(node, operations)
    unique = [op for index, op in enumerate(operations) if op not in operations[:index]]
    ops = "_".join(unique) if unique else "value"
    return _clean(f"{level}:{metric}:{ops}")


def _clean(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_:]", "_", name)


def unique_names(expressions: list[str], default_level: list[str]) -> dict[str, str]:
    """expression -> recorded name; expressions that would share a name get a hash of themselves appended."""
    wanted = {expr: recording_name(expr, default_level) for expr in expressions}
    counts: dict[str, int] = {}
    for name in wanted.values():
        counts[name] = counts.get(name, 0) + 1
    return {
        expr: name if counts[name] == 1 else f"{name}_{hashlib.sha256(expr.encode()).hexdigest()[:6]}"
        for expr, name in wanted.items()
    }
