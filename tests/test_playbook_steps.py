"""Step types as one registry: each model declares its facts; the executor's handlers, the metrics' labels and the
OpenAPI enum derive from the union instead of retyping it."""
from __future__ import annotations

from typing import ClassVar, Literal

import pytest
from prometheus_client import generate_latest

from rules_engine.playbooks.executor import HANDLERS, run_step
from rules_engine.playbooks.store import open_store
from rules_engine.server.metrics import engine_metrics
from rules_engine.server.openapi import openapi_document
from rules_engine.spec import playbook as pb


class ScaleStep(pb.StepBase):
    """A step type a future change might add: it mutates the fleet."""

    mutates: ClassVar[bool] = True
    rerun_safe: ClassVar[bool] = False
    type: Literal["scale"]
    replicas: int = 1


@pytest.fixture
def with_scale_step(monkeypatch):
    monkeypatch.setattr(pb, "STEP_MODELS", (*pb.STEP_MODELS, ScaleStep))


def _openapi_step_types() -> list[str]:
    document = openapi_document()
    workflow = document["paths"]["/api/v1/workflows/{workflow_id}"]["get"]["responses"]["200"]
    assert workflow["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Workflow"}
    return document["components"]["schemas"]["Step"]["properties"]["type"]["enum"]


def test_every_step_type_declares_its_facts_and_has_a_handler():
    for model in pb.STEP_MODELS:
        assert isinstance(model.mutates, bool) and isinstance(model.rerun_safe, bool), model
    assert set(HANDLERS) == set(pb.STEP_MODELS)
    assert pb.step_types(mutating=True) == ("http", "canary", "rollout", "rollback")
    assert set(pb.step_types(mutating=False)) == {"recommend", "verify"}


def test_rerun_safety_per_step():
    request = {"url": "http://orchestrator/apply"}
    assert not pb.HttpStep(name="a", type="http", request=request).safe_to_rerun()
    assert pb.HttpStep(name="a", type="http", request=request, idempotent=True).safe_to_rerun()
    assert not pb.CanaryStep(name="c", type="canary", request=request).safe_to_rerun()
    assert pb.RollbackStep(name="r", type="rollback", request=request).safe_to_rerun()  # restoring twice is harmless
    assert pb.VerifyStep(name="v", type="verify", query="up", below=1).safe_to_rerun()


def test_a_new_step_model_appears_in_openapi_and_metrics(with_scale_step, tmp_path):
    assert "scale" in _openapi_step_types()
    metrics = engine_metrics(open_store(f"sqlite:///{tmp_path / 'x.db'}"))
    assert metrics.mutating_step_types[-1] == "scale"
    assert 'rules_engine_action_failures_total{type="scale"} 0.0' in generate_latest(metrics.registry).decode()


def test_openapi_lists_exactly_the_union():
    assert _openapi_step_types() == list(pb.step_types())


def test_a_step_without_a_handler_is_a_clear_error():
    with pytest.raises(ValueError, match="no handler for step type 'scale'"):
        run_step(None, None, None, ScaleStep(name="s", type="scale"), {})
