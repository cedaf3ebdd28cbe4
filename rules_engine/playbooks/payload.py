"""The Alertmanager webhook payload (version 4) and the identity of an alert episode.

Unknown keys are ignored so a newer Alertmanager keeps working; the keys a receiver depends on are required and
typed, so a custom `payload:` template or another tool's JSON is rejected with a 400 naming the field. Every text
is checked against what the store can hold (rules_engine.playbooks.limits) here, before the acknowledgement.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from rules_engine.playbooks import limits
from rules_engine.spec.times import rfc3339_parts

_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$")
ZERO_TIME = "0001-01-01T00:00:00.000000000Z"  # Alertmanager's endsAt while an alert fires


@lru_cache(maxsize=4096)  # a group's alerts, and its resends, share a few startsAt values
def canonical_time(text: str) -> str:
    """RFC 3339 (nanoseconds allowed) → UTC with exactly nine fractional digits.

    Two Alertmanagers, or the same one before and after a restart, must produce the same episode key for the same
    startsAt whatever offset or precision they print, and Python's datetime would drop nanoseconds.
    """
    found = _RFC3339.match(text)
    if not found:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    day, clock, fraction, offset = found.groups()
    fraction = (fraction or "").ljust(9, "0")
    if day.startswith("0001-01-01") and clock == "00:00:00":
        return ZERO_TIME
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        second = datetime.fromisoformat(f"{day}T{clock}{offset}").timestamp()
        return rfc3339_parts(int(second), int(fraction), "ns")
    except (OverflowError, ValueError):  # e.g. 9999-12-31T23:00:00-05:00 is in the year 10000 in UTC
        raise ValueError(f"{text!r} is outside years 0001-9999 once converted to UTC") from None


def epoch_seconds(canonical: str) -> float:
    if canonical == ZERO_TIME:
        return 0.0
    whole = datetime.strptime(canonical[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return whole.timestamp() + int(canonical[20:29]) / 1e9


def _storable(joined: str, *labels: dict[str, str]) -> bool:
    """Whether the store can hold every text of a model: `joined` is all of them concatenated, `labels` its label
    dicts (whose names and values have size limits). One pass of C-level string operations over the whole model;
    checking each text with a validator of its own cost a Python call per field, 18 ms for a 1,000-alert payload
    whose JSON parses in 4 ms."""
    if "\x00" in joined:
        return False
    if joined.isascii():
        most = 1
    elif _encodes(joined):  # a lone surrogate is the only str that does not encode
        most = 4  # bytes per character in UTF-8, at most
    else:
        return False
    for found in labels:
        if found and (max(map(len, found)) * most > limits.LABEL_NAME_MAX_BYTES
                      or max(map(len, found.values())) * most > limits.LABEL_VALUE_MAX_BYTES):
            return False
    return True


def _storage_problem(texts: dict[str, str | dict[str, str] | None]) -> tuple[str, str] | None:
    """The first (field, problem) among a model's texts that the store cannot hold (rules_engine.playbooks.limits),
    or None, text by text: what runs when _storable, which errs on the side of caution (4 bytes a character outside
    ASCII), says no. `texts` maps each field's JSON name to its text, or dict of labels/annotations."""
    for name, value in texts.items():
        if isinstance(value, str) or value is None:
            if value is not None and (problem := limits.text_problem(value)):
                return name, problem
            continue
        for key, item in value.items():
            problem = limits.text_problem(key) or (
                limits.size_problem(key, limits.LABEL_NAME_MAX_BYTES) if name in _LABEL_FIELDS else None)
            if problem:
                return f"{name}.{_short(key)}.[key]", problem
            problem = limits.text_problem(item) or (
                limits.size_problem(item, limits.LABEL_VALUE_MAX_BYTES) if name in _LABEL_FIELDS else None)
            if problem:
                return f"{name}.{_short(key)}", problem
    return None


_LABEL_FIELDS = frozenset({"labels", "groupLabels", "commonLabels", "routeLabels"})


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse(field: str, problem: str) -> PydanticCustomError:
    """An error about one field raised by a whole-model check; parse_payload appends `field` to its location."""
    return PydanticCustomError("unstorable", "{problem}", {"field": field, "problem": problem})


