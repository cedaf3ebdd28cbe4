"""Deterministic text for generated files: same input, byte-identical output."""
from __future__ import annotations

import json
from typing import Any

import yaml

# libyaml's emitter is ~10x faster than PyYAML's pure-Python one (1,000 rules: seconds, not tens of seconds).
_Base = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Dumper(_Base):  # type: ignore[misc, valid-type]
    """Block style, insertion order, no line folding, multi-line strings as `|` blocks, no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        # Shared dicts (one label set on several rules) must be written out each time, never as &id001 anchors.
        return True


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
