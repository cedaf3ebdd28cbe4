"""Compose YAML with a bound on what aliases and nesting may cost.

PyYAML composes an alias `*a` as the very node anchored by `&a`, so a few hundred bytes of nested aliases
("billion laughs") compose to a small graph whose tree has 10^8 nodes. Everything downstream walks the tree (the
loader's line index, pydantic validation), so the cost is the tree's, not the file's: 11 GB for a 500-byte file.
While composing we therefore count the tree nodes each alias adds and refuse the file past a budget no rule file
comes near; an alias to a node that contains it (a cycle) is refused too. Nesting deeper than any rule file needs
is refused before Python's recursion limit turns it into a traceback. Refusals are `yaml.MarkedYAMLError`s, so
they carry the line of the offending alias or node like any other YAML error.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import yaml

MAX_ALIAS_NODES = 10_000  # tree nodes that aliases may add to one file
MAX_DEPTH = 64  # nesting of the tree, aliases expanded


class _Shape(NamedTuple):
    size: int  # nodes of the tree under a node, aliases expanded
    depth: int


class RefusedYAML(yaml.MarkedYAMLError):
    """A document whose tree would cost far more than its text: too many aliased nodes, a cycle, too deep."""


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._alias_nodes = 0
        self._shapes: dict[int, _Shape] = {}  # id(node) -> shape, for every node composed so far

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._count_alias(event)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise RefusedYAML(None, None, f"nesting deeper than {MAX_DEPTH} levels", event.start_mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        children = [self._shapes[id(child)] for child in _children(node)]
        self._shapes[id(node)] = _Shape(1 + sum(c.size for c in children), 1 + max((c.depth for c in children), default=0))
        return node

    def _count_alias(self, event: yaml.AliasEvent) -> None:
        node = self.anchors.get(event.anchor)
        if node is None:  # an undefined alias: PyYAML's own error says so
            return
        shape = self._shapes.get(id(node))
        if shape is None:  # anchored but not composed yet: the alias sits inside its own anchor
            raise RefusedYAML(None, None, f"alias *{event.anchor} refers to a node that contains it", event.start_mark)
        self._alias_nodes += shape.size
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise RefusedYAML(None, None, f"aliases expand to more than {MAX_ALIAS_NODES} nodes "
                                          f"(*{event.anchor} adds {shape.size}); write the values out or use fewer aliases",
                              event.start_mark)
        if self._depth + shape.depth > MAX_DEPTH:
            raise RefusedYAML(None, None, f"alias *{event.anchor} nests deeper than {MAX_DEPTH} levels", event.start_mark)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def compose_documents(text: str) -> list[tuple[yaml.Node, Any]]:
    """(node, Python value) for every document of `text`, or raise yaml.YAMLError (RefusedYAML past the bounds)."""
    loader = _BoundedLoader(text)
    try:
        documents = []
        while loader.check_node():
            node = loader.get_node()
            documents.append((node, loader.construct_document(node)))
        return documents
    finally:
        loader.dispose()
