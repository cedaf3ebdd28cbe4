"""Analysis jobs: a backtest over the server's Prometheus, asked for over HTTP and run in the background.

    POST /api/v1/analysis  ->  plan() checks the request (names, selector, range, size)  ->  submit(): queued
    AnalysisPool threads claim queued jobs from the store  ->  running  ->  rules_engine.api.backtest  ->
    succeeded (the export contract's JSON, rules_engine.report.export) | failed (why)

Jobs are bounded three ways: size (the range's points per series times the queries, at submission; times the
series each query returns, measured before fetching), concurrency (`workers` threads per process; at most
`max_queued` jobs wait, beyond that a submission is refused) and time (a job still running at its deadline
fails; its source refuses further queries so the computation ends soon). The job lives in the store: a running
job's owner renews a lease, and a job whose owner stopped (restart, crash) is failed by whoever sees the lease
expired, so a restart never loses a job nor leaves it running forever.
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import and_, func, insert, or_, select, update

from rules_engine import api
from rules_engine.playbooks import limits
from rules_engine.playbooks import store as st
from rules_engine.evaluate.series import EvaluationError
from rules_engine.promql.selectors import matcher_text
from rules_engine.report.export import backtest_record
from rules_engine.report.html import PLOTLYJS_SLOT, render_html
from rules_engine.source.base import SourceError
from rules_engine.source.client import PrometheusClient
from rules_engine.source.prometheus import PrometheusSource
from rules_engine.spec.loader import RuleSet, SpecError, load_ruleset
from rules_engine.spec.models import format_duration, parse_duration
from rules_engine.spec.promql import parse_selector
from rules_engine.spec.timerange import parse_time
from rules_engine.spec.times import rfc3339
from rules_engine.urls import redacted_url

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
JOB_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED)
# The selector's keys and the label each one matches (vLLM and SGLang call the model `model_name`; TGI has none).
SELECTOR_LABELS = {"instance": "instance", "model": "model_name", "job": "job"}


class LabelSelector(BaseModel):
    """Which series to analyse: exact label values (each optional; all given must match)."""

    model_config = ConfigDict(extra="forbid")
    instance: str | None = Field(default=None, min_length=1, max_length=limits.LABEL_VALUE_MAX_BYTES,
                                 description="the `instance` label, e.g. vllm-3:8000")
    model: str | None = Field(default=None, min_length=1, max_length=limits.LABEL_VALUE_MAX_BYTES,
                              description="the `model_name` label (vLLM, SGLang; TGI series have none)")
    job: str | None = Field(default=None, min_length=1, max_length=limits.LABEL_VALUE_MAX_BYTES,
                            description="the `job` label")

    @field_validator("instance", "model", "job")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        if value is not None and (problem := limits.text_problem(value)):
            raise ValueError(problem)
        if value is not None and any(c in value for c in '"\\\n'):
            # The selector renderer (rules_engine.promql.selectors) writes matcher values unescaped.
            raise ValueError("a double quote, backslash or newline is not accepted in a label value here")
        return value

    def matchers(self) -> list[str]:
        # json.dumps escapes as PromQL's double-quoted strings want (Go escapes, \\uXXXX included).
        return [f"{SELECTOR_LABELS[key]}={json.dumps(value)}" for key, value in self.model_dump().items()
                if value is not None]


class AnalysisRequest(BaseModel):
    """A backtest to run: rules (by name from the server's rules, or inline), series, range and step."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"packs": ["vllm"], "slos": ["vllm_ttft_p99_timeslices"], "selector": {"model": "llama-3.1-8b-instruct"},
         "start": "now-7d", "end": "now", "step": "1m"}]})
    packs: list[str] | None = Field(default=None, description="RulePack names from the server's `rules:`; "
                                    "default: every pack when neither packs, slos nor inline_rules is given")
    slos: list[str] | None = Field(default=None, description="SLO names from the server's `rules:`")
    rules: list[str] | None = Field(default=None, description="only these rules or SLOs of the chosen ones")
    inline_rules: str | None = Field(default=None, description="YAML documents (kind: RulePack or SLO), "
                                     "evaluated beside the named ones")
    selector: LabelSelector = Field(default_factory=LabelSelector)
    start: str | float = Field(description="RFC 3339, unix seconds, or now-<duration>")
    end: str | float = Field(default="now", description="RFC 3339, unix seconds, or now[-<duration>]")
    step: str | float = Field(default="30s", description="evaluation interval: a Prometheus duration or seconds")
    timeout: float | None = Field(default=None, gt=0, description="seconds; at most the server's analysis.timeout")


