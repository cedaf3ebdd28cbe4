"""Selector injection: a pack's or SLO's label matchers added to every vector selector of an expression."""
from __future__ import annotations

import promql_parser

from rules_engine.spec.promql import parse_selector


def signal_and_guard(signal: str, guard: str | None, selector: str) -> list[str]:
    """What a rule reads, the pack's selector injected: its signal, then its guard if it has one."""
    return [inject_selector(expr, selector) for expr in (signal, guard) if expr]


def inject_selector(expr: str, selector: str) -> str:
    """Add the selector's matchers to every vector selector in `expr` that does not already match on that label.

    Returns the canonical rendering of the expression, which is also what sources and snapshots key on.
    """
    matchers = parse_selector(selector) if selector.strip() else []

    def add_matchers(node):
        if not isinstance(node, promql_parser.VectorSelector):
            return None
        own = list(node.matchers.matchers)
        own_names = {m.name for m in own}
        extra = [m for m in matchers if m.name not in own_names]
        return _render_vector_selector(node, own + extra)

    if not matchers:
        return expr.strip()
    return str(promql_parser.transform(promql_parser.parse(expr), post_visit=add_matchers))


def _render_vector_selector(node: promql_parser.VectorSelector, matchers: list) -> promql_parser.Expr:
    text = f"{node.name or ''}{{{', '.join(str(m) for m in matchers)}}}"
    if node.offset is not None:
        text += f" offset {promql_parser.display_duration(node.offset)}"
    if node.at is not None:
        text += f" @ {node.at}"
    return promql_parser.parse(text)
