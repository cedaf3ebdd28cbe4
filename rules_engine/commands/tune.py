"""`rules-engine tune`: sweep a threshold rule's threshold (and `for`) over history, scored against incidents."""
from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from rules_engine import api
from rules_engine.commands.evaluate import (range_options, rules_option, snapshot_option, source_and_range,
                                            with_options)
from rules_engine.commands.options import fail, load_or_exit, prometheus_options, use_colour
from rules_engine.evaluate.series import EvaluationError
from rules_engine.evaluate.tune import DEFAULT_GRACE, Candidate, Sweep
from rules_engine.report.html import render_tune_html
from rules_engine.source.base import SourceError
from rules_engine.spec import SpecError, format_duration, parse_duration
from rules_engine.spec.incidents import load_incidents
from rules_engine.spec.times import rfc3339

EXIT_NOT_EVALUATED = 3


@click.command()
@rules_option
@click.option("--rule", "rule_name", required=True, help="The threshold rule to tune.")
@snapshot_option
@prometheus_options
@with_options(range_options)
@click.option("--thresholds", help="Candidates: a comma list (0.9,0.95,0.97) or LOW:HIGH:COUNT, evenly spaced; the rule's own is added. "
              "Default: 25 from half to one and a half times the rule's threshold, within the values seen.")
@click.option("--for", "fors", help="`for` durations to sweep too, a comma list (5m,10m,15m). Default: the rule's.")
@click.option("--incidents", "incidents_path", type=click.Path(dir_okay=False),
              help="Labelled incidents (YAML/JSON; `simulate --truth` files as they are): detection and delay per "
                   "candidate, for the incidents of the rule's category.")
@click.option("--grace", default=format_duration(DEFAULT_GRACE), show_default=True,
              help="An alert firing this long after an incident's end still detected it.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Write the curves (alerts per day, detection, delay against the threshold) as an HTML file.")
def tune(rule_paths, rule_name, snapshot, start, end, time_range, step, thresholds, fors, incidents_path, grace,
         report_path, **prometheus):
    """Sweep a threshold rule's threshold (and `for`) over history: alerts per day, time firing and, given
    labelled incidents, detection and delay per candidate: the numbers to pick a threshold by.

    The rule's signal is fetched and computed once; all candidates are judged together. Exit codes: 0 done,
    2 bad rules or arguments, 3 the rule's data could not be fetched.
    """
    ruleset = load_or_exit(rule_paths)
    candidates = _thresholds(thresholds) if thresholds else None
    try:
        durations = [parse_duration(text) for text in fors.split(",")] if fors else None
        grace_at = parse_duration(grace)
    except ValueError as error:
        fail(str(error))
    try:
        incidents = load_incidents(incidents_path) if incidents_path else []
    except SpecError as error:
        fail("the incidents were rejected:\n  " + "\n  ".join(str(p) for p in error.problems))
    source, source_name, (start_at, end_at, step_at) = source_and_range(snapshot, prometheus, start, end, time_range,
                                                                        step)
    try:
        sweep = api.tune(ruleset, source, rule_name, start_at, end_at, step_at, thresholds=candidates,
                         fors=durations, incidents=incidents, grace=grace_at)
    except EvaluationError as error:
        fail(str(error))
    except SourceError as error:
        fail(str(error), EXIT_NOT_EVALUATED)
    click.echo(render_sweep(sweep, source_name, incidents_path, colour=use_colour(sys.stdout)), nl=False)
    if report_path:
        Path(report_path).write_text(render_tune_html(sweep, source_name), encoding="utf-8")
        click.echo(f"\nwrote the HTML report to {report_path}")


def _thresholds(text: str) -> list[float]:
    try:
        if ":" in text:
            low, high, count = text.split(":")
            if int(count) < 1:
                raise ValueError("COUNT must be at least 1")
            return [float(f"{value:.6g}") for value in np.linspace(float(low), float(high), int(count))]
        return [float(value) for value in text.split(",")]
    except ValueError as error:
        fail(f"--thresholds {text!r}: give a comma list of numbers or LOW:HIGH:COUNT ({error})")


def render_sweep(sweep: Sweep, source: str, incidents_path: str | None, colour: bool = False) -> str:
    def style(text: str, **kwargs) -> str:
        return click.style(text, **kwargs) if colour else text

    lines = [
        style(f"rules-engine tune: {sweep.rule}", bold=True) + f" [{sweep.category}], now {sweep.direction} "
        f"{sweep.threshold:g} for {format_duration(sweep.for_)}",
        f"  range   {rfc3339(sweep.start)} .. {rfc3339(sweep.end)} ({sweep.days:.3g} days), step "
        f"{format_duration(sweep.step)}, {sweep.series} series",
        f"  source  {source}",
    ]
    scored = bool(sweep.incidents or sweep.unmatched_incidents)
    if incidents_path is not None:
        lines.append(f"  incidents  {len(sweep.incidents)} of category {sweep.category} in {incidents_path} "
                     f"(an alert up to {format_duration(sweep.grace)} after an incident's end detects it)")
        for incident in sweep.unmatched_incidents:
            lines.append(f"    not judged: {incident.describe()}: no series of the rule has its labels")
    for note in sweep.notes:
        lines.append(f"  note: {note}")
    header = f"  {'threshold':>10} {'for':>6} {'alerts':>7} {'per day':>8} {'firing':>8}"
    if scored:
        header += f" {'detected':>9} {'median delay':>13} {'max delay':>10} {'other alerts':>13}"
    lines += ["", header]
    for candidate in sweep.candidates:
        current = candidate.threshold == sweep.threshold and candidate.for_ == sweep.for_
        lines.append(style(_row(candidate, sweep, scored, current), bold=current))
    legend = "  * the rule's own threshold and for; firing: share of series-time"
    lines += ["", legend + ("; other alerts: alerts that overlapped no incident" if scored else "")]
    own = [c for c in sweep.candidates if c.threshold == sweep.threshold and c.for_ == sweep.for_]
    if own and own[0].missed:
        lines.append("  missed at the rule's own threshold: " + "; ".join(own[0].missed))
    return "\n".join(lines) + "\n"


def _row(candidate: Candidate, sweep: Sweep, scored: bool, current: bool) -> str:
    mark = "*" if current else " "
    text = (f"{mark} {candidate.threshold:>10.4g} {format_duration(candidate.for_):>6} {candidate.alerts:>7} "
            f"{candidate.alerts_per_day:>8.2f} {candidate.firing_share * 100:>7.2f}%")
    if scored:
        judged = len(sweep.incidents)
        text += (f" {f'{candidate.detected}/{judged}':>9} {_delay(candidate.median_delay):>13} "
                 f"{_delay(candidate.max_delay):>10} {candidate.unmatched_alerts:>13}")
    return text


def _delay(delay) -> str:
    return "-" if delay is None else format_duration(delay.round("s"))