@dataclass(frozen=True)
class AnalysisLimits:
    workers: int = 2  # jobs run at once by one process
    max_queued: int = 8  # jobs waiting (all processes); beyond that a submission is refused (429)
    timeout: float = 300.0  # seconds a job may run
    max_points: int = 50_000_000  # samples a job may fetch: points per series x series x queries
    lease_seconds: float = 30.0  # a running job whose owner has not renewed within this is failed
    max_inline_bytes: int = 256 * 1024
    query_timeout: float = 60.0  # seconds per Prometheus request of a job
    concurrency: int = 2  # range queries of one job in flight


class RequestProblem(ValueError):
    """A request the API cannot run; `location` names the field (body.step, body.inline_rules, ...)."""

    def __init__(self, location: str, message: str):
        self.location, self.message = location, message
        super().__init__(f"{location}: {message}")


@dataclass
class Plan:
    """What a checked request will run: the rule set with the selector in every query, the range, the estimate."""

    ruleset: RuleSet
    names: list[str] | None
    start: pd.Timestamp
    end: pd.Timestamp
    step: pd.Timedelta
    queries: list[str]
    points_per_series: int
    timeout: float

    def estimate(self, series: dict[str, int] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"queries": len(self.queries), "points_per_series": self.points_per_series,
                                "points_at_one_series_each": len(self.queries) * self.points_per_series}
        if series is not None:
            body["series"] = sum(series.values())
            body["points"] = sum(count * self.points_per_series for count in series.values())
        return body


def plan(request: AnalysisRequest, configured: Callable[[], RuleSet], settings: AnalysisLimits,
         now: pd.Timestamp | None = None) -> Plan:
    """Check a request against the server's rules and limits; raises RequestProblem naming the field."""
    start = _time(request.start, "body.start", now)
    end = _time(request.end, "body.end", now)
    try:
        step = parse_duration(request.step)
    except (ValueError, TypeError) as error:
        raise RequestProblem("body.step", str(error)) from None
    if step < pd.Timedelta(seconds=1):
        raise RequestProblem("body.step", f"must be at least 1s, got {request.step!r}")
    start, end = start.floor(step), end.floor(step)
    if end <= start:
        raise RequestProblem("body.end", f"must be at least one step ({format_duration(step)}) after start "
                                         f"({rfc3339(start)}), got {rfc3339(end)}")
    timeout = settings.timeout if request.timeout is None else request.timeout
    if timeout > settings.timeout:
        raise RequestProblem("body.timeout", f"at most {settings.timeout:g}s on this server, got {timeout:g}")
    ruleset = choose_rules(request, configured, settings)
    matchers = request.selector.matchers()
    if matchers:
        ruleset = with_selector(ruleset, matchers)
    try:
        queries, earliest = api.recording_plan(ruleset, start, end, step, request.rules)
    except (EvaluationError, ValueError) as error:  # unknown rule names, an SLO without a catalog
        raise RequestProblem("body.rules", str(error)) from None
    points = int((end - earliest) / step) + 1
    found = Plan(ruleset, request.rules, start, end, step, queries, points, timeout)
    least = found.estimate()["points_at_one_series_each"]
    if least > settings.max_points:
        raise RequestProblem("body.step", f"{len(queries)} queries x {points:,} points per series (the range, "
                                          f"with the history its rules and SLOs need, at this step) is {least:,} "
                                          f"points even at one series each; this server's limit is "
                                          f"{settings.max_points:,}: shorten the range or raise the step")
    return found


def _time(value: str | float, where: str, now: pd.Timestamp | None) -> pd.Timestamp:
    try:
        found = parse_time(value, now)
        if pd.isna(found):  # "nan" parses as unix seconds into NaT
            raise ValueError(f"not a time: {value!r}")
        return found
    except (ValueError, TypeError, OverflowError) as error:
        raise RequestProblem(where, f"{error} (RFC 3339, unix seconds or now-<duration>)") from None


