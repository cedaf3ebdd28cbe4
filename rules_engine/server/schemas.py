"""The HTTP API's request and response models: the server validates requests with them and the OpenAPI description
(rules_engine/server/openapi.py) is generated from them, so the two cannot drift apart."""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from rules_engine.playbooks import store as st
from rules_engine.playbooks.analysis import JOB_STATES, AnalysisRequest
from rules_engine.playbooks.limits import Labels, StoredText
from rules_engine.playbooks.workflow import STATES
from rules_engine.spec.playbook import OPTIMIZATION_LEVELS, step_types

Severity = Literal["low", "medium", "high", "critical"]
Category = Literal["high_latency", "low_throughput", "queue_buildup", "cache_inefficiency", "memory_pressure",
                   "batch_size_suboptimal", "error_rate", "slo_burn"]
WorkflowState = Literal[STATES]  # type: ignore[valid-type]


class Error(BaseModel):
    error: str
    problems: list[str] = Field(default_factory=list)


class WebhookAccepted(BaseModel):
    status: Literal["accepted"]
    event_id: int
    alerts: int


class Health(BaseModel):
    status: Literal["healthy"]
    timestamp: str


class Ready(BaseModel):
    status: Literal["ready", "not ready"]
    problems: list[str] = Field(default_factory=list)
    playbooks: int | None = None
    processing: bool | None = None
    events_unprocessed: int | None = None


class Step(BaseModel):
    idx: int
    name: str
    # The enum is read from the step registry whenever the description is generated, never typed here.
    type: str = Field(json_schema_extra=lambda schema: schema.update(enum=list(step_types())))
    state: Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "SKIPPED"]
    started_at: str | None
    finished_at: str | None
    duration_seconds: float | None
    attempts: int
    output: dict[str, Any]
    note: str | None


# A workflow as the API shows it is the store's record as `st.Workflow.to_json` writes it: the same fields in the
# same order, less the lease (which process runs it: bookkeeping), times as RFC 3339 text, the enumerations the API
# guarantees where the record holds text, and the steps and audit trail that some answers add.
_WORKFLOW_API_TYPES: dict[str, Any] = {
    "state": WorkflowState,
    "phase": Literal["main", "rollback", "done"],
    "optimization_level": Literal[OPTIMIZATION_LEVELS],  # type: ignore[valid-type]
    "created_at": str,
    "updated_at": str,
}
_WORKFLOW_NOT_IN_API = ("lease_owner", "lease_until", "steps")
_record_types = get_type_hints(st.Workflow)
Workflow = create_model(
    "Workflow",
    **{f.name: (_WORKFLOW_API_TYPES.get(f.name, _record_types[f.name]), ...)
       for f in dataclasses.fields(st.Workflow) if f.name not in _WORKFLOW_NOT_IN_API},
    steps=(list[Step] | None, None),
    audit=(list[dict[str, Any]] | None, None),
)


class WorkflowList(BaseModel):
    workflows: list[Workflow]


class WorkflowQuery(BaseModel):
    """Query parameters of GET /api/v1/workflows."""

    state: WorkflowState | None = None
    instance: str | None = None
    alertname: str | None = None
    playbook: str | None = None
    limit: int | None = Field(default=None, ge=1, description="at most this many (default 100); above 1000: 1000")


class AuditQuery(BaseModel):
    workflow_id: str | None = None
    limit: int | None = Field(default=None, ge=1, description="at most this many (default 1000); above 10000: 10000")


class Decision(BaseModel):
    comment: str | None = None
    reason: str | None = None


class PlaybookList(BaseModel):
    playbooks: list[dict[str, Any]]


class AuditList(BaseModel):
    audit: list[dict[str, Any]]


# --- analysis -----------------------------------------------------------------------------------------------------
class AnalysisJob(BaseModel):
    id: str
    state: Literal[JOB_STATES]  # type: ignore[valid-type]
    url: str
    request: dict[str, Any]
    requested_by: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    estimate: dict[str, Any] = Field(description="queries, points per series, and once measured, series and points")
    error: str | None
    result: dict[str, Any] | None = Field(description="when succeeded: the export contract's JSON (findings, slos, "
                                                      "health, rules, not_evaluated, range, source)")


