"""Deterministic text for generated files: same input, byte-identical output."""
from __future__ import annotations

import json
from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    """Block style, insertion order, no line folding, multi-line strings as `|` blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        # Shared dicts (one label set on several rules) must be written out each time, never as &id001 anchors.
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False):
        # Indent list items under their key, as hand-written Prometheus and Alertmanager configs do.
        return super().increase_indent(flow, False)


def _str_representer(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def dump_yaml(document: Any, header: str = "") -> str:
    text = yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1_000_000,
                     allow_unicode=True)
    return header + text


def dump_json(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