def choose_rules(request: AnalysisRequest, configured: Callable[[], RuleSet], settings: AnalysisLimits) -> RuleSet:
    """The packs and SLOs the request names (all configured ones when it names none), plus its inline rules."""
    named = request.packs is not None or request.slos is not None
    ruleset = RuleSet()
    if named or request.inline_rules is None:
        try:
            available = configured()
        except SpecError as error:
            raise RequestProblem("body.packs", "the server's rules do not load: " + "; ".join(
                str(p) for p in error.problems[:5])) from None
        packs = {pack.name: pack for pack in available.packs}
        slos = {slo.name: slo for slo in available.slos}
        for location, wanted, known in (("body.packs", request.packs, packs), ("body.slos", request.slos, slos)):
            unknown = sorted(set(wanted or ()) - set(known))
            if unknown:
                raise RequestProblem(location, f"no {'pack' if location == 'body.packs' else 'SLO'} named "
                                               f"{unknown} on this server; have: {sorted(known)}")
        ruleset.packs = [packs[n] for n in (request.packs or [])] if named else list(available.packs)
        ruleset.slos = [slos[n] for n in (request.slos or [])] if named else list(available.slos)
    if request.inline_rules is not None:
        inline = load_inline(request.inline_rules, settings.max_inline_bytes)
        clash = sorted({p.name for p in ruleset.packs} & {p.name for p in inline.packs}
                       | {s.name for s in ruleset.slos} & {s.name for s in inline.slos})
        if clash:
            raise RequestProblem("body.inline_rules", f"{clash} also named among the server's rules; rename them")
        ruleset.packs += inline.packs
        ruleset.slos += inline.slos
    if not ruleset.packs and not ruleset.slos:
        raise RequestProblem("body", "nothing to evaluate: name packs or slos, or give inline_rules")
    return ruleset


def load_inline(text: str, max_bytes: int) -> RuleSet:
    """Rule packs and SLOs from YAML text, through the spec loader (its bounded YAML, its file:line problems, told
    as `body.inline_rules: line N: field: message`). Playbooks are not accepted inline, nor SLO window-catalog
    paths: a request never makes the server read one of its files."""
    if len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise RequestProblem("body.inline_rules", f"larger than {max_bytes} bytes")
    if problem := limits.text_problem(text):
        raise RequestProblem("body.inline_rules", problem)
    with tempfile.TemporaryDirectory(prefix="inline-rules-") as folder:
        path = Path(folder) / "inline.yaml"
        path.write_text(text)
        try:
            ruleset = load_ruleset([path])
        except SpecError as error:
            problems = [": ".join(part for part in (f"line {p.line}" if p.line else "", p.field, p.message) if part)
                        for p in error.problems]
            raise RequestProblem("body.inline_rules", "; ".join(problems[:10])) from None
    if ruleset.playbooks:
        raise RequestProblem("body.inline_rules", "kind: Playbook is not accepted here; playbooks come from the "
                                                  "server's configuration")
    for slo in ruleset.slos:
        if slo.alerting.windows is not None:
            raise RequestProblem("body.inline_rules", f"SLO {slo.name}: alerting.windows names a file; inline SLOs "
                                                      "use the shipped burn-window catalogs (leave it out)")
    return ruleset


def with_selector(ruleset: RuleSet, matchers: list[str]) -> RuleSet:
    """The rule set with `matchers` added to every pack's and SLO's selector (so to every query they send)."""
    def combined(selector: str) -> str:
        own = [matcher_text(m) for m in parse_selector(selector)] if selector.strip() else []
        return "{" + ", ".join(own + matchers) + "}"

    return RuleSet(packs=[p.model_copy(update={"selector": combined(p.selector)}) for p in ruleset.packs],
                   slos=[s.model_copy(update={"selector": combined(s.selector)}) for s in ruleset.slos],
                   files=dict(ruleset.files), rule_lines=dict(ruleset.rule_lines),
                   rule_item_lines=dict(ruleset.rule_item_lines))


# --- the store ----------------------------------------------------------------------------------------------------
class QueueFull(RuntimeError):
    """`max_queued` jobs are already waiting."""