class AnalysisJobList(BaseModel):
    jobs: list[AnalysisJob]


class AnalysisQuery(BaseModel):
    limit: int | None = Field(default=None, ge=1, description="at most this many (default 100); above 1000: 1000")


# --- recommendations --------------------------------------------------------------------------------------------
class Finding(BaseModel):
    """A finding of the export contract (the keys recommendations use; others are accepted and ignored)."""

    model_config = ConfigDict(extra="ignore")
    rule: StoredText = Field(min_length=1, max_length=200)
    kind: Literal["threshold", "trend", "regression", "slo"] = "threshold"
    category: Category
    severity: Severity
    labels: Labels = Field(default_factory=dict)
    rule_labels: Labels = Field(default_factory=dict)
    start: str | None = Field(default=None, description="RFC 3339")
    end: str | None = None
    duration_seconds: float | None = Field(default=None, ge=0)
    value: float | None = None
    threshold: float | None = None
    recommendation: StoredText = ""
    playbook: StoredText | None = None
    pack: StoredText | None = None
    summary: StoredText = ""
    description: StoredText = ""
    details: dict[str, Any] = Field(default_factory=dict)


class InstanceSettings(BaseModel):
    """What is known of one instance's server beyond what Prometheus shows."""

    model_config = ConfigDict(extra="forbid")
    server: Literal["vllm", "tgi", "sglang"] | None = None
    model: str | None = Field(default=None, description="model id, for its architecture (rules_engine/data/"
                                                        "models.yaml) when the model_name label is not one")
    params_billion: float | None = Field(default=None, gt=0)
    layers: int | None = Field(default=None, ge=1)
    kv_heads: int | None = Field(default=None, ge=1)
    head_dim: int | None = Field(default=None, ge=1)
    weight_dtype: Literal["bf16", "fp16", "fp8", "int8", "int4"] | None = None
    gpus: int | None = Field(default=None, ge=1, le=1024)
    gpu_memory_gib: float | None = Field(default=None, gt=0, le=4096)
    replicas: int | None = Field(default=None, ge=1)
    settings: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="current knob values by name: gpu_memory_utilization, max_num_seqs, "
                                          "max_num_batched_tokens, cache_dtype, mem_fraction_static, ...")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    findings: list[Finding] = Field(min_length=1, max_length=5000)
    current: dict[str, InstanceSettings] = Field(default_factory=dict, description="by instance")


class RecommendResponse(BaseModel):
    recommendations: list[dict[str, Any]] = Field(description="ranked: rank, priority, optimization, title, "
                                                  "estimated_improvement {metric, amount, unit, method}, risks, "
                                                  "settings {server kind: [{flag, value, current, ...}]}, "
                                                  "playbook, findings, instances, model, server_kind")
    unanswered: list[dict[str, Any]] = Field(description="findings no setting answers, and why")
    notes: list[str] = Field(default_factory=list, description="e.g. why current settings were not read")


# --- starting workflows -----------------------------------------------------------------------------------------
class Recommendation(BaseModel):
    model_config = ConfigDict(extra="ignore")
    optimization: str | None = None
    playbook: StoredText | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    findings: list[Finding] = Field(min_length=1, max_length=1000)


class StartWorkflow(BaseModel):
    """Start a playbook's workflow from an analysis finding or a recommendation (one of the two)."""

    model_config = ConfigDict(extra="forbid")
    playbook: StoredText | None = Field(default=None, description="default: the finding's or recommendation's")
    finding: Finding | None = None
    recommendation: Recommendation | None = None

    @model_validator(mode="after")
    def _one(self) -> "StartWorkflow":
        if (self.finding is None) == (self.recommendation is None):
            raise ValueError("give exactly one of `finding` or `recommendation`")
        return self


class StartedWorkflows(BaseModel):
    workflows: list[Workflow]
    created: int
    existing: int
    suppressed: int


__all__ = ["AnalysisRequest"]
