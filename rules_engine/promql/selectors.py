"""Selector injection: a pack's or SLO's label matchers added to every vector selector of an expression.

Also the PromQL text of parsed expressions: promql_parser prints string values as they are (`a="b"c"` for the
value b"c, which no parser reads back) and matrix selectors with empty braces (`rate(x{}[5m])`), so whatever we
write back out goes through `render`, which quotes the PromQL way (Go's double-quoted strings) and drops `{}`.
"""
from __future__ import annotations

import json
import re

import promql_parser

from rules_engine.spec.promql import parse_selector

OPERATORS = {"MatchOp.Equal": "=", "MatchOp.NotEqual": "!=", "MatchOp.Re": "=~", "MatchOp.NotRe": "!~"}
_PLACEHOLDER = "rules_engine_literal_{}_"
# A string literal (kept as it is), or empty braces after a metric name (dropped).
_EMPTY_BRACES = re.compile(r'("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`)|(?<=[A-Za-z0-9_:])\{\}', re.DOTALL)


def quote(text: str) -> str:
    """`text` as a PromQL string literal: `"` and `\\` escaped, control characters as Go escapes (JSON's are Go's)."""
    return json.dumps(text, ensure_ascii=False)


def matcher_text(matcher: promql_parser.Matcher) -> str:
    """A label matcher as PromQL, its value escaped: `job="a\\"b"`."""
    return f"{matcher.name}{OPERATORS[str(matcher.op)]}{quote(matcher.value)}"


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
        return _vector_selector(node, [matcher_text(m) for m in own + extra])

    if not matchers:
        return expr.strip()
    return render(promql_parser.transform(promql_parser.parse(expr), post_visit=add_matchers))


def render(tree: promql_parser.Expr) -> str:
    """The PromQL text of a parsed expression, string values quoted the PromQL way and without empty braces.

    Every string that needs escaping is swapped for a plain placeholder before promql_parser prints the tree and
    put back quoted after; the result is checked to parse back into the same tree.
    """
    printed = str(tree)
    literals: dict[str, str] = {}

    def placeholder(value: str) -> str:
        if quote(value) == f'"{value}"':
            return value
        key = _PLACEHOLDER.format(len(literals))
        if key in printed:
            raise ValueError(f"cannot render {printed!r}: it contains {key!r}")
        literals[key] = value
        return key

    def swap(node):
        if isinstance(node, promql_parser.StringLiteral):
            value = placeholder(node.val)
            return None if value == node.val else promql_parser.parse(f'"{value}"')
        if isinstance(node, promql_parser.VectorSelector):
            plain = [(m, placeholder(m.value)) for m in node.matchers.matchers]
            if all(value == m.value for m, value in plain):
                return None
            return _vector_selector(node, [f'{m.name}{OPERATORS[str(m.op)]}"{value}"' for m, value in plain])
        return None

    text = str(promql_parser.transform(tree, post_visit=swap))
    for key, value in literals.items():
        text = text.replace(f'"{key}"', quote(value))
    text = _EMPTY_BRACES.sub(lambda match: match.group(1) or "", text)
    if str(promql_parser.parse(text)) != printed:
        raise ValueError(f"rendering {printed!r} as {text!r} changed its meaning")
    return text


def _vector_selector(node: promql_parser.VectorSelector, matchers: list[str]) -> promql_parser.Expr:
    text = f"{node.name or ''}{{{', '.join(matchers)}}}"
    if node.offset is not None:
        text += f" offset {promql_parser.display_duration(node.offset)}"
    if node.at is not None:
        text += f" @ {node.at}"
    return promql_parser.parse(text)
