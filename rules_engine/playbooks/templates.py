"""Rendering playbook templates in a Jinja2 sandbox.

Template source comes only from playbook files. Alert labels and annotations enter as variables (`labels`,
`annotations`), and rendering is a single pass, so a label value such as `{{ 7*7 }}` comes out literally. The
sandbox refuses attribute tricks (`__class__`, `mro`, ...) should a playbook author try them; `Immutable` also
refuses mutating the context (`labels.update(...)`). PromQL templates escape every output for a double-quoted
PromQL string, so a label value cannot close the string and change the query. URL templates percent-encode every
output as one path segment, so a label value cannot add `/`, `..`, `?`, `#` or `@`; only the configuration's own
values (`vars`, marked ConfigValue) are kept as written, since the base URL comes from them.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Mapping
from urllib.parse import quote

from jinja2 import StrictUndefined, TemplateError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}\s*$", re.DOTALL)


class RenderError(ValueError):
    """A template failed to render (undefined variable, sandbox violation, ...); the message says which field."""


class ConfigValue(str):
    """A text from the engine's configuration (`vars`): trusted, so URL templates keep it as written."""


UNSET = "<unset: vars.{name}>"
_UNSET_NAME = re.compile(r"<unset: vars\.(\w+)>")


class _DryRunVariables(dict):
    """`vars` in a dry run: a variable the configuration does not set renders as `<unset: vars.NAME>`, so the plan
    shows what is missing instead of failing on it."""

    def __missing__(self, name: str) -> ConfigValue:
        return ConfigValue(UNSET.format(name=name))


def template_variables(variables: Mapping[str, Any], dry_run: bool) -> dict[str, Any]:
    """`vars` as templates see it: configured texts marked trusted; unset names named as such in a dry run."""
    marked = {name: ConfigValue(value) if isinstance(value, str) else value for name, value in variables.items()}
    return _DryRunVariables(marked) if dry_run else marked


def unset_variables(text: str) -> list[str]:
    """The `vars` names a rendered text shows as unset (only ConfigValue placeholders can: in URLs every other
    output is percent-encoded, so a label cannot fake one)."""
    return _UNSET_NAME.findall(text)


def _url_segment(value: Any) -> Any:
    if isinstance(value, ConfigValue):
        return value
    encoded = quote("" if value is None else str(value), safe="")
    # `.` and `..` are path syntax even when percent-encoding left them alone.
    return encoded.replace(".", "%2E") if encoded and not encoded.strip(".") else encoded


def _promql_string(value: Any) -> Any:
    if isinstance(value, Markup):  # `| tojson` and other deliberate markup pass through untouched
        return value
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


_FINALIZE = {"text": None, "promql": _promql_string, "url": _url_segment}


@lru_cache(maxsize=None)
def _environment(kind: str) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False,
                                         finalize=_FINALIZE[kind])


@lru_cache(maxsize=4096)
def _template(kind: str, source: str):
    return _environment(kind).from_string(source)


def render_text(source: str, context: dict[str, Any], field: str = "template") -> str:
    try:
        return _template("text", source).render(context)
    except TemplateError as error:
        raise RenderError(f"{field}: {error}") from None


def render_url(source: str, context: dict[str, Any], field: str = "url") -> str:
    try:
        return _template("url", source).render(context)
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
