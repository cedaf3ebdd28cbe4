"""Rendering playbook templates in a Jinja2 sandbox.

Template source comes only from playbook files. Alert labels and annotations enter as variables (`labels`,
`annotations`), and rendering is a single pass, so a label value such as `{{ 7*7 }}` comes out literally. The
sandbox refuses attribute tricks (`__class__`, `mro`, ...) should a playbook author try them; `Immutable` also
refuses mutating the context (`labels.update(...)`). PromQL templates escape every output for a double-quoted
PromQL string, so a label value cannot close the string and change the query.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}\s*$", re.DOTALL)


class RenderError(ValueError):
    """A template failed to render (undefined variable, sandbox violation, ...); the message says which field."""


def _promql_string(value: Any) -> Any:
    if isinstance(value, Markup):  # `| tojson` and other deliberate markup pass through untouched
        return value
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@lru_cache(maxsize=None)
def _environment(kind: str) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False,
                                        finalize=_promql_string if kind == "promql" else None)
    return env


@lru_cache(maxsize=4096)
def _template(kind: str, source: str):
    return _environment(kind).from_string(source)


def render_text(source: str, context: dict[str, Any], field: str = "template") -> str:
    try:
        return _template("text", source).render(context)
    except TemplateError as error:
        raise RenderError(f"{field}: {error}") from None


def render_promql(source: str, context: dict[str, Any], field: str = "query") -> str:
    try:
        return _template("promql", source).render(context)
    except TemplateError as error:
        raise RenderError(f"{field}: {error}") from None


def render_structure(value: Any, context: dict[str, Any], field: str = "json") -> Any:
    """Render every string leaf of a JSON body. A leaf that is exactly one `{{ expression }}` keeps the value's type
    (numbers, dicts of recommended changes); other strings render as text."""
    if isinstance(value, str):
        single = _SINGLE_EXPRESSION.match(value)
        if single:
            try:
                result = _environment("text").compile_expression(single.group("expr"), undefined_to_none=False)(**context)
            except TemplateError as error:
                raise RenderError(f"{field}: {error}") from None
            if isinstance(result, Undefined):
                raise RenderError(f"{field}: {result._undefined_message}")
            return result
        return render_text(value, context, field)
    if isinstance(value, dict):
        return {key: render_structure(item, context, f"{field}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [render_structure(item, context, f"{field}[{i}]") for i, item in enumerate(value)]
    return value
