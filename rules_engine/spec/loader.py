"""Load rule packs (and the other documents that live beside them) from files and folders.

Every YAML document says what it is with `kind:`. A load either returns a whole RuleSet or raises SpecError
listing every problem found, each with file:line and the field it concerns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from rules_engine.spec.bounded_yaml import compose_documents
from rules_engine.spec.models import RulePack

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Problem:
    path: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class SpecError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass
class RuleSet:
    packs: list[RulePack] = field(default_factory=list)
    slos: list[Any] = field(default_factory=list)
    playbooks: list[Any] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # document name -> file it came from
    rule_lines: dict[tuple[str, str], int] = field(default_factory=dict)  # (pack, rule) -> line of the rule
    # (pack, index in its rules) -> line: two rules sharing a name each keep their own line
    rule_item_lines: dict[tuple[str, int], int] = field(default_factory=dict)

    def rules(self):
        """(pack, rule) for every rule of every pack, in file order."""
        return [(pack, rule) for pack in self.packs for rule in pack.rules]

    def rule_names(self) -> list[str]:
        return [rule.name for _, rule in self.rules()]


def _document_kinds() -> dict[str, tuple[type[BaseModel], str]]:
    """kind -> (model, the RuleSet list it goes to). Imported lazily so each kind's module stays independent."""
    kinds: dict[str, tuple[type[BaseModel], str]] = {"RulePack": (RulePack, "packs")}
    try:
        from rules_engine.spec.playbook import Playbook
    except ImportError:  # the playbook stage may not be installed in a minimal build
        pass
    else:
        kinds["Playbook"] = (Playbook, "playbooks")
    try:
        from rules_engine.spec.slo import SLO
    except ImportError:
        pass
    else:
        kinds["SLO"] = (SLO, "slos")
    return kinds


def _resolve_paths(document: BaseModel, folder: Path) -> BaseModel:
    """Paths inside a document (an SLO's window catalog) are relative to the document's own file."""
    from rules_engine.spec.slo import SLO, resolve_paths

    return resolve_paths(document, folder) if isinstance(document, SLO) else document


