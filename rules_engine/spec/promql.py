"""PromQL validation through a real parser, with the parser's message (rule semantics live in rules_engine.promql)."""
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
