"""The playbook spec: which alerts a playbook acts on, under which policy, and its ordered steps.

A playbook is a YAML document with `kind: Playbook` beside the rule packs. Text fields that say "template" are
Jinja2 templates rendered in a sandbox with the alert's labels and annotations as data (never as template source);
they are parsed here so a syntax error is reported at load time with the file and field.
"""
from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, Any, ClassVar, Iterator, Literal, Union, get_args

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator, model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from rules_engine.spec.models import Category, ServerKind, parse_duration
from rules_engine.spec.template_names import CONTEXT, REQUEST_CONTEXT, Reference, context_problem, references

# Durations are written as Prometheus durations ("30s", "5m") or seconds, and held as seconds.
Seconds = Annotated[float, BeforeValidator(lambda v: parse_duration(v).total_seconds())]

OptimizationLevel = Literal["conservative", "moderate", "aggressive"]
OPTIMIZATION_LEVELS: tuple[str, ...] = ("conservative", "moderate", "aggressive")
Risk = Literal["low", "medium", "high"]
Bottleneck = Literal["queue_buildup", "kv_cache_pressure", "high_ttft", "high_itl", "low_prefix_cache_hit",
                     "under_batching"]

# Alertmanager's matcher syntax: name, operator, value (double-quoted, or bare without spaces/quotes).
_MATCHER = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|([^"\s,{}=]*))\s*$')
_SYNTAX_ENV = ImmutableSandboxedEnvironment()


class LabelMatcher(BaseModel):
    """One Alertmanager-style matcher. Regexes are fully anchored, as in Alertmanager."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    op: Literal["=", "!=", "=~", "!~"]
    value: str

    @classmethod
    def parse(cls, text: str) -> "LabelMatcher":
        found = _MATCHER.match(text)
        if not found:
            raise ValueError(f'invalid matcher {text!r}: write name="value", name!="value", name=~"regex" or name!~"regex"')
        name, op, quoted, bare = found.groups()
        value = bytes(quoted, "utf-8").decode("unicode_escape") if quoted is not None else bare
        if op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"invalid regex in matcher {text!r}: {error}") from None
        return cls(name=name, op=op, value=value)

    def matches(self, labels: dict[str, str]) -> bool:
        # A missing label is the empty string, as in Alertmanager (so `instance!=""` requires the label).
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = re.fullmatch(self.value, actual) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.name}{self.op}"{escaped}"'


def _check_template(text: str) -> str:
    try:
        _SYNTAX_ENV.parse(text)
    except TemplateSyntaxError as error:
        raise ValueError(f"invalid template (line {error.lineno} of the template): {error.message}") from None
    return text


def _leaves(value: Any, where: tuple) -> Iterator[tuple[tuple, str]]:
    """(location, text) of every string leaf of a JSON body structure."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, where + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, where + (index,))


def _check_templates_in(value: Any) -> Any:
    """Parse every string leaf of a JSON body structure as a template."""
    for _, text in _leaves(value, ()):
        _check_template(text)
    return value


class Match(BaseModel):
    """Which alerts start this playbook: every matcher must hold. An alert whose `playbook` annotation names this
    playbook also matches (the compile stage writes that annotation from the rule's `playbook:`)."""

    model_config = ConfigDict(extra="forbid")
    matchers: list[str] = Field(default_factory=list)
    by_annotation: bool = True

    @field_validator("matchers")
    @classmethod
    def _parse(cls, matchers: list[str]) -> list[str]:
        for text in matchers:
            LabelMatcher.parse(text)
        return matchers

    @cached_property
    def label_matchers(self) -> list[LabelMatcher]:
        return [LabelMatcher.parse(text) for text in self.matchers]


class Approval(BaseModel):
    model_config = ConfigDict(extra="forbid")
    required: bool = True
    # A workflow nobody approved in time is cancelled: approving a stale alert's change is worse than not acting.
    timeout: Seconds = 4 * 3600.0


class HttpRequest(BaseModel):
    """An outbound call. `url` and header values are text templates; `json` is a structure whose string leaves are
    templates (a leaf that is one `{{ expression }}` keeps the expression's native type, e.g. a dict of changes).
    In `url` every output but a `vars` value is percent-encoded as one path segment, and the rendered URL must lie
    under a configured target (see rules_engine.playbooks.targets).

    `timeout` is a total deadline per attempt (connect, send, the whole answer), `deadline` one for all attempts
    together (default: every attempt's timeout plus the pauses between them)."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    timeout: Seconds = 10.0
    retries: int = Field(default=2, ge=0, le=10)
    retry_backoff: Seconds = 1.0
    deadline: Seconds | None = None
    expect_status: list[int] = Field(default_factory=lambda: list(range(200, 300)))

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return _check_template(url)

    def total_seconds(self) -> float:
        """How long all attempts together may take."""
        if self.deadline is not None:
            return self.deadline
        return self.timeout * (self.retries + 1) + self.retry_backoff * (2 ** self.retries - 1)

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for value in headers.values():
            _check_template(value)
        return headers

    @field_validator("json_body")
    @classmethod
    def _body(cls, body: Any) -> Any:
        return _check_templates_in(body)


class StepBase(BaseModel):
    """What every step type shares. Each type also declares two facts about itself, read by the executor (whether a
    failure needs a rollback, whether an interrupted run may be repeated), the metrics and the API description:

    - `mutates`: running it may change the fleet, so a failure after it started calls for the rollback steps;
    - `rerun_safe`: running it again after a crash left its outcome unknown is harmless.
    """

    mutates: ClassVar[bool]
    rerun_safe: ClassVar[bool]
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]+$", max_length=100)
    # Run only for alerts whose labels match all of these (e.g. one verify per alertname); SKIPPED otherwise.
    when: list[str] = Field(default_factory=list)

    @field_validator("when")
    @classmethod
    def _when(cls, matchers: list[str]) -> list[str]:
        for text in matchers:
            LabelMatcher.parse(text)
        return matchers

    def applies_to(self, labels: dict[str, str]) -> bool:
        return all(LabelMatcher.parse(text).matches(labels) for text in self.when)

    def safe_to_rerun(self) -> bool:
        """Whether this step, found interrupted, may run again: its type's fact unless the step itself says more."""
        return self.rerun_safe

    # The names this step's templates see beyond CONTEXT (rules_engine.spec.template_names).
    template_context: ClassVar[dict[str, frozenset[str] | None]] = {}

    def templates(self) -> Iterator[tuple[tuple, str]]:
        """(location in the step, source) of every template the step renders."""
        return iter(())


class RecommendStep(StepBase):
    """Concrete configuration changes for the server kind, reading current settings from Prometheus when exposed.

    Reads Prometheus and computes; the changes are applied by later steps. Rerun-safe: a second run recomputes
    from the same settings, and only its finished output is recorded."""

    mutates: ClassVar[bool] = False
    rerun_safe: ClassVar[bool] = True
    type: Literal["recommend"]
    bottleneck: Bottleneck
    # One playbook can serve several rules: the alert's name picks the bottleneck where it differs.
    bottleneck_by_alertname: dict[str, Bottleneck] = Field(default_factory=dict)
    server_kind: ServerKind | None = None  # defaults to the playbook's
    current: dict[str, Any] = Field(default_factory=dict)  # known settings when Prometheus does not expose them


class HttpStep(StepBase):
    """Call an orchestrator or deployment API. Mutating. Not rerun-safe as a type: whether the API applies a call
    sent twice once (a PUT of the desired state, a POST with an idempotency key) only the playbook's author knows,
    so after a crash mid-call it is re-run only when the step says `idempotent: true`."""

    mutates: ClassVar[bool] = True
    rerun_safe: ClassVar[bool] = False
    type: Literal["http"]
    request: HttpRequest
    idempotent: bool = False
    template_context: ClassVar[dict[str, frozenset[str] | None]] = REQUEST_CONTEXT

    def safe_to_rerun(self) -> bool:
        return self.rerun_safe or self.idempotent

    def templates(self) -> Iterator[tuple[tuple, str]]:
        yield ("request", "url"), self.request.url
        for name, value in self.request.headers.items():
            yield ("request", "headers", name), value
        yield from _leaves(self.request.json_body, ("request", "json"))


class CanaryStep(HttpStep):
    """The change applied to a subset first: the request's templates see `percent`. Mutating and rerun-safe as an
    http step is (only when `idempotent`)."""

    type: Literal["canary"]  # type: ignore[assignment]
    percent: float = Field(default=10, gt=0, le=100)


class RolloutStep(HttpStep):
    """The change applied to all (or `percent` of) targets after the canary was verified. Mutating and rerun-safe as
    an http step is (only when `idempotent`)."""

    type: Literal["rollout"]  # type: ignore[assignment]
    percent: float = Field(default=100, gt=0, le=100)


class RollbackStep(HttpStep):
    """The inverse change; runs only when the workflow fails after a change started (verify failed, a call failed).

    Rerun-safe whatever `idempotent` says: restoring the previous configuration twice is harmless, leaving a
    half-applied change is not."""

    rerun_safe: ClassVar[bool] = True
    type: Literal["rollback"]  # type: ignore[assignment]


class Improvement(BaseModel):
    """Pass when the value moved by at least `percent` in `direction` against the pre-change baseline (the same
    query evaluated before the first change)."""

    model_config = ConfigDict(extra="forbid")
    percent: float = Field(gt=0, le=100)
    direction: Literal["decrease", "increase"] = "decrease"


class VerifyStep(StepBase):
    """A PromQL check after a delay. `query` is a template whose `{{ ... }}` outputs are escaped for use inside a
    PromQL double-quoted string, so a label value cannot change the query. The result is reduced over series with
    `reduce` (max by default: every series must pass a `below` check).

    Only reads; rerun-safe: a rerun waits the delay again and judges the fleet as it is then."""

    mutates: ClassVar[bool] = False
    rerun_safe: ClassVar[bool] = True
    type: Literal["verify"]
    query: str
    delay: Seconds = 120.0
    below: float | None = None
    above: float | None = None
    improvement: Improvement | None = None
    reduce: Literal["max", "min", "mean"] = "max"
    on_no_data: Literal["fail", "pass"] = "fail"

    @field_validator("query")
    @classmethod
    def _query(cls, query: str) -> str:
        return _check_template(query)

    def templates(self) -> Iterator[tuple[tuple, str]]:
        yield ("query",), self.query

    @model_validator(mode="after")
    def _one_condition(self) -> "VerifyStep":
        given = [c for c in (self.below, self.above, self.improvement) if c is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `below`, `above` or `improvement`")
        return self


def _variable_problem(reference: Reference, variables: dict | None) -> str | None:
    if variables is None or reference.name != "vars" or reference.key is None or reference.key in variables:
        return None
    return (f"`vars.{reference.key}` is not set in the serve config's `variables:` "
            f"(set: {', '.join(sorted(variables)) or 'none'})")


# The step types, in one place: the playbook union, the executor's handlers (checked by a test), the metrics'
# labels and the API's enum all derive from this tuple.
STEP_MODELS: tuple[type[StepBase], ...] = (RecommendStep, HttpStep, CanaryStep, RolloutStep, RollbackStep, VerifyStep)
Step = Annotated[Union[STEP_MODELS], Field(discriminator="type")]


def step_type(model: type[StepBase]) -> str:
    """The `type:` value that selects `model` in a playbook."""
    (name,) = get_args(model.model_fields["type"].annotation)
    return name


def step_types(mutating: bool | None = None) -> tuple[str, ...]:
    """The step types in STEP_MODELS' order: all of them, or those that do (True) or do not (False) mutate."""
    return tuple(step_type(model) for model in STEP_MODELS if mutating is None or model.mutates == mutating)


class Playbook(BaseModel):
    """One optimization playbook."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["Playbook"] = "Playbook"
    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]+$", max_length=200)
    description: str = ""
    match: Match
    server_kind: ServerKind = "vllm"
    category: Category | None = None
    risk: Risk = "medium"
    optimization_level: OptimizationLevel = "conservative"
    approval: Approval = Approval()
    dry_run: bool = False
    # No more than one run per series (the values of `series_labels`) per cooldown.
    cooldown: Seconds = 1800.0
    series_labels: list[str] = Field(default_factory=lambda: ["instance"])
    max_concurrent: int = Field(default=1, ge=1)
    # When the alert resolves while the workflow runs: `continue` (verify steps decide), or `abort_before_rollout`:
    # do not start a rollout step for a problem that went away; fail and roll the canary back instead.
    on_resolved: Literal["continue", "abort_before_rollout"] = "continue"
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _steps(self) -> "Playbook":
        names = [step.name for step in self.steps]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"step names must be unique; repeated: {duplicates}")
        if not self.match.matchers and not self.match.by_annotation:
            raise ValueError("`match` needs matchers or `by_annotation: true`, or the playbook can never run")
        return self

    @model_validator(mode="after")
    def _template_names(self, info: ValidationInfo) -> "Playbook":
        """Every name a template reads must be there when it renders; each one that will not is its own error, at
        the field that holds the template. Validated with the serve config's `variables` as context (`{"variables":
        {...}}`; none in a dry run, where unset ones are shown as such), `vars.NAME` must be one of them."""
        variables = (info.context or {}).get("variables")
        errors = [InitErrorDetails(type=PydanticCustomError("template_name", message), loc=where, input=source)
                  for where, source, message in self._template_problems(None if self.dry_run else variables)]
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    def _template_problems(self, variables: dict | None) -> Iterator[tuple[tuple, str, str]]:
        main = [step for step in self.steps if not isinstance(step, RollbackStep)]
        for index, step in enumerate(self.steps):
            if isinstance(step, RollbackStep):  # rollbacks run after the main steps, once one of them failed
                before = main + [s for s in self.steps[:index] if isinstance(s, RollbackStep)]
            else:
                before = [s for s in self.steps[:index] if not isinstance(s, RollbackStep)]
            context = {**CONTEXT, **step.template_context}
            for where, source in step.templates():
                for reference in references(source):
                    problem = (context_problem(reference, context) or self._output_problem(reference, before)
                               or _variable_problem(reference, variables))
                    if problem:
                        yield (("steps", index) + where, source,
                               f"playbook {self.name!r}, step {step.name!r}: {problem}")

    def _output_problem(self, reference: Reference, before: list[StepBase]) -> str | None:
        """Why an earlier step's output a template reads will not be there, or None."""
        ran = [step.name for step in before]
        if reference.name == "steps" and reference.key is not None and reference.key not in ran:
            said = ("names no step of this playbook" if reference.key not in {s.name for s in self.steps}
                    else "has not run when this step renders")
            return f"`steps.{reference.key}` {said} (steps run before it: {', '.join(ran) or 'none'})"
        if reference.name == "recommendation" and not any(isinstance(step, RecommendStep) for step in before):
            return "`recommendation` is a recommend step's output, and no recommend step runs before this one"
        return None

    def matches(self, labels: dict[str, str], annotations: dict[str, str]) -> bool:
        if self.match.by_annotation and annotations.get("playbook") == self.name:
            return True
        matchers = self.match.label_matchers
        return bool(matchers) and all(m.matches(labels) for m in matchers)

    def series_key(self, labels: dict[str, str]) -> str:
        return ",".join(f"{name}={labels.get(name, '')}" for name in self.series_labels)
