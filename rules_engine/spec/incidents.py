"""Labelled incidents: when something was really wrong, and where. `tune` scores a rule's candidates against them.

A YAML or JSON file holding a list of incidents, or a mapping with an `incidents` list (so the simulator's truth
files, `rules-engine simulate --truth`, are read as they are). Each incident:

    - instance: vllm-2:8000          # or labels: {instance: ..., model_name: ...}: the series it concerns
      start: 2026-11-19T02:00:00Z    # RFC 3339 or unix seconds
      end: 2026-11-19T02:30:00Z      # optional: null or absent while it lasted to the end of the data
      category: queue_buildup        # optional: only rules of this category are judged on it
      name: queue after deploy       # optional (the truth files' `kind` is used when absent)

Other keys (the truth files' magnitude, expected_signals, ...) are ignored.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from rules_engine.spec.loader import Problem, SpecError
from rules_engine.spec.timerange import parse_time


class Incident(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", arbitrary_types_allowed=True)

    labels: dict[str, str]
    start: pd.Timestamp
    end: pd.Timestamp | None = None
    category: str | None = None
    name: str = ""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data):
        if isinstance(data, dict):
            data = dict(data)
            if "labels" not in data and "instance" in data:
                data["labels"] = {"instance": data["instance"]}
            if not data.get("name") and data.get("kind"):
                data["name"] = str(data["kind"])
        return data

    @field_validator("labels")
    @classmethod
    def _some_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        if not labels:
            raise ValueError("give at least one label (instance: ...) to say which series the incident concerns")
        return labels

    @field_validator("start", "end", mode="before")
    @classmethod
    def _time(cls, value):
        if value is None or isinstance(value, pd.Timestamp):
            return value
        return parse_time(value if isinstance(value, (int, float)) else str(value))

    @model_validator(mode="after")
    def _ordered(self):
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} is not after start {self.start.isoformat()}")
        return self

    def describe(self) -> str:
        where = self.labels.get("instance") or ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return f"{self.name or self.category or 'incident'} on {where} at {self.start.isoformat()}"


def load_incidents(path: str | Path) -> list[Incident]:
    """Every incident of the file, or SpecError naming the file, the incident's index and the field."""
    location = str(path)
    try:
        text = Path(path).read_text()
        document = json.loads(text) if location.endswith(".json") else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise SpecError([Problem(location, None, "", f"cannot read incidents: {error}")]) from None
    items = document.get("incidents") if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise SpecError([Problem(location, None, "", "expected a list of incidents, or a mapping with an `incidents` "
                                                     "list")])
    incidents, problems = [], []
    for index, item in enumerate(items):
        try:
            incidents.append(Incident.model_validate(item))
        except ValidationError as error:
            for detail in error.errors():
                field = ".".join(str(part) for part in detail["loc"])
                problems.append(Problem(location, None, f"incidents[{index}]" + (f".{field}" if field else ""),
                                        detail["msg"].removeprefix("Value error, ")))
    if problems:
        raise SpecError(problems)
    return incidents
