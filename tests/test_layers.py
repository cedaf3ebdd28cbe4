"""The package layering of rules_engine (pyproject.toml [tool.importlinter]) holds, and the rule-kind registry is
the one place a kind is declared."""
import subprocess
import sys
from pathlib import Path
from typing import get_args

import grimp

from rules_engine.kinds import RULE_KINDS
from rules_engine.spec.models import Rule

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    """import-linter judges the layers: front ends over the engine, evaluate and compile independent, both over the
    PromQL semantics; the engine packages import no click/flask/gunicorn."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_package_graph_has_no_cycles():
    graph = grimp.build_graph("rules_engine")
    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        package = _package(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith("rules_engine.") and _package(imported) != package:
                edges.setdefault(package, set()).add(_package(imported))
    cycle = _find_cycle(edges)
    assert cycle is None, f"packages import each other in a circle: {' -> '.join(cycle)}"


def test_every_rule_kind_is_registered_with_its_spec_model():
    union = {get_args(member)[0] for member in get_args(get_args(Rule)[0])}
    assert union == {kind.model for kind in RULE_KINDS.values()}
    for name, kind in RULE_KINDS.items():
        assert get_args(kind.model.model_fields["type"].annotation) == (name,)  # the registry key is its `type:`


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target] if target in path else path + [node, target]
            if target not in state:
                found = visit(target, path + [target])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None
