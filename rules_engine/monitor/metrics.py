"""The monitor's own metrics, on a registry of its own (served by prometheus_client on --listen)."""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass(frozen=True)
class MonitorMetrics:
    registry: CollectorRegistry
    evaluation_seconds: Histogram  # per rule (or SLO)
    evaluation_failures: Counter  # per rule (or SLO)
    round_seconds: Histogram
    last_success: Gauge
    active_alerts: Gauge
    alerts_sent: Counter  # per Alertmanager
    send_failures: Counter  # per Alertmanager


def monitor_metrics() -> MonitorMetrics:
    registry = CollectorRegistry()
    prefix = "rules_engine_monitor_"
    return MonitorMetrics(
        registry=registry,
        evaluation_seconds=Histogram(prefix + "rule_evaluation_seconds", "Time to evaluate one rule or SLO in a round.",
                                     ["rule"], buckets=BUCKETS, registry=registry),
        evaluation_failures=Counter(prefix + "rule_evaluation_failures", "Rounds in which a rule or SLO could not be "
                                    "evaluated (its data could not be fetched, or its evaluation failed).", ["rule"],
                                    registry=registry),
        round_seconds=Histogram(prefix + "round_seconds", "Time of one round: every selected rule and SLO.",
                                buckets=BUCKETS, registry=registry),
        last_success=Gauge(prefix + "last_successful_round_timestamp_seconds",
                           "Unix time of the last round in which every selected rule and SLO was evaluated.",
                           registry=registry),
        active_alerts=Gauge(prefix + "active_alerts", "Alerts firing after the last round.", registry=registry),
        alerts_sent=Counter(prefix + "alerts_sent", "Alerts (firing or resolved) accepted by an Alertmanager.",
                            ["alertmanager"], registry=registry),
        send_failures=Counter(prefix + "alert_send_failures", "Pushes to an Alertmanager that failed (retried next "
                              "round).", ["alertmanager"], registry=registry),
    )
