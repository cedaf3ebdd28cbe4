"""Rounds: evaluate the selected rules over a sliding range ending `now`, track their episodes, push alerts.

A round is one backtest per rule or SLO (rules_engine.api.backtest: the code `evaluate` runs; one call each so a
rule's duration and failure are its own, while the cache source shares fetched frames between them) over
[now - lookback, now] on the grid of the interval. The lookback is the rule's `for` + `keep_firing_for` + one
interval (the kind's own warm-up -- windows, fits, baselines -- is added by the engine's fetch plan, an SLO's burn
windows and period by its evaluation), extended back to the start of the rule's firing episodes, so an episode
keeps the start, peak and severity one backtest of the whole history gives it.

An episode firing at `now` is an alert: `startsAt` is the step it started firing (not when a replica first saw
it, so replicas and restarts agree and Alertmanager deduplicates them), `endsAt` now + 4 × max(interval, resend)
while it fires (as Prometheus), the step it resolved once it has. Firing alerts are resent every `resend`
(shorter than Alertmanager's resolve_timeout), resolved ones for `resolved_retention` after, as Prometheus does.
A rule that cannot be evaluated keeps its alerts as they were (Alertmanager resolves them when endsAt passes if
the failure lasts).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import pandas as pd

from rules_engine import api
from rules_engine.evaluate.engine import select_rules
from rules_engine.evaluate.findings import Finding
from rules_engine.evaluate.series import EvaluationError
from rules_engine.monitor.alertmanager import Alertmanager, push_all
from rules_engine.compile.alerts import AlertLabeler
from rules_engine.monitor.metrics import MonitorMetrics
from rules_engine.promql.kinds import RuleKind
from rules_engine.promql.slo import slo_exact_in_promql
from rules_engine.source.base import Source
from rules_engine.spec.loader import RuleSet
from rules_engine.spec.times import rfc3339

log = logging.getLogger(__name__)

RESEND = pd.Timedelta("1m")  # Prometheus' --rules.alert.resend-delay; Alertmanager's resolve_timeout is 5m
RESOLVED_RETENTION = pd.Timedelta("15m")  # how long Prometheus keeps sending a resolved alert
MAX_EPISODE_LOOKBACK = pd.Timedelta(days=7)  # how far back a round reaches for the start of a long episode


def monitored(ruleset: RuleSet, kinds: Mapping[str, RuleKind], everything: bool = False) -> list[str]:
    """Names of the rules and SLOs the monitor evaluates: those the compiled rules cannot express exactly (their
    kind or SLI type says so), or all of them."""
    rules = [rule.name for _, rule in ruleset.rules() if everything or not kinds[rule.type].exact_in_promql]
    slos = [slo.name for slo in ruleset.slos if everything or not slo_exact_in_promql(slo)]
    return rules + slos


EpisodeKey = tuple  # (rule, series labels, start, SLO window pair)


@dataclass
class Episode:
    """One firing episode of a rule on a series, as the rounds have seen it so far."""

    rule: str
    kind: str
    labels: dict[str, str]
    start: pd.Timestamp
    end: pd.Timestamp | None
    severity: str
    finding: Finding


@dataclass
class TrackedAlert:
    """An alert as Alertmanager knows it (its label set is its identity) and what each Alertmanager has of it."""

    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: pd.Timestamp
    resolved_at: pd.Timestamp | None = None
    version: int = 0  # bumped when what Alertmanager must learn changes (new, resolved)
    sent: dict[str, tuple[int, pd.Timestamp]] = field(default_factory=dict)  # Alertmanager -> (version, when)


@dataclass
class RoundResult:
    now: pd.Timestamp
    episodes: list[Episode]  # every episode firing in this round or resolved since the last one
    new: list[Finding]  # episodes first seen firing in this round
    failed: dict[str, str]  # rule or SLO -> why it could not be evaluated


def _episode_key(finding: Finding) -> EpisodeKey:
    pair = (finding.details.get("alert", ""), finding.details.get("speed", "")) if finding.kind == "slo" else ()
    return (finding.rule, tuple(sorted(finding.labels.items())), finding.start, pair)


def _label_key(labels: dict[str, str]) -> tuple:
    return tuple(sorted(labels.items()))


class Monitor:
    def __init__(self, ruleset: RuleSet, source: Source, names: Iterable[str], interval: pd.Timedelta,
                 kinds: Mapping[str, RuleKind], resend: pd.Timedelta = RESEND,
                 metrics: MonitorMetrics | None = None) -> None:
        self.ruleset = ruleset
        self.source = source
        self.names = list(names)
        if not self.names:
            raise EvaluationError("nothing to evaluate: no rule or SLO selected")
        self.interval = interval
        self.resend = resend
        self.metrics = metrics
        self.labeler = AlertLabeler(ruleset, kinds, interval)
        rules = {rule.name: rule for _, rule in select_rules(ruleset, self.names)}
        self.lookback = {name: (rules[name].for_ + rules[name].keep_firing_for if name in rules else pd.Timedelta(0))
                         + interval for name in self.names}
        self.episodes: dict[EpisodeKey, Episode] = {}  # firing at the last round
        self.alerts: dict[tuple, TrackedAlert] = {}
        self._episode_alert: dict[EpisodeKey, tuple] = {}
        self._last_end: pd.Timestamp | None = None
        self._lock = threading.Lock()

    # -- evaluation ------------------------------------------------------------------------------------------------

    def round(self, now: pd.Timestamp) -> RoundResult:
        """Evaluate every selected rule and SLO at `now` (floored to the interval) and update episodes and alerts."""
        end = now.floor(self.interval)
        started = time.perf_counter()
        seen: dict[EpisodeKey, Finding] = {}
        failed: dict[str, str] = {}
        for name in self.names:
            findings, error = self._evaluate(name, end)
            if error is not None:
                failed[name] = error
                continue
            for finding in findings:
                seen[_episode_key(finding)] = finding
        result = RoundResult(now=end, episodes=[], new=[], failed=failed)
        with self._lock:
            self._update(end, seen, failed, result)
        if self.metrics is not None:
            self.metrics.round_seconds.observe(time.perf_counter() - started)
            self.metrics.active_alerts.set(len(self.episodes))
            if not failed:
                self.metrics.last_success.set(time.time())
        return result

    def _evaluate(self, name: str, end: pd.Timestamp) -> tuple[list[Finding], str | None]:
        start = end - self.lookback[name]
        starts = [episode.start for episode in self.episodes.values() if episode.rule == name]
        if starts:
            start = max(min(start, min(starts) - self.lookback[name]), end - MAX_EPISODE_LOOKBACK)
        began = time.perf_counter()
        findings: list[Finding] = []
        message = None
        while True:
            try:
                backtest = api.backtest(self.ruleset, self.source, start, end, self.interval, rules=[name])
            except EvaluationError as error:
                message = str(error)
                break
            errors = [outcome.error for outcome in backtest.failed] + [r.error for r in backtest.slos if r.error]
            message = errors[0] if errors else None
            findings = backtest.findings
            # An episode firing since before the range start plus the lookback may have begun earlier than it
            # shows: reach back until its start is in view (what later rounds then do from the first).
            earliest = min((f.start for f in findings if f.end is None), default=None)
            if message is not None or earliest is None or earliest - self.lookback[name] >= start \
                    or start <= end - MAX_EPISODE_LOOKBACK:
                break
            start = max(earliest - self.lookback[name], end - MAX_EPISODE_LOOKBACK)
        if self.metrics is not None:
            self.metrics.evaluation_seconds.labels(name).observe(time.perf_counter() - began)
            if message is not None:
                self.metrics.evaluation_failures.labels(name).inc()
        if message is not None:
            log.warning("rule %s not evaluated at %s: %s", name, rfc3339(end), message)
            return [], message
        return findings, None

    def _update(self, end: pd.Timestamp, seen: dict[EpisodeKey, Finding], failed: dict[str, str],
                result: RoundResult) -> None:
        firing: dict[EpisodeKey, Episode] = {}
        for key, finding in seen.items():
            known = key in self.episodes
            # Resolved since the last round without ever being seen firing: rounds were missed (a slow or failed
            # round); it is still reported. Episodes resolved before the first round are history, not alerts.
            caught_up = self._last_end is not None and finding.end is not None and finding.end > self._last_end
            if not (finding.end is None or known or caught_up):
                continue
            episode = Episode(finding.rule, finding.kind, finding.labels, finding.start, finding.end,
                              finding.severity, finding)
            result.episodes.append(episode)
            if not known:
                result.new.append(finding)
            if finding.end is None:
                firing[key] = episode
            self._alert(key, finding, end)
        for key, episode in self.episodes.items():
            if key not in seen and episode.rule not in failed:
                # Evaluated, and the episode is gone (the data it rested on changed): it resolves now.
                gone = Episode(episode.rule, episode.kind, episode.labels, episode.start, end, episode.severity,
                               episode.finding)
                result.episodes.append(gone)
                self._resolve(key, end)
            elif key not in seen:
                firing[key] = episode  # not evaluated this round: unchanged
        self.episodes = firing
        self._last_end = end
        self._forget(end)

    def _alert(self, key: EpisodeKey, finding: Finding, end: pd.Timestamp) -> None:
        labels, annotations = self.labeler.alert(finding)
        label_key = _label_key(labels)
        previous = self._episode_alert.get(key)
        if previous is not None and previous != label_key:  # the severity changed: the old alert resolves
            self._resolve(key, end)
        tracked = self.alerts.get(label_key)
        if tracked is None or tracked.starts_at != finding.start:
            tracked = self.alerts[label_key] = TrackedAlert(labels, annotations, finding.start)
        tracked.annotations = annotations
        if tracked.resolved_at != finding.end:
            tracked.resolved_at = finding.end
            tracked.version += 1
        self._episode_alert[key] = label_key
        if finding.end is not None:
            self._episode_alert.pop(key)

    def _resolve(self, key: EpisodeKey, end: pd.Timestamp) -> None:
        label_key = self._episode_alert.pop(key, None)
        tracked = self.alerts.get(label_key) if label_key is not None else None
        # (the same labels may already belong to a newer episode of the series: that one is not resolved)
        if tracked is not None and tracked.resolved_at is None and tracked.starts_at == key[2]:
            tracked.resolved_at = end
            tracked.version += 1

    def _forget(self, end: pd.Timestamp) -> None:
        for label_key in [k for k, t in self.alerts.items()
                          if t.resolved_at is not None and t.resolved_at < end - RESOLVED_RETENTION]:
            del self.alerts[label_key]

    # -- sending ---------------------------------------------------------------------------------------------------

    def payload(self, tracked: TrackedAlert, now: pd.Timestamp) -> dict:
        ends = tracked.resolved_at if tracked.resolved_at is not None else now + 4 * max(self.interval, self.resend)
        return {"labels": tracked.labels, "annotations": tracked.annotations,
                "startsAt": rfc3339(tracked.starts_at), "endsAt": rfc3339(ends)}

    def due(self, target: str, now: pd.Timestamp) -> list[TrackedAlert]:
        """The alerts `target` must be sent at `now`: new or changed since it last accepted them, or not resent
        for `resend`."""
        with self._lock:
            return [tracked for tracked in self.alerts.values()
                    if (sent := tracked.sent.get(target)) is None or sent[0] < tracked.version
                    or sent[1] + self.resend <= now]

    def send(self, targets: list[Alertmanager], now: pd.Timestamp) -> dict[str, str]:
        """Push what each Alertmanager is due; returns Alertmanager -> error for those that failed (they get the
        same alerts again next round)."""
        batches = {target: self.due(target.name, now) for target in targets}
        batches = {target: alerts for target, alerts in batches.items() if alerts}
        outcomes = push_all({target: [self.payload(t, now) for t in alerts] for target, alerts in batches.items()})
        errors = {}
        with self._lock:
            for target, error in outcomes.items():
                if error is not None:
                    errors[target.name] = str(error)
                    log.warning("%s (%d alert(s) retried next round)", error, len(batches[target]))
                    if self.metrics is not None:
                        self.metrics.send_failures.labels(target.name).inc()
                    continue
                for tracked in batches[target]:
                    tracked.sent[target.name] = (tracked.version, now)
                if self.metrics is not None:
                    self.metrics.alerts_sent.labels(target.name).inc(len(batches[target]))
        return errors

    # -- the loop --------------------------------------------------------------------------------------------------

    def run(self, targets: list[Alertmanager], stop: threading.Event,
            on_new: Callable[[list[Finding]], None] | None = None, clock: Callable[[], float] = time.time) -> None:
        """Rounds on the interval's grid until `stop` is set; a round in progress when it is set finishes first.
        Nothing a round meets (Prometheus, Alertmanager or a playbook store failing) ends the loop."""
        seconds = self.interval.total_seconds()
        while not stop.is_set():
            now = pd.Timestamp(clock(), unit="s", tz="UTC")
            try:
                result = self.round(now)
                log.info("round %s: %d evaluated, %d firing, %d new, %d failed", rfc3339(result.now),
                         len(self.names) - len(result.failed), len(self.episodes), len(result.new), len(result.failed))
                if on_new is not None and result.new:
                    on_new(result.new)
            except Exception:  # noqa: BLE001 - logged and counted; the next round tries again
                log.exception("round at %s failed", rfc3339(now))
                if self.metrics is not None:
                    for name in self.names:
                        self.metrics.evaluation_failures.labels(name).inc()
            self.send(targets, now)
            wake = (clock() // seconds + 1) * seconds
            stop.wait(max(0.0, wake - clock()))
