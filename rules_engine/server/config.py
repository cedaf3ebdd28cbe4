"""Configuration of `rules-engine serve` (a YAML file, overridden by command-line flags) and its credentials.

Secrets are read from files or environment variables, never written in the config itself, and only their SHA-256
digests are kept in memory: a request's credential is hashed and compared with `hmac.compare_digest`, which takes
the same time whatever the input (and the digest length is fixed, so length leaks nothing either).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rules_engine.playbooks.targets import base_url_problem
from rules_engine.source.base import SourceError
from rules_engine.source.client import PrometheusClient, PrometheusSettings
from rules_engine.spec.loader import Problem, SpecError, _validation_problems, read_mapping
from rules_engine.spec.playbook import OPTIMIZATION_LEVELS, OptimizationLevel


class SecretSource(BaseModel):
    """Where a secret comes from: a file (trailing newline stripped), an environment variable, or for operator
    tokens a SHA-256 hex digest of the token (so the config file never holds the token)."""

    model_config = ConfigDict(extra="forbid")
    file: str | None = None
    env: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")

    @model_validator(mode="after")
    def _one(self) -> "SecretSource":
        if sum(x is not None for x in (self.file, self.env, self.sha256)) != 1:
            raise ValueError("give exactly one of `file`, `env` or `sha256`")
        return self

    def digest(self, what: str) -> bytes:
        if self.sha256:
            return bytes.fromhex(self.sha256)
        if self.file:
            try:
                secret = Path(self.file).read_text().rstrip("\r\n")
            except OSError as error:
                raise ConfigError(f"{what}: cannot read secret file {self.file}: {error.strerror}") from None
        else:
            secret = os.environ.get(self.env or "", "")
            if not secret:
                raise ConfigError(f"{what}: environment variable {self.env} is empty or unset")
        if not secret:
            raise ConfigError(f"{what}: secret file {self.file} is empty")
        return hashlib.sha256(secret.encode()).digest()


class AlertmanagerAuth(BaseModel):
    """How Alertmanager authenticates: `authorization: {credentials_file}` (bearer) or `basic_auth`."""

    model_config = ConfigDict(extra="forbid")
    bearer_token: SecretSource | None = None
    basic_username: str | None = None
    basic_password: SecretSource | None = None

    @model_validator(mode="after")
    def _one(self) -> "AlertmanagerAuth":
        basic = self.basic_username is not None or self.basic_password is not None
        if (self.bearer_token is not None) == basic:
            raise ValueError("configure either `bearer_token` or `basic_username` + `basic_password`")
        if basic and (self.basic_username is None or self.basic_password is None):
            raise ValueError("basic auth needs both `basic_username` and `basic_password`")
        return self


class ServerPrometheus(PrometheusSettings):
    """`prometheus:`: where verify steps, baselines and current settings query (the settings of `evaluate`'s
    Prometheus options: url, bearer_token_file, basic_auth, ca_file, insecure_skip_verify, headers such as
    X-Scope-OrgID for a Mimir tenant, timeout, retries, backoff)."""

    # A verify step holds an executor thread while it waits: give up sooner than a backtest's 60 s.
    timeout: float | None = 10.0

    @model_validator(mode="after")
    def _secrets_in_files(self) -> "ServerPrometheus":
        if self.bearer_token is not None:
            raise ValueError("bearer_token: secrets are not written in the config; use bearer_token_file")
        if self.basic_auth is not None and self.basic_auth.password is not None:
            raise ValueError("basic_auth.password: secrets are not written in the config; use password_file")
        return self


class Operator(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    token: SecretSource
    roles: list[str] = Field(default_factory=lambda: ["viewer"])


DEFAULT_ROLES: dict[str, list[str]] = {
    "viewer": [],
    "operator": ["conservative"],
    "senior": ["conservative", "moderate"],
    "admin": list(OPTIMIZATION_LEVELS),
}


class AnalysisSettings(BaseModel):
    """`analysis:`: how analysis jobs (POST /api/v1/analysis) are bounded. See rules_engine.playbooks.analysis."""

    model_config = ConfigDict(extra="forbid")
    workers: int = Field(default=2, ge=1, le=32)  # jobs run at once per server process
    max_queued: int = Field(default=8, ge=1)  # jobs waiting across processes; beyond it a submission gets 429
    timeout: float = Field(default=300.0, gt=0)  # seconds a job may run before it fails
    max_points: int = Field(default=50_000_000, ge=1)  # samples a job may fetch (points x series x queries)
    lease_seconds: float = Field(default=30.0, gt=0)  # a running job not renewed within this has lost its process
    max_inline_bytes: int = Field(default=256 * 1024, ge=1)
    query_timeout: float = Field(default=60.0, gt=0)  # per Prometheus request of a job
    concurrency: int = Field(default=2, ge=1)  # range queries of one job in flight


class NotifySettings(BaseModel):
    """`notify:`: how outbound notifications (`notify_urls`) are retried. See rules_engine.playbooks.notify."""

    model_config = ConfigDict(extra="forbid")
    attempts: int = Field(default=6, ge=1, le=100)  # per URL, the first included
    backoff: float = Field(default=1.0, gt=0)  # seconds before the second attempt; doubled each time
    max_backoff: float = Field(default=60.0, gt=0)
    deadline: float = Field(default=900.0, gt=0)  # seconds after which a delivery is given up, attempts left or not
    timeout: float = Field(default=5.0, gt=0)  # one attempt: connect, send and the whole answer


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    listen: str = "127.0.0.1:8080"
    database_url: str = "sqlite:///rules-engine.db"
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    playbooks: list[str] = Field(default_factory=lambda: ["rules"])
    prometheus: ServerPrometheus | None = None  # shorthand: prometheus_url (+ prometheus_timeout)
    dry_run: bool = False
    variables: dict = Field(default_factory=dict)
    # Base URLs playbook http steps may call (the orchestrator); empty: the http(s) URLs among `variables`.
    targets: list[str] = Field(default_factory=list)
    alertmanager_auth: AlertmanagerAuth | None = None
    operators: list[Operator] = Field(default_factory=list)
    # role -> the optimization levels it may approve or reject
    roles: dict[str, list[OptimizationLevel]] = Field(default_factory=lambda: dict(DEFAULT_ROLES))
    notify_urls: list[str] = Field(default_factory=list)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    # Rule packs and SLOs analysis jobs may name (files or folders, like `evaluate --rules`).
    rules: list[str] = Field(default_factory=lambda: ["rules"])
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    process: bool = True  # run intake and executors in the server processes (False: receive and persist only)
    lease_seconds: float = Field(default=60.0, gt=0)
    # A workflow whose owners keep stopping (crashing) while it runs is resumed at most this many times in a row
    # without progress, then failed (and rolled back): a step that kills the engine must not do it forever.
    max_resumes: int = Field(default=5, ge=0)
    poll_interval: float = Field(default=0.5, gt=0)
    executor_threads: int = Field(default=2, ge=1)
    # WSGI worker processes and threads per worker. With SQLite one process with many threads acknowledges
    # faster (one writer: concurrent deliveries share a commit; bench/bench_webhook.py measures both shapes against
    # a bare Flask endpoint); with PostgreSQL more processes help.
    workers: int = Field(default=1, ge=1)
    threads: int = Field(default=16, ge=1)
    max_payload_bytes: int = 16 * 1024 * 1024
    # Seconds a write waits for a lock another writer holds before it fails: the webhook then answers 503.
    store_lock_timeout: float = Field(default=30.0, gt=0)
    # /api/v1/ready fails once the oldest unprocessed event waits longer than this: the intake is stuck.
    intake_stall_seconds: float = Field(default=300.0, gt=0)
    access_log: bool = False

    @model_validator(mode="before")
    @classmethod
    def _prometheus_shorthand(cls, raw: object) -> object:
        """`prometheus_url: URL` (and `prometheus_timeout`), the older form, is `prometheus: {url, timeout}`."""
        if not isinstance(raw, dict) or not {"prometheus_url", "prometheus_timeout"} & set(raw):
            return raw
        raw = dict(raw)
        url, timeout = raw.pop("prometheus_url", None), raw.pop("prometheus_timeout", None)
        if raw.get("prometheus") is not None:
            raise ValueError("give `prometheus` or its shorthand `prometheus_url` / `prometheus_timeout`, not both")
        if url is None and timeout is not None:
            raise ValueError("prometheus_timeout: there is no prometheus_url to query")
        if url is not None:
            raw["prometheus"] = {"url": url, **({"timeout": timeout} if timeout is not None else {})}
        return raw

    @field_validator("targets")
    @classmethod
    def _targets(cls, targets: list[str]) -> list[str]:
        problems = [problem for problem in map(base_url_problem, targets) if problem]
        if problems:
            raise ValueError("; ".join(problems))
        return targets

    @model_validator(mode="after")
    def _roles(self) -> "ServerConfig":
        for operator in self.operators:
            unknown = [r for r in operator.roles if r not in self.roles]
            if unknown:
                raise ValueError(f"operator {operator.name!r} has unknown role(s) {unknown}; known: {sorted(self.roles)}")
        names = [o.name for o in self.operators]
        if len(set(names)) != len(names):
            raise ValueError("operator names must be unique")
        return self


class ConfigError(ValueError):
    pass


def load_config(path: str | os.PathLike | None, **overrides) -> ServerConfig:
    """The config file with command-line overrides (None: not given). A `prometheus_url` override replaces only
    the URL of the file's `prometheus:` section: its credentials, CA and tenant still apply. The file is read like
    rule files are (bounded YAML, duplicate keys refused); each problem names file:line and field, or the command
    line for a setting given there."""
    raw: dict = {}
    lines: dict[tuple, int] = {}
    if path:
        try:
            raw, lines = read_mapping(path)
        except SpecError as error:
            raise ConfigError(str(error)) from None
    prometheus_url = overrides.pop("prometheus_url", None)
    given = {k: v for k, v in overrides.items() if v is not None}
    raw = {**raw, **given}
    if prometheus_url is not None and isinstance(raw.get("prometheus"), dict):
        raw["prometheus"] = {**raw["prometheus"], "url": prometheus_url}
    elif prometheus_url is not None:
        raw["prometheus_url"] = prometheus_url
    try:
        return ServerConfig.model_validate(raw)
    except ValidationError as error:
        # A setting the command line gave has no line in the file, whatever the file said.
        located = {**{where: line for where, line in lines.items() if not where or where[0] not in given},
                   **{(key,): None for key in given}}
        problems = [Problem("command line", None, p.field, p.message) if _top_key(p.field) in given else p
                    for p in _validation_problems(error, located, str(path or "config"))]
        raise ConfigError("\n".join(str(p) for p in problems)) from None


def _top_key(field: str) -> str:
    return field.split(".", 1)[0].split("[", 1)[0]


def prometheus_client(config: ServerConfig) -> PrometheusClient | None:
    """The client of the `prometheus:` section (secret files read now), or None without one."""
    if config.prometheus is None:
        return None
    try:
        return PrometheusClient.from_config(config.prometheus)
    except SourceError as error:
        raise ConfigError(f"prometheus: {error}") from None


@dataclass(frozen=True)
class Principal:
    name: str
    roles: tuple[str, ...]
    levels: frozenset[str]


@dataclass
class Credentials:
    """Digests of the configured secrets; checks requests' Authorization headers in constant time."""

    alertmanager_bearer: bytes | None = None
    alertmanager_basic: tuple[bytes, bytes] | None = None  # (username digest, password digest)
    operators: list[tuple[bytes, Principal]] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: ServerConfig) -> "Credentials":
        creds = cls()
        auth = config.alertmanager_auth
        if auth is not None and auth.bearer_token is not None:
            creds.alertmanager_bearer = auth.bearer_token.digest("alertmanager_auth.bearer_token")
        elif auth is not None:
            creds.alertmanager_basic = (hashlib.sha256(auth.basic_username.encode()).digest(),
                                        auth.basic_password.digest("alertmanager_auth.basic_password"))
        for operator in config.operators:
            levels = frozenset(level for role in operator.roles for level in config.roles[role])
            creds.operators.append((operator.token.digest(f"operators.{operator.name}.token"),
                                    Principal(operator.name, tuple(operator.roles), levels)))
        return creds

    def alertmanager_ok(self, header: str | None) -> bool:
        scheme, _, value = (header or "").partition(" ")
        scheme = scheme.lower()
        if self.alertmanager_bearer is not None:
            return scheme == "bearer" and _same(value.strip(), self.alertmanager_bearer)
        if self.alertmanager_basic is not None and scheme == "basic":
            try:
                user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            # Both compared, always, so timing does not tell which one was wrong.
            user_ok = _same(user, self.alertmanager_basic[0])
            password_ok = _same(password, self.alertmanager_basic[1])
            return user_ok and password_ok
        return False

    def operator(self, header: str | None) -> Principal | None:
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        found = None
        for digest, principal in self.operators:  # no early exit: time does not depend on which one matched
            if _same(value.strip(), digest):
                found = principal
        return found


def _same(presented: str, digest: bytes) -> bool:
    return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), digest)