class Alert(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    # The form is checked here, with the other fields' errors; _check makes it canonical (UTC, nanoseconds).
    starts_at: str = Field(alias="startsAt", pattern=_RFC3339.pattern)
    ends_at: str = Field(default=ZERO_TIME, alias="endsAt", pattern=_RFC3339.pattern)
    generator_url: str = Field(default="", alias="generatorURL")
    fingerprint: str = Field(min_length=1, max_length=limits.FINGERPRINT_MAX_CHARS)

    @model_validator(mode="after")
    def _check(self) -> Alert:
        """One call per alert: canonical times, and every text one the store can hold."""
        fields = self.__dict__  # not setattr: pydantic's __setattr__ costs more than the whole check
        for name, alias in (("starts_at", "startsAt"), ("ends_at", "endsAt")):
            try:
                fields[name] = canonical_time(fields[name])
            except ValueError as error:
                raise _refuse(alias, str(error)) from None
        labels, annotations = self.labels, self.annotations
        if not _storable("".join((*labels, *labels.values(), *annotations, *annotations.values(),
                                  self.generator_url, self.fingerprint)), labels) and (
                found := _storage_problem({"labels": labels, "annotations": annotations,
                                           "generatorURL": self.generator_url, "fingerprint": self.fingerprint})):
            raise _refuse(*found)
        return self


class WebhookPayload(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    version: Literal["4"]
    group_key: str = Field(alias="groupKey")
    truncated_alerts: int = Field(default=0, ge=0, alias="truncatedAlerts")
    status: Literal["firing", "resolved"]
    receiver: str
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field(default="", alias="externalURL")
    notification_reason: str | None = None  # Alertmanager >= 0.32
    route_labels: dict[str, str] | None = Field(default=None, alias="routeLabels")  # Alertmanager >= 0.32
    alerts: list[Alert]

    @model_validator(mode="after")
    def _check(self) -> WebhookPayload:
        texts = {"groupKey": self.group_key, "receiver": self.receiver, "groupLabels": self.group_labels,
                 "commonLabels": self.common_labels, "commonAnnotations": self.common_annotations,
                 "externalURL": self.external_url, "notification_reason": self.notification_reason,
                 "routeLabels": self.route_labels}
        flat = [t for value in texts.values() if value for t in ([value] if isinstance(value, str) else
                                                                 [*value, *value.values()])]
        if not _storable("".join(flat), self.group_labels, self.common_labels, self.route_labels or {}) and (
                found := _storage_problem(texts)):
            raise _refuse(*found)
        return self


class PayloadError(ValueError):
    """A payload that is not an Alertmanager v4 webhook; `problems` name each field ("alerts[3].startsAt: ...")."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def parse_payload(body: bytes | str) -> WebhookPayload:
    try:
        return WebhookPayload.model_validate_json(body)
    except ValidationError as error:
        problems = []
        for item in error.errors(include_url=False):
            where = "".join(f"[{p}]" if isinstance(p, int) else (f".{_short(p)}" if i else str(p))
                            for i, p in enumerate(item["loc"]))
            if item["type"] == "unstorable":  # a whole-model check names the field in its context
                where = f"{where}.{item['ctx']['field']}" if where else item["ctx"]["field"]
            if item["type"] == "string_pattern_mismatch":  # startsAt, endsAt
                item["msg"] = f"not an RFC 3339 timestamp: {item['input']!r}"
            if item["type"] == "json_invalid":
                problems.append(f"body is not valid JSON: {item['msg']}")
            else:
                problems.append(f"{where or 'body'}: {item['msg']}")
        raise PayloadError(problems) from None


def _short(name: str, keep: int = 60) -> str:
    """A label name in an error's location, cut so an over-long one does not flood the answer."""
    return name if len(name) <= keep else name[:keep] + "…"


def label_fingerprint(labels: dict[str, str]) -> str:
    """Prometheus' label-set fingerprint (FNV-1a 64 over sorted name/value pairs, each followed by 0xff), which is
    what Alertmanager sends as `fingerprint`, so an alert built from a backtest finding has the live alert's key."""
    hash_ = 0xCBF29CE484222325
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode("utf-8") + b"\xff":
                hash_ = ((hash_ ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{hash_:016x}"