def load_ruleset(paths: str | Path | Iterable[str | Path], context: dict | None = None) -> RuleSet:
    """Load files and folders (recursively, *.yaml / *.yml) into one RuleSet, or raise SpecError with every problem.
    `context` is handed to every document's validators (e.g. a playbook's `variables`, see spec/playbook.py)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file())
            if not found:
                problems.append(Problem(str(path), None, "", "folder holds no .yaml/.yml files"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append(Problem(str(path), None, "", "no such file or folder"))

    ruleset = RuleSet()
    kinds = _document_kinds()
    for path in files:
        problems.extend(_load_file(path, kinds, ruleset, context))
    problems.extend(_cross_document_problems(ruleset))
    if problems:
        raise SpecError(problems)
    return ruleset


def _read_documents(path: Path) -> list[tuple[yaml.Node, Any]]:
    """The file's YAML documents through the bounded composer (bounded_yaml), or SpecError with its line."""
    name = str(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError([Problem(name, None, "", f"cannot read: {error}")]) from None
    try:
        return compose_documents(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise SpecError([Problem(name, mark.line + 1 if mark else None, "",
                                 f"invalid YAML: {getattr(error, 'problem', error)}")]) from None


def read_mapping(path: str | Path) -> tuple[dict, dict[tuple, int]]:
    """A settings file: one YAML mapping (or nothing), read like rule files are, and the line of every key and
    item by its path (("notify", "attempts") -> 12). Raises SpecError with file:line: unreadable, invalid or
    refused YAML, duplicate keys, not a mapping. Map a validation error onto the lines with `_validation_problems`."""
    documents = _read_documents(Path(path))
    documents = [(node, value) for node, value in documents if value is not None]
    if not documents:
        return {}, {}
    node, value = documents[0]
    lines: dict[tuple, int] = {}
    problems = _index_lines(node, (), lines, str(path))
    if len(documents) > 1:
        problems.append(Problem(str(path), documents[1][0].start_mark.line + 1, "", "expected one YAML document"))
    elif not isinstance(value, dict):
        problems.append(Problem(str(path), node.start_mark.line + 1, "", "expected a mapping of settings"))
    if problems:
        raise SpecError(problems)
    return value, lines


def _load_file(path: Path, kinds: dict, ruleset: RuleSet, context: dict | None = None) -> list[Problem]:
    name = str(path)
    try:
        documents = _read_documents(path)
    except SpecError as error:
        return error.problems

    problems: list[Problem] = []
    for node, document in documents:
        if document is None:
            continue
        lines: dict[tuple, int] = {}
        problems.extend(_index_lines(node, (), lines, name))
        if not isinstance(document, dict):
            problems.append(Problem(name, node.start_mark.line + 1, "", "a document must be a mapping with a `kind:` key"))
            continue
        kind = document.get("kind")
        if kind not in kinds:
            said = f"unknown kind {kind!r}" if kind is not None else "missing `kind:`"
            problems.append(Problem(name, lines.get(("kind",), node.start_mark.line + 1), "kind",
                                    f"{said}; every file says what it is: one of {sorted(kinds)}"))
            continue
        model, target = kinds[kind]
        try:
            parsed = model.model_validate(document, context=context)
        except ValidationError as error:
            problems.extend(_validation_problems(error, lines, name))
            continue
        getattr(ruleset, target).append(_resolve_paths(parsed, path.parent))
        ruleset.files[f"{kind}/{getattr(parsed, 'name', '')}"] = name
        for index, rule in enumerate(getattr(parsed, "rules", []) if kind == "RulePack" else []):
            ruleset.rule_lines[(parsed.name, rule.name)] = lines.get(("rules", index))
            ruleset.rule_item_lines[(parsed.name, index)] = lines.get(("rules", index))
    return problems


def _index_lines(node: yaml.Node, path: tuple, lines: dict[tuple, int], name: str) -> list[Problem]:
    """Record the line of every mapping key and sequence item; report duplicate keys, which YAML would hide."""
    problems: list[Problem] = []
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                problems.append(Problem(name, key_node.start_mark.line + 1, _dotted(path + (key,)), "duplicate key"))
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            problems.extend(_index_lines(value_node, path + (key,), lines, name))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            problems.extend(_index_lines(item, path + (index,), lines, name))
    return problems


def _validation_problems(error: ValidationError, lines: dict[tuple, int], name: str) -> list[Problem]:
    problems = []
    for item in error.errors():
        # A pydantic location may hold union tags ("threshold") that are not keys of the document: skip those.
        located: tuple = ()
        for part in item["loc"]:
            if located + (part,) in lines:
                located += (part,)
        field_path = list(located)
        if item["type"] == "missing":
            field_path.append(str(item["loc"][-1]))
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif message.startswith("Value error, "):
            message = message[len("Value error, "):]
        problems.append(Problem(name, lines.get(located), _dotted(tuple(field_path)), message))
    return problems


def _dotted(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _cross_document_problems(ruleset: RuleSet) -> list[Problem]:
    problems = []
    seen: dict[str, str] = {}
    for pack in ruleset.packs:
        where = ruleset.files.get(f"RulePack/{pack.name}", pack.name)
        for index, rule in enumerate(pack.rules):
            line = ruleset.rule_item_lines.get((pack.name, index))
            if rule.name in seen:
                problems.append(Problem(where, line, f"rules.{rule.name}", f"duplicate rule name (also at {seen[rule.name]})"))
            seen[rule.name] = f"{where}:{line}" if line else where
    pack_names = [pack.name for pack in ruleset.packs]
    for duplicate in sorted({n for n in pack_names if pack_names.count(n) > 1}):
        problems.append(Problem(ruleset.files.get(f"RulePack/{duplicate}", ""), None, "name", f"duplicate pack name {duplicate!r}"))
    playbook_names = {getattr(p, "name", None) for p in ruleset.playbooks}
    if ruleset.playbooks:
        for pack in ruleset.packs:
            for rule in pack.rules:
                if rule.playbook and rule.playbook not in playbook_names:
                    problems.append(Problem(ruleset.files.get(f"RulePack/{pack.name}", ""), None, f"rules.{rule.name}.playbook",
                                            f"no playbook named {rule.playbook!r} is loaded (have: {sorted(playbook_names)})"))
    return problems
