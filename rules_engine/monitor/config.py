"""`rules-engine monitor --config FILE`: the command's settings as YAML, validated, errors naming file:line and field.

Keys are the long option names with `_` for `-` (`prometheus`, `alertmanager` as a list, `interval`,
`bearer_token_file`, `header` as a list, ...); an option given on the command line wins over the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rules_engine.spec.bounded_yaml import compose_documents
from rules_engine.spec.loader import _index_lines, _validation_problems
from rules_engine.spec.models import parse_duration


class MonitorConfigError(ValueError):
    """The config file cannot be used; the message names the file, line and field."""


class MonitorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[str] = Field(default_factory=list)
    prometheus: Optional[str] = None
    bearer_token_file: Optional[str] = None
    basic_auth: Optional[str] = None
    ca_file: Optional[str] = None
    insecure_skip_verify: bool = False
    header: list[str] = Field(default_factory=list)
    timeout: float = Field(default=60.0, gt=0)
    alertmanager: list[str] = Field(default_factory=list)
    interval: str = "30s"
    resend: str = "1m"
    refetch: str = "1m"
    listen: Optional[str] = None
    all: bool = False
    fix: bool = False
    dry_run: bool = False
    database: str = "sqlite:///rules-engine.db"
    var: list[str] = Field(default_factory=list)

    @field_validator("interval", "resend", "refetch")
    @classmethod
    def _duration(cls, value: str) -> str:
        if parse_duration(value) <= parse_duration(0):
            raise ValueError("must be a positive duration")
        return value

    @field_validator("alertmanager", "rules", "header", "var", mode="before")
    @classmethod
    def _list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


def load_config(path: str) -> MonitorConfig:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise MonitorConfigError(f"{path}: cannot read: {error}") from None
    try:
        documents = compose_documents(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise MonitorConfigError(f"{path}:{mark.line + 1 if mark else 1}: invalid YAML: "
                                 f"{getattr(error, 'problem', error)}") from None
    if len(documents) != 1 or not isinstance(documents[0][1], dict):
        raise MonitorConfigError(f"{path}: expected one YAML mapping of settings")
    node, document = documents[0]
    lines: dict[tuple, int] = {}
    problems = _index_lines(node, (), lines, path)
    try:
        config = MonitorConfig.model_validate(document)
    except ValidationError as error:
        problems += _validation_problems(error, lines, path)
    if problems:
        raise MonitorConfigError("\n".join(str(problem) for problem in problems))
    return config