def submit(store: st.Store, request: AnalysisRequest, found: Plan, requested_by: str, max_queued: int) -> dict:
    """Queue a planned job; raises QueueFull when `max_queued` jobs already wait. Returns its record."""
    job_id = uuid.uuid4().hex[:16]
    now = time.time()
    with store.write() as conn:
        waiting = conn.execute(select(func.count()).select_from(st.analysis_jobs)
                               .where(st.analysis_jobs.c.state == QUEUED)).scalar_one()
        if waiting >= max_queued:
            raise QueueFull(f"{waiting} analysis jobs are already waiting (limit {max_queued}); retry later")
        # The range as resolved now: `now-7d` means the week before the submission, whenever the job runs.
        fixed = request.model_copy(update={"start": rfc3339(found.start), "end": rfc3339(found.end)})
        conn.execute(insert(st.analysis_jobs).values(
            id=job_id, state=QUEUED, request=fixed.model_dump_json(), requested_by=requested_by, created_at=now,
            estimate=st.dumps(found.estimate())))
        st.record_audit(conn, requested_by, "analysis_submitted", None, job=job_id, estimate=found.estimate())
        return job_record(conn, job_id)


def job_record(conn, job_id: str, with_result: bool = True) -> dict | None:
    row = conn.execute(select(st.analysis_jobs).where(st.analysis_jobs.c.id == job_id)).first()
    if row is None:
        return None
    body = {"id": row.id, "state": row.state, "request": st.loads(row.request), "requested_by": row.requested_by,
            "created_at": rfc3339(row.created_at, "us"), "started_at": rfc3339(row.started_at, "us"),
            "finished_at": rfc3339(row.finished_at, "us"), "estimate": st.loads(row.estimate), "error": row.error,
            "result": None}
    if with_result and row.result:
        body["result"] = json.loads(row.result)
    return body


def job_report(conn, job_id: str) -> tuple[str, str | None] | None:
    """(state, HTML report rendered with PLOTLYJS_SLOT or None) of a job, None when there is no such job."""
    row = conn.execute(select(st.analysis_jobs.c.state, st.analysis_jobs.c.report)
                       .where(st.analysis_jobs.c.id == job_id)).first()
    return None if row is None else (row.state, row.report)


def list_jobs(conn, limit: int = 100) -> list[dict]:
    ids = conn.execute(select(st.analysis_jobs.c.id).order_by(st.analysis_jobs.c.created_at.desc())
                       .limit(limit)).scalars().all()
    return [job_record(conn, job_id, with_result=False) for job_id in ids]


def fail_abandoned(store: st.Store, now: float | None = None) -> list[str]:
    """Fail running jobs whose owner stopped renewing their lease (a restart, a crash) or whose deadline passed
    while their owner could not end them: such a job can never finish, and must not look as if it might."""
    now = time.time() if now is None else now
    stale = and_(st.analysis_jobs.c.state == RUNNING,
                 or_(st.analysis_jobs.c.lease_until < now, st.analysis_jobs.c.deadline < now))
    with store.read() as conn:
        if conn.execute(select(st.analysis_jobs.c.id).where(stale).limit(1)).first() is None:
            return []
    failed = []
    with store.write() as conn:
        for row in conn.execute(select(st.analysis_jobs.c.id, st.analysis_jobs.c.owner, st.analysis_jobs.c.deadline,
                                       st.analysis_jobs.c.lease_until).where(stale)).all():
            why = (f"timed out: still running at its deadline ({rfc3339(row.deadline)})"
                   if row.deadline is not None and row.deadline < now and (row.lease_until or 0) >= now else
                   f"its process ({row.owner}) stopped while it ran (restart or crash); submit it again")
            if _finish(conn, row.id, None, FAILED, why, now):
                failed.append(row.id)
    return failed


def release_owned(store: st.Store, owner: str, why: str) -> None:
    """At shutdown: this process's running jobs fail now, instead of when their lease expires."""
    with store.write() as conn:
        for job_id in conn.execute(select(st.analysis_jobs.c.id).where(
                st.analysis_jobs.c.state == RUNNING, st.analysis_jobs.c.owner == owner)).scalars().all():
            _finish(conn, job_id, owner, FAILED, why, time.time())


