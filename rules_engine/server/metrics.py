"""The engine's own metrics, on a registry per application (no process-global state).

Counters and histograms count what this process did; workflow counts by state and the unprocessed-event
backlog are read from the store at scrape time, so they are right whichever process did the work.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from rules_engine.playbooks import store as st
from rules_engine.playbooks import workflow as wf
from rules_engine.playbooks.analysis import JOB_STATES
from rules_engine.spec.playbook import step_types


DELIVERY_OUTCOMES = ("accepted", "unauthorized", "invalid", "unavailable")


class _StoreCollector:
    def __init__(self, store: st.Store):
        self.store = store

    def collect(self):
        states = GaugeMetricFamily("rules_engine_workflows", "Workflows in the store by state.", labels=["state"])
        backlog = GaugeMetricFamily("rules_engine_events_unprocessed",
                                    "Webhook events persisted but not yet processed.")
        jobs = GaugeMetricFamily("rules_engine_analysis_jobs", "Analysis jobs in the store by state.",
                                 labels=["state"])
        try:
            with self.store.read() as conn:
                counts = st.workflow_state_counts(conn)
                pending = st.unprocessed_event_count(conn)
                job_counts = dict(conn.execute(select(st.analysis_jobs.c.state, func.count())
                                               .group_by(st.analysis_jobs.c.state)).all())
        except Exception:  # a scrape must not fail because the store is briefly unavailable
            return
        for state in wf.STATES:
            states.add_metric([state], counts.get(state, 0))
        backlog.add_metric([], pending)
        for state in JOB_STATES:
            jobs.add_metric([state], job_counts.get(state, 0))
        yield states
        yield backlog
        yield jobs


@dataclass
class EngineMetrics:
    registry: CollectorRegistry
    webhook_requests: Counter
    webhook_alerts: Counter
    webhook_ack_seconds: Histogram
    step_seconds: Histogram
    action_failures: Counter
    mutating_step_types: tuple[str, ...]  # the `type` values of action_failures: steps that change the fleet
    # The labelled children the webhook updates on every delivery, looked up once (labels() validates and locks).
    _deliveries: dict = field(default_factory=dict)
    _alerts: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Exported at 0 from the start, so rate() and alerts see the first of each.
        self._deliveries = {outcome: self.webhook_requests.labels(outcome) for outcome in DELIVERY_OUTCOMES}
        self._alerts = {status: self.webhook_alerts.labels(status) for status in ("firing", "resolved")}

    def count_delivery(self, outcome: str, firing: int = 0, resolved: int = 0, seconds: float | None = None) -> None:
        """One webhook delivery: its outcome, its alerts by status, and (accepted) the time to acknowledge it."""
        self._deliveries[outcome].inc()
        if firing:
            self._alerts["firing"].inc(firing)
        if resolved:
            self._alerts["resolved"].inc(resolved)
        if seconds is not None:
            self.webhook_ack_seconds.observe(seconds)

    def observe_step(self, step_type: str, outcome: str, seconds: float) -> None:
        self.step_seconds.labels(step_type, outcome).observe(seconds)
        if outcome != "success" and step_type in self.mutating_step_types:
            self.action_failures.labels(step_type).inc()


def engine_metrics(store: st.Store) -> EngineMetrics:
    """Metrics for one application. Under several WSGI worker processes (`PROMETHEUS_MULTIPROC_DIR` set by
    `serve` before the workers start), each process writes its samples to that directory and /metrics, whichever
    worker answers, sums them all; otherwise the metrics live in this application's own registry."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_StoreCollector(store))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
        return _metrics(None, registry)
    return _metrics(registry, registry)


def _metrics(owner: CollectorRegistry | None, registry: CollectorRegistry) -> EngineMetrics:
    mutating = step_types(mutating=True)
    action_failures = Counter("rules_engine_action_failures", f"Failed actions (steps that change the fleet: "
                              f"{', '.join(mutating)}).", ["type"], registry=owner)
    for step_type in mutating:  # exported at 0 from the start, so rate() and alerts see the first failure
        action_failures.labels(step_type)
    return EngineMetrics(
        registry=registry,
        webhook_requests=Counter("rules_engine_webhook_requests", "Webhook deliveries by outcome "
                                 f"({', '.join(DELIVERY_OUTCOMES)}).", ["outcome"], registry=owner),
        webhook_alerts=Counter("rules_engine_webhook_alerts", "Alerts in accepted deliveries, by status.",
                               ["status"], registry=owner),
        webhook_ack_seconds=Histogram("rules_engine_webhook_ack_seconds", "Time to acknowledge a delivery "
                                      "(validate + persist).", registry=owner,
                                      buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5)),
        step_seconds=Histogram("rules_engine_step_duration_seconds", "Playbook step durations.",
                               ["type", "outcome"], registry=owner,
                               buckets=(.01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 900)),
        action_failures=action_failures,
        mutating_step_types=mutating,
    )
