"""The labels a query's result series carry, read off the PromQL, and how a guard matches its signal on them."""
from __future__ import annotations

from typing import Sequence

import promql_parser


def output_labels(expr: str | promql_parser.Expr) -> list[str] | None:
    """The labels a signal's result series carry when the expression fixes them (aggregation `by`), else None."""
    node = promql_parser.parse(expr) if isinstance(expr, str) else expr
    return _labels(node)


def _labels(node) -> list[str] | None:
    if isinstance(node, promql_parser.AggregateExpr):
        modifier = node.modifier
        if modifier is None:
            return []
        if modifier.type == promql_parser.AggModifierType.By:
            return list(modifier.labels)
        return None
    if isinstance(node, promql_parser.ParenExpr):
        return _labels(node.expr)
    if isinstance(node, promql_parser.UnaryExpr):
        return _labels(node.expr)
    if isinstance(node, promql_parser.BinaryExpr):
        left, right = _labels(node.lhs), _labels(node.rhs)
        if isinstance(node.lhs, promql_parser.NumberLiteral):
            return right
        if isinstance(node.rhs, promql_parser.NumberLiteral):
            return left
        if node.op and str(node.op) == "or" and left is not None and right is not None:
            return sorted(set(left) | set(right), key=(left + right).index)
        return left if left is not None else right
    if isinstance(node, promql_parser.Call):
        name = node.func.name
        vectors = [arg for arg in node.args if not isinstance(arg, (promql_parser.NumberLiteral, promql_parser.StringLiteral))]
        if name == "histogram_quantile":
            inner = _labels(node.args[1])
            return [label for label in inner if label != "le"] if inner is not None else None
        if vectors:
            return _labels(vectors[0])
        return None
    if isinstance(node, promql_parser.SubqueryExpr):
        return _labels(node.expr)
    return None


def guard_matching(keep_labels: Sequence[str], signal_expr: str, guard_expr: str) -> tuple[str, ...]:
    """The labels `and on(...)` matches a guard on: the pack's kept labels both sides carry, as the engine matches."""
    signal_labels = output_labels(signal_expr)
    guard_labels = output_labels(guard_expr)
    return tuple(label for label in keep_labels
                 if (signal_labels is None or label in signal_labels) and (guard_labels is None or label in guard_labels))


def series_labels(expr: str, keep_labels: Sequence[str]) -> tuple[str, ...]:
    """The labels of a signal's result series, as far as the expression says (else the pack's kept labels)."""
    labels = output_labels(expr)
    return tuple(labels) if labels is not None else tuple(keep_labels)
