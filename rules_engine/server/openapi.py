"""The OpenAPI 3.1 description (served at /api/v1/openapi.json, browsable at /docs), generated from the routes.

Each view declares what it takes and answers with `@documented(...)` beside its route: pydantic models for the
body, the query and each response. The document walks the application's URL map and asks pydantic for every
model's JSON schema, so it lists exactly the routes that exist, with the schemas the server validates against.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from rules_engine import __version__
from rules_engine.server.schemas import Error

REF = "#/components/schemas/{model}"
# Sections of the browsable description, by path prefix (the first that matches; otherwise "service").
TAGS = (("/alertmanager/", "webhook"), ("/api/v1/analysis", "analysis"), ("/api/v1/optimization/", "analysis"),
        ("/api/v1/workflows", "workflows"), ("/api/v1/playbooks", "workflows"), ("/api/v1/audit", "workflows"))


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: dict[int, tuple[str, type[BaseModel] | None]]
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    security: str | None = "operator"
    content_type: str = "application/json"
    errors: tuple[int, ...] = (400, 401, 503)
    extra: dict = field(default_factory=dict)


COMMON_ERRORS = {400: "a parameter or body the API does not accept; the error names it",
                 401: "missing or wrong credentials",
                 503: "the store is unavailable (locked, read-only, full); retry"}


def documented(summary: str, responses: dict[int, tuple[str, type[BaseModel] | None]], **options) -> Callable:
    """Attach the OpenAPI operation to a view function."""
    def attach(view: Callable) -> Callable:
        view.openapi = Operation(summary, responses, **options)  # type: ignore[attr-defined]
        return view
    return attach


def openapi_document(app: Flask | None = None) -> dict:
    """The description of `app`'s routes (without one: of the server's blueprints, as create_app registers them)."""
    if app is None:
        from rules_engine.server.app import api_blueprint, health_blueprint, webhook_blueprint

        app = Flask("rules_engine")
        for blueprint in (webhook_blueprint, api_blueprint, health_blueprint):
            app.register_blueprint(blueprint)
    operations = []
    for rule in app.url_map.iter_rules():
        operation = getattr(app.view_functions.get(rule.endpoint), "openapi", None)
        if operation is not None:
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                operations.append((path, method.lower(), operation, list(rule.arguments)))
    models = {Error}
    for _, _, operation, _ in operations:
        models |= {m for _, m in operation.responses.values() if m is not None}
        models |= {m for m in (operation.body, operation.query) if m is not None}
    keys, schemas = models_json_schema([(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
                                       ref_template=REF)

    def ref(model: type[BaseModel]) -> dict:
        return keys[(model, "validation")]

    paths: dict[str, dict] = {}
    for path, method, operation, arguments in operations:
        responses = {str(code): {"description": text, **({"content": {"application/json": {"schema": ref(model)}}}
                                                         if model is not None else {})}
                     for code, (text, model) in operation.responses.items()}
        for code in operation.errors:
            responses.setdefault(str(code), {"description": COMMON_ERRORS.get(code, "refused"),
                                             "content": {"application/json": {"schema": ref(Error)}}})
        tag = next((name for prefix, name in TAGS if path.startswith(prefix)), "service")
        body: dict = {"summary": operation.summary, "tags": [tag], "responses": responses, **operation.extra}
        if operation.security:
            body["security"] = [{operation.security: []}]
        parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                      for name in arguments]
        if operation.query is not None:
            schema = operation.query.model_json_schema(ref_template=REF)
            parameters += [{"name": name, "in": "query", "required": False,
                            "description": prop.get("description", ""),
                            "schema": {k: v for k, v in prop.items() if k not in ("title", "description")}}
                           for name, prop in schema["properties"].items()]
        if parameters:
            body["parameters"] = parameters
        if operation.body is not None:
            body["requestBody"] = {"required": operation.body_required,
                                   "content": {operation.content_type: {"schema": ref(operation.body)}}}
        paths.setdefault(path, {})[method] = body
    return {
        "openapi": "3.1.0",
        "info": {"title": "rules-engine", "version": __version__,
                 "description": "Alertmanager webhook receiver, optimization-playbook workflows, analysis jobs "
                                "and ranked recommendations. Browse it at /docs."},
        "components": {"schemas": schemas.get("$defs", {}), "securitySchemes": {
            "alertmanager": {"type": "http", "scheme": "bearer",
                             "description": "The Alertmanager credential (bearer token or basic auth)."},
            "operator": {"type": "http", "scheme": "bearer",
                         "description": "An operator token; its roles decide which optimization levels it may "
                                        "approve, reject or start without approval."}}},
        "paths": dict(sorted(paths.items())),
    }
