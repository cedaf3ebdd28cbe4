"""The Alertmanager webhook payload (version 4) and the identity of an alert episode.

Unknown keys are ignored so a newer Alertmanager keeps working; the keys a receiver depends on are required and
typed, so a custom `payload:` template or another tool's JSON is rejected with a 400 naming the field. Every text
is checked against what the store can hold (rules_engine.playbooks.limits) here, before the acknowledgement.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from rules_engine.playbooks import limits

from rules_engine.spec.times import rfc3339_parts

_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$")
ZERO_TIME = "0001-01-01T00:00:00.000000000Z"  # Alertmanager's endsAt while an alert fires


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


def _check(problem_of):
    def check(value: str) -> str:
        problem = problem_of(value)
        if problem:
            raise ValueError(problem)
        return value
    return AfterValidator(check)


StoredText = Annotated[str, _check(limits.text_problem)]
LabelName = Annotated[StoredText, _check(lambda v: limits.size_problem(v, limits.LABEL_NAME_MAX_BYTES))]
LabelValue = Annotated[StoredText, _check(lambda v: limits.size_problem(v, limits.LABEL_VALUE_MAX_BYTES))]
Labels = dict[LabelName, LabelValue]


class Alert(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    status: Literal["firing", "resolved"]
    labels: Labels
    annotations: dict[StoredText, StoredText] = Field(default_factory=dict)
    starts_at: str = Field(alias="startsAt")
    ends_at: str = Field(default=ZERO_TIME, alias="endsAt")
    generator_url: StoredText = Field(default="", alias="generatorURL")
    fingerprint: StoredText = Field(min_length=1, max_length=limits.FINGERPRINT_MAX_CHARS)

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _time(cls, value: str) -> str:
        return canonical_time(value)


class WebhookPayload(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    version: Literal["4"]
    group_key: StoredText = Field(alias="groupKey")
    truncated_alerts: int = Field(default=0, ge=0, alias="truncatedAlerts")
    status: Literal["firing", "resolved"]
    receiver: StoredText
    group_labels: Labels = Field(default_factory=dict, alias="groupLabels")
    common_labels: Labels = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[StoredText, StoredText] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: StoredText = Field(default="", alias="externalURL")
    notification_reason: StoredText | None = None  # Alertmanager >= 0.32
    route_labels: Labels | None = Field(default=None, alias="routeLabels")  # Alertmanager >= 0.32
    alerts: list[Alert]


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
