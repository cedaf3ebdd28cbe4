"""What the HTTP API accepts from a request beyond the webhook payload: bodies read with a cap, query parameters,
decision bodies. Each refusal is an InputError naming the parameter, answered 400 (413 for a body over the cap);
a value the store could not hold is refused here, before it reaches a query (rules_engine.playbooks.limits).
"""
from __future__ import annotations

from dataclasses import dataclass

from flask import Request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from rules_engine.playbooks import limits


@dataclass
class InputError(Exception):
    location: str  # "query.limit", "body.comment"
    message: str
    problems: list[str] | None = None  # every problem, when a body had several

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


def capped_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes. With a Content-Length Werkzeug refuses it itself; a chunked
    body has none, and Werkzeug then stops reading at the limit without a word, which cut the JSON into a 400."""
    body = request.get_data(cache=False)
    if request.content_length is None and len(body) >= limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return body


def query_text(request: Request, name: str) -> str | None:
    value = request.args.get(name)
    if value is not None and (problem := limits.text_problem(value)):
        raise InputError(f"query.{name}", problem)
    return value


def query_limit(request: Request, default: int, maximum: int) -> int:
    """`limit`: a positive integer; above `maximum` it is clamped (documented in the OpenAPI description)."""
    raw = request.args.get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise InputError("query.limit", f"must be a positive integer, got {raw[:40]!r}")
    digits = raw.lstrip("0")
    value = int(digits or "0") if len(digits) <= len(str(maximum)) else maximum  # no 5,000-digit int parsing
    if value < 1:
        raise InputError("query.limit", f"must be at least 1, got {value}")
    return min(value, maximum)


def path_text(value: str, name: str) -> str:
    if problem := limits.text_problem(value):
        raise InputError(f"path.{name}", problem)
    return value


def decision_text(request: Request, max_chars: int = 2000) -> str:
    """The operator's words on an approval or rejection: `comment` or `reason` in an optional JSON object."""
    if not request.get_data(cache=True):
        return ""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InputError("body", "must be a JSON object such as {\"comment\": \"...\"}")
    for name in ("comment", "reason"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InputError(f"body.{name}", f"must be a string, got {type(value).__name__}")
        if problem := limits.text_problem(value):
            raise InputError(f"body.{name}", problem)
    return (body.get("comment") or body.get("reason") or "")[:max_chars]


def parse_body(request: Request, model: type[BaseModel], limit: int) -> BaseModel:
    """The JSON body validated into `model`; every problem is an InputError location `body.<field>: message`."""
    body = capped_body(request, limit)
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as error:
        problems = []
        for item in error.errors(include_url=False):
            where = ".".join(["body", *(str(part)[:60] for part in item["loc"])])
            problems.append(f"body: not valid JSON: {item['msg']}" if item["type"] == "json_invalid"
                            else f"{where}: {item['msg']}")
        raise InputError(problems[0].split(": ", 1)[0], problems[0].split(": ", 1)[1], problems) from None