def _finish(conn, job_id: str, owner: str | None, state: str, error: str | None, now: float,
            result: str | None = None, report: str | None = None) -> bool:
    """running -> `state`, only if still running (and still ours when `owner` is given)."""
    where = [st.analysis_jobs.c.id == job_id, st.analysis_jobs.c.state == RUNNING]
    if owner is not None:
        where.append(st.analysis_jobs.c.owner == owner)
    changed = conn.execute(update(st.analysis_jobs).where(*where).values(
        state=state, finished_at=now, error=error, result=result, report=report, lease_until=None)).rowcount == 1
    if changed:
        st.record_audit(conn, f"analysis:{owner or 'engine'}", f"analysis_{state}", None, job=job_id, error=error)
    return changed


def claim_next(store: st.Store, owner: str, settings: AnalysisLimits) -> tuple[str, AnalysisRequest] | None:
    """Take the oldest queued job: running, owned by `owner`, with its lease and deadline."""
    with store.read() as conn:
        if conn.execute(select(st.analysis_jobs.c.id).where(st.analysis_jobs.c.state == QUEUED).limit(1)).first() \
                is None:
            return None
    with store.write() as conn:
        rows = conn.execute(select(st.analysis_jobs.c.id, st.analysis_jobs.c.request).where(
            st.analysis_jobs.c.state == QUEUED).order_by(st.analysis_jobs.c.created_at).limit(5)).all()
        for row in rows:
            now = time.time()
            try:
                request = AnalysisRequest.model_validate_json(row.request)
            except ValueError as error:  # stored by another version of the engine: it must not block the queue
                conn.execute(update(st.analysis_jobs).where(st.analysis_jobs.c.id == row.id).values(
                    state=FAILED, finished_at=now, error=f"the stored request no longer validates: {error}"))
                continue
            timeout = min(request.timeout or settings.timeout, settings.timeout)
            took = conn.execute(update(st.analysis_jobs).where(
                st.analysis_jobs.c.id == row.id, st.analysis_jobs.c.state == QUEUED).values(
                state=RUNNING, owner=owner, started_at=now, deadline=now + timeout,
                lease_until=now + settings.lease_seconds)).rowcount
            if took == 1:
                return row.id, request
    return None


# --- running --------------------------------------------------------------------------------------------------------
class JobTimedOut(SourceError):
    pass


class DeadlineSource:
    """A source that refuses queries once the job's deadline has passed, so a timed-out backtest ends soon."""

    def __init__(self, source: PrometheusSource, deadline: float):
        self.source, self.deadline = source, deadline
        self.url = source.url

    def _check(self) -> None:
        if time.monotonic() > self.deadline:
            raise JobTimedOut("the analysis job's time limit was reached; query not sent")

    def query_range(self, query: str, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta):
        self._check()
        return self.source.query_range(query, start, end, step)

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        self._check()
        return self.source.label_values(label, match)

    def series_exists(self, match: str, start: datetime | None = None, end: datetime | None = None) -> bool:
        self._check()
        return self.source.series_exists(match, start, end)


