"""PromQL handled through a real parser: validation with the parser's message, and selector injection."""
from __future__ import annotations

import promql_parser


def check_promql(expr: str) -> str:
    """Return `expr` if it parses; raise ValueError with the parser's message otherwise."""
    if not expr or not expr.strip():
        raise ValueError("empty PromQL expression")
    try:
        promql_parser.parse(expr)
    except ValueError as error:
        raise ValueError(f"invalid PromQL {expr!r}: {error}") from None
    return expr


def parse_selector(selector: str) -> list[promql_parser.Matcher]:
    """The label matchers of a selector such as `{job="vllm", namespace=~"prod-.*"}`."""
    parsed = promql_parser.parse(selector)
    if not isinstance(parsed, promql_parser.VectorSelector) or parsed.name:
        raise ValueError(f"selector must be label matchers only, like {{job=\"vllm\"}}, got {selector!r}")
    return list(parsed.matchers.matchers)


def check_selector(selector: str) -> str:
    """Return `selector` if it is empty or label matchers only; raise ValueError naming it otherwise."""
    if selector.strip():
        try:
            parse_selector(selector)
        except ValueError as error:
            raise ValueError(f"invalid selector {selector!r}: {error}") from None
    return selector


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
