"""`rules-engine monitor --config FILE`: the command's settings as YAML, validated, errors naming file:line and field.

Keys are the long option names with `_` for `-` (`prometheus`, `alertmanager` as a list, `interval`,
`bearer_token_file`, `header` as a list, ...); an option given on the command line wins over the file.
"""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rules_engine.spec.loader import SpecError, _validation_problems, read_mapping
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
    """The settings of `path`, read like rule files are (bounded YAML, duplicate keys refused), every problem with
    its file:line."""
    try:
        document, lines = read_mapping(path)
    except SpecError as error:
        raise MonitorConfigError(str(error)) from None
    try:
        return MonitorConfig.model_validate(document)
    except ValidationError as error:
        raise MonitorConfigError("\n".join(str(problem) for problem in _validation_problems(error, lines, path))
                                 ) from None