def count_series(client: PrometheusClient, found: Plan, deadline: float = math.inf) -> dict[str, int]:
    """The most series each query returned at any of ~10 instants over the range: what fetching it will bring."""
    span = max(int((found.end - found.start).total_seconds()), 1)
    resolution = max(span // 10, int(found.step.total_seconds()), 1)
    counts = {}
    for query in found.queries:
        if time.monotonic() > deadline:
            raise JobTimedOut(f"timed out after {found.timeout:g}s while measuring the series")
        answer = client.instant_query(f"max_over_time(count({query})[{span}s:{resolution}s])",
                                      found.end.timestamp())
        counts[query] = int(answer[0][1]) if answer and math.isfinite(answer[0][1]) else 0
    return counts


def run_job(found: Plan, client: PrometheusClient, settings: AnalysisLimits, job_id: str) -> tuple[dict, str]:
    """Measure, check the size, backtest; the export record and the HTML report (without plotly.js).
    Raises SourceError/ValueError with the reason."""
    deadline = time.monotonic() + found.timeout
    series = count_series(client, found, deadline)
    estimate = found.estimate(series)
    if estimate["points"] > settings.max_points:
        raise ValueError(f"too large: {estimate['series']:,} series x {found.points_per_series:,} points over "
                         f"{len(found.queries)} queries is {estimate['points']:,} points; this server's limit is "
                         f"{settings.max_points:,}: narrow the selector or range, or raise the step")
    source = DeadlineSource(PrometheusSource(client), deadline)
    backtest = api.backtest(found.ruleset, source, found.start, found.end, found.step, rules=found.names,
                            concurrency=settings.concurrency, keep_signals=True)
    if time.monotonic() > deadline:
        raise JobTimedOut(f"timed out after {found.timeout:g}s")
    described = f"prometheus {redacted_url(client.url)}"
    record = backtest_record(backtest, described, {"analysis": {"id": job_id, "estimate": estimate}})
    return record, render_html(backtest, described, title=f"rules-engine analysis {job_id}", plotlyjs=PLOTLYJS_SLOT)


@dataclass
class AnalysisPool:
    """`settings.workers` threads that claim queued jobs from the store and run them; housekeeping fails the jobs of
    processes that stopped."""

    store: st.Store
    configured: Callable[[], RuleSet]
    client_factory: Callable[[float], PrometheusClient | None]  # timeout -> a client for the server's Prometheus
    settings: AnalysisLimits = field(default_factory=AnalysisLimits)
    owner: str = field(default_factory=lambda: f"analysis-{uuid.uuid4().hex[:8]}")
    poll_interval: float = 0.5
    wake: threading.Event = field(default_factory=threading.Event)
    stop_event: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> "AnalysisPool":
        self.threads = [threading.Thread(target=self._loop, name=f"analysis-{i}", daemon=True)
                        for i in range(self.settings.workers)]
        for thread in self.threads:
            thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self.wake.set()
        for thread in self.threads:
            thread.join(timeout)
        try:
            release_owned(self.store, self.owner, "the server stopped while the job ran; submit it again")
        except Exception:  # the store may be gone at shutdown; the lease then expires and the job fails later
            log.exception("analysis: failing this process's running jobs at shutdown")

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                fail_abandoned(self.store)
                claimed = claim_next(self.store, self.owner, self.settings)
                if claimed is not None:
                    self.run(*claimed)
                    continue
            except Exception:  # the store may be briefly unavailable; keep going
                log.exception("analysis loop")
                self.stop_event.wait(1.0)
            self.wake.wait(self.poll_interval)
            self.wake.clear()

    def run(self, job_id: str, request: AnalysisRequest) -> str:
        """Run one claimed job to succeeded or failed (never left running); returns the state."""
        renewing = threading.Event()
        heartbeat = threading.Thread(target=self._renew, args=(job_id, renewing), daemon=True)
        heartbeat.start()
        client = None
        try:
            found = plan(request, self.configured, self.settings)  # the rules may have changed since submission
            client = self.client_factory(self.settings.query_timeout)
            if client is None:
                raise SourceError("no Prometheus configured (the serve config's `prometheus:`)")
            record, report = run_job(found, client, self.settings, job_id)
            result, state, error = json.dumps(record, allow_nan=False), SUCCEEDED, None
        except (RequestProblem, SourceError, ValueError) as problem:
            result, report, state, error = None, None, FAILED, str(problem)
        except Exception as problem:  # a bug must still end the job in a defined state
            log.exception("analysis job %s", job_id)
            result, report, state, error = None, None, FAILED, f"internal error: {type(problem).__name__}: {problem}"
        finally:
            renewing.set()
            heartbeat.join(5)
            if client is not None:
                client.close()
        with self.store.write() as conn:
            if not _finish(conn, job_id, self.owner, state, error, time.time(), result, report):
                return FAILED  # failed meanwhile (deadline passed, lease lost): that verdict stands
        return state

    def _renew(self, job_id: str, done: threading.Event) -> None:
        while not done.wait(self.settings.lease_seconds / 3):
            try:
                with self.store.write() as conn:
                    conn.execute(update(st.analysis_jobs).where(
                        st.analysis_jobs.c.id == job_id, st.analysis_jobs.c.owner == self.owner,
                        st.analysis_jobs.c.state == RUNNING).values(
                        lease_until=time.time() + self.settings.lease_seconds))
            except Exception:  # the store is briefly unavailable: the next beat tries again
                log.exception("analysis job %s: renewing its lease", job_id)
