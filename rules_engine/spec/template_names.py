"""What a playbook's templates may name, so a misspelt or misplaced name is refused when the playbook loads.

The executor renders step templates with a fixed set of names (rules_engine.playbooks.executor.template_context;
a test holds the two together). A template naming anything else, or a key that a fixed-shape value never has,
fails only when a workflow reaches that step, after earlier steps may already have changed the fleet. Templates
are read with Jinja2's own parser and `jinja2.meta`, so what is checked is what Jinja2 will look up; names a
template sets itself (`{% set %}`, loop variables) are its own business.
"""
from __future__ import annotations

from dataclasses import dataclass

from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

# name -> the keys its value always has, or None where they vary (alert labels, configured vars, step outputs).
CONTEXT: dict[str, frozenset[str] | None] = {
    "labels": None,
    "annotations": None,
    "alert": frozenset({"fingerprint", "starts_at", "alertname", "instance"}),
    "workflow": frozenset({"id", "playbook", "dry_run"}),
    "playbook": frozenset({"name", "optimization_level", "risk", "server_kind"}),
    "vars": None,  # the serve config's `variables:`, checked against it when `serve` starts
    "steps": None,  # earlier steps' outputs by step name (the playbook's loader checks the names)
    "recommendation": None,  # the last recommend step's output
    "baselines": None,
}
# Names only the request templates of http-like steps (http, canary, rollout, rollback) see.
REQUEST_CONTEXT: dict[str, frozenset[str] | None] = {"percent": None}

_ENV = ImmutableSandboxedEnvironment()


@dataclass(frozen=True)
class Reference:
    """A context name a template reads, and the constant key it reads from it (`steps.apply` -> ("steps", "apply");
    `steps['queue-drained']` likewise; a bare `{{ percent }}` has no key)."""

    name: str
    key: str | None = None

    def __str__(self) -> str:
        return f"{self.name}.{self.key}" if self.key is not None else self.name


def references(source: str) -> list[Reference]:
    """The context names `source` reads, each once, in the order they first appear. `source` must parse (the
    field validators parse every template first). A key read as a method call (`labels.get('x')`) is not a key."""
    tree = _ENV.parse(source)
    free = meta.find_undeclared_variables(tree) - set(_ENV.globals)
    called = {id(call.node) for call in tree.find_all(nodes.Call)}
    found: dict[Reference, None] = {}
    for node in tree.find_all((nodes.Name, nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Name):
            if node.name in free:
                found.setdefault(Reference(node.name))
            continue
        if not isinstance(node.node, nodes.Name) or node.node.name not in free or id(node) in called:
            continue
        if isinstance(node, nodes.Getattr):
            found.setdefault(Reference(node.node.name, node.attr))
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            found.setdefault(Reference(node.node.name, node.arg.value))
    # A Name is visited after the Getattr holding it: list `steps.apply` rather than a bare `steps` before it.
    keyed = {ref.name for ref in found if ref.key is not None}
    return [ref for ref in found if ref.key is not None or ref.name not in keyed]


def context_problem(reference: Reference, context: dict[str, frozenset[str] | None]) -> str | None:
    """Why `reference` will not resolve in `context` (name -> its fixed keys or None), or None when it may."""
    if reference.name not in context:
        return f"`{reference.name}` is not a template variable; templates here see {', '.join(sorted(context))}"
    keys = context[reference.name]
    if keys is not None and reference.key is not None and reference.key not in keys:
        return f"`{reference}` is never set; `{reference.name}` has {', '.join(sorted(keys))}"
    return None
