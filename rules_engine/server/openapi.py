"""The OpenAPI 3.1 description of the HTTP API (served at /api/v1/openapi.json)."""
from __future__ import annotations

from rules_engine import __version__
from rules_engine.playbooks.workflow import STATES
from rules_engine.spec.playbook import step_types

_ERROR = {"type": "object", "properties": {"error": {"type": "string"},
                                           "problems": {"type": "array", "items": {"type": "string"}}}}


def _step_schema() -> dict:
    return {"type": "object", "properties": {
        "idx": {"type": "integer"}, "name": {"type": "string"},
        "type": {"enum": list(step_types())},
        "state": {"enum": ["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "SKIPPED"]},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "duration_seconds": {"type": ["number", "null"]}, "attempts": {"type": "integer"},
        "output": {"type": "object"}, "note": {"type": ["string", "null"]}}}


def _workflow_schema() -> dict:
    return {"type": "object", "properties": {
        "id": {"type": "string"}, "playbook": {"type": "string"}, "state": {"enum": list(STATES)},
        "phase": {"enum": ["main", "rollback", "done"]}, "dry_run": {"type": "boolean"},
        "optimization_level": {"enum": ["conservative", "moderate", "aggressive"]},
        "fingerprint": {"type": "string"}, "starts_at": {"type": "string"}, "alertname": {"type": "string"},
        "instance": {"type": "string"}, "series_key": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "origin": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"}, "decided_by": {"type": ["string", "null"]},
        "reason": {"type": ["string", "null"]}, "context": {"type": "object"},
        "steps": {"type": "array", "items": _step_schema()},
        "audit": {"type": "array", "items": {"type": "object"}}}}


_ALERT = {"type": "object", "required": ["status", "labels", "startsAt", "fingerprint"], "properties": {
    "status": {"enum": ["firing", "resolved"]}, "labels": {"type": "object"}, "annotations": {"type": "object"},
    "startsAt": {"type": "string", "format": "date-time"}, "endsAt": {"type": "string", "format": "date-time"},
    "generatorURL": {"type": "string"}, "fingerprint": {"type": "string"}}}
_PAYLOAD = {"type": "object", "required": ["version", "groupKey", "status", "receiver", "alerts"], "properties": {
    "version": {"const": "4"}, "groupKey": {"type": "string"}, "truncatedAlerts": {"type": "integer"},
    "status": {"enum": ["firing", "resolved"]}, "receiver": {"type": "string"},
    "groupLabels": {"type": "object"}, "commonLabels": {"type": "object"}, "commonAnnotations": {"type": "object"},
    "externalURL": {"type": "string"}, "notification_reason": {"type": "string"}, "routeLabels": {"type": "object"},
    "alerts": {"type": "array", "items": _ALERT}}}


def _response(description: str, schema: dict | None = None) -> dict:
    body: dict = {"description": description}
    if schema is not None:
        body["content"] = {"application/json": {"schema": schema}}
    return body


def _limit(default: int, maximum: int) -> dict:
    return {"name": "limit", "in": "query", "required": False,
            "description": f"at most this many entries (default {default}); values above {maximum} are clamped to it",
            "schema": {"type": "integer", "minimum": 1}}


def openapi_document() -> dict:
    """Built per call, so its lists (step types, states) are whatever the code declares, never retyped here."""
    workflow = _workflow_schema()
    errors = {"400": _response("a parameter or body the API does not accept; the error names it", _ERROR),
              "401": _response("missing or wrong credentials", _ERROR),
              "503": _response("the store is unavailable (locked, read-only, full); retry", _ERROR)}
    decision_body = {"content": {"application/json": {"schema": {"type": "object", "properties": {
        "comment": {"type": "string"}, "reason": {"type": "string"}}}}}, "required": False}
    return {
        "openapi": "3.1.0",
        "info": {"title": "rules-engine", "version": __version__,
                 "description": "Alertmanager webhook receiver and optimization-playbook workflows."},
        "components": {"securitySchemes": {
            "alertmanager": {"type": "http", "scheme": "bearer",
                             "description": "The Alertmanager credential (bearer token or basic auth)."},
            "operator": {"type": "http", "scheme": "bearer",
                         "description": "An operator token; its roles decide which optimization levels it may "
                                        "approve or reject."}}},
        "paths": {
            "/alertmanager/webhook": {"post": {
                "summary": "Receive an Alertmanager webhook (v4); persisted before the 2xx, processed asynchronously",
                "security": [{"alertmanager": []}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _PAYLOAD}}},
                "responses": {"200": _response("accepted and persisted", {"type": "object", "properties": {
                    "status": {"const": "accepted"}, "event_id": {"type": "integer"}, "alerts": {"type": "integer"}}}),
                    **errors, "400": _response("not a v4 webhook payload, or a value the store cannot hold "
                                               "(NUL, over-long fingerprint, label name or value)", _ERROR),
                    "413": _response("payload too large", _ERROR),
                    "503": _response("store unavailable; Alertmanager retries", _ERROR)}}},
            "/api/v1/health": {"get": {"summary": "Liveness", "responses": {"200": _response("alive")}}},
            "/api/v1/ready": {"get": {"summary": "Readiness (the store answers, background loops alive, the intake "
                                                 "keeps up: no event waits longer than intake_stall_seconds)",
                                      "responses": {"200": _response("ready"), "503": _response("not ready")}}},
            "/api/v1/workflows": {"get": {
                "summary": "List workflows, newest first", "security": [{"operator": []}],
                "parameters": [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                               for n in ("state", "instance", "alertname", "playbook")] + [_limit(100, 1000)],
                "responses": {"200": _response("workflows", {"type": "object", "properties": {
                    "workflows": {"type": "array", "items": workflow}}}), **errors}}},
            "/api/v1/workflows/{id}": {"get": {
                "summary": "One workflow with its steps and audit trail", "security": [{"operator": []}],
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _response("the workflow", workflow), **errors,
                              "404": _response("no such workflow", _ERROR)}}},
            **{f"/api/v1/workflows/{{id}}/{action}": {"post": {
                "summary": f"{action.capitalize()} a workflow waiting for approval", "security": [{"operator": []}],
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": decision_body,
                "responses": {"200": _response("the workflow after the decision", workflow), **errors,
                              "403": _response("the operator's roles do not cover the playbook's level", _ERROR),
                              "404": _response("no such workflow", _ERROR),
                              "409": _response("the workflow is not waiting for approval", _ERROR)}}}
               for action in ("approve", "reject")},
            "/api/v1/playbooks": {"get": {"summary": "Loaded playbooks", "security": [{"operator": []}],
                                          "responses": {"200": _response("playbooks"), **errors}}},
            "/api/v1/audit": {"get": {"summary": "The append-only audit log", "security": [{"operator": []}],
                                      "parameters": [{"name": "workflow_id", "in": "query", "required": False,
                                                      "schema": {"type": "string"}}, _limit(1000, 10000)],
                                      "responses": {"200": _response("audit entries"), **errors}}},
            "/api/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": _response("OpenAPI")}}},
            "/metrics": {"get": {"summary": "The engine's own Prometheus metrics",
                                 "responses": {"200": _response("text exposition format")}}},
        },
    }
