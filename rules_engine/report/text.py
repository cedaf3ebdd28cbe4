"""The terminal report: a summary, the findings ranked by severity and duration, and what could not be evaluated."""
from __future__ import annotations

import textwrap
from collections import Counter

import click
import pandas as pd

from rules_engine.evaluate.engine import Backtest
from rules_engine.evaluate.findings import SEVERITIES, Finding
from rules_engine.evaluate.health import Health
from rules_engine.evaluate.slo import SLOResult
from rules_engine.promql.templates import render_readable
from rules_engine.spec.models import format_duration
from rules_engine.spec.times import rfc3339

SEVERITY_COLOURS = {"critical": "red", "high": "magenta", "medium": "yellow", "low": "cyan"}


def format_value(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:.4g}"


def _series_name(finding: Finding) -> str:
    labels = dict(finding.labels)
    head = labels.pop("instance", "") or "(all)"
    rest = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return f"{head} {{{rest}}}" if rest else head


def render_text(backtest: Backtest, source: str, colour: bool = False, limit: int | None = None) -> str:
    def style(text: str, **kwargs) -> str:
        return click.style(text, **kwargs) if colour else text

    lines = [
        style("rules-engine backtest", bold=True),
        f"  range   {rfc3339(backtest.start)} .. {rfc3339(backtest.end)}  step {format_duration(backtest.step)}",
        f"  source  {source}",
        "",
        style("Summary", bold=True),
    ]
    evaluated = [o for o in backtest.outcomes if not o.error]
    by_severity = Counter(f.severity for f in backtest.findings)
    lines.append(f"  rules     {len(evaluated)} of {len(backtest.outcomes)} evaluated"
                 + (f", {len(backtest.failed)} could not be" if backtest.failed else ""))
    lines.append(f"  series    {sum(o.series for o in evaluated)} evaluated (a rule whose comparison runs in Prometheus counts only the series that crossed it)")
    counts = ", ".join(style(f"{by_severity[s]} {s}", fg=SEVERITY_COLOURS[s]) for s in reversed(SEVERITIES) if by_severity[s])
    lines.append(f"  findings  {len(backtest.findings)}" + (f": {counts}" if counts else ""))
    partial = _partial_data(backtest)
    lines.extend(_health_lines(backtest.health(), len(partial)))
    if backtest.slos:
        lines.append("")
        lines.append(style("SLOs", bold=True) + " (attainment over the period up to the range end)")
        lines.extend(_slo_lines(backtest.slos, style))

    lines.append("")
    lines.append(style("Findings", bold=True) + " (most severe first, then longest)")
    if not backtest.findings:
        lines.append("  none: no rule fired in this range")
    shown = backtest.findings if limit is None else backtest.findings[:limit]
    for index, finding in enumerate(shown, start=1):
        lines.extend(_finding_lines(index, finding, backtest.end, style))
    if limit is not None and len(backtest.findings) > limit:
        lines.append(f"  ... and {len(backtest.findings) - limit} more (use --export for all)")

    if partial:
        lines.append("")
        lines.append(style("Partial data", bold=True) + " (Prometheus answered with warnings; findings may miss series)")
        for warning, rules in partial.items():
            lines.extend(textwrap.wrap(f"{warning} (rules: {', '.join(rules)})", width=110, initial_indent="  ",
                                       subsequent_indent="    "))

    failed_slos = [result for result in backtest.slos if result.error]
    if backtest.failed or failed_slos:
        lines.append("")
        lines.append(style("Could not be evaluated", bold=True))
        for outcome in backtest.failed:
            lines.append(f"  {outcome.rule}: {outcome.error}")
        for result in failed_slos:
            lines.append(f"  SLO {result.slo}: {result.error}")
    return "\n".join(lines) + "\n"


def _finding_lines(index: int, finding: Finding, range_end: pd.Timestamp, style) -> list[str]:
    ongoing = " (still firing at the end)" if finding.end is None else ""
    comparison = "<" if finding.details.get("direction") == "below" else ">"
    headline = (f"  {index:>3}. {style(finding.severity.upper(), fg=SEVERITY_COLOURS[finding.severity], bold=True)} "
                f"{finding.rule} [{finding.category}] on {_series_name(finding)}")
    timing = (f"       {rfc3339(finding.start)} for {format_duration(finding.duration(range_end).round('s'))}{ongoing}; "
              f"peak {format_value(finding.value)} {comparison} {format_value(finding.threshold)}")
    lines = [headline, timing]
    if finding.summary:
        lines.append(f"       {render_readable(finding.summary, finding.labels, finding.value)}")
    if finding.recommendation:
        wrapped = textwrap.wrap(finding.recommendation, width=100, initial_indent="       -> ", subsequent_indent="          ")
        lines.extend(wrapped)
    if finding.playbook:
        lines.append(f"       playbook: {finding.playbook}")
    return lines


def _partial_data(backtest: Backtest) -> dict[str, list[str]]:
    """Each warning Prometheus gave, with the rules whose queries it concerns."""
    rules: dict[str, list[str]] = {}
    for outcome in backtest.outcomes:
        for warning in outcome.warnings:
            rules.setdefault(warning, []).append(outcome.rule)
    return rules


def _health_lines(health: Health, warnings: int) -> list[str]:
    """The scores, and beside them what they cannot speak for: rules that failed, categories nothing checked."""
    if health.overall is None:
        lines = [f"  health    unknown: none of the {health.checks} rules and SLOs could be evaluated "
                 f"(see Could not be evaluated)"]
    else:
        lines = [f"  health    {health.overall:.1f} / 100 overall (100 minus deductions per finding and violated SLO)"]
        if health.failed:
            lines.append(f"            partial: {health.failed} of {health.checks} rules and SLOs could not be evaluated "
                         f"and are not in the score")
    if warnings:
        lines.append(f"            partial data: Prometheus warned about {warnings} answer(s) (see Partial data)")
    by_instance = {name: item.score for name, item in health.instances.items()}
    known = {name: score for name, score in health.categories.items() if score is not None}
    for title, scores in (("by instance", by_instance), ("by category", known)):
        if scores:
            worst = sorted(scores.items(), key=lambda item: (item[1], item[0]))
            text = ", ".join(f"{name} {score:.0f}" for name, score in worst)
            lines.extend(textwrap.wrap(text, width=110, initial_indent=f"    {title:<13}", subsequent_indent=" " * 17))
    if health.not_covered:
        text = ", ".join(f"{name} ({why})" for name, why in health.not_covered.items())
        lines.extend(textwrap.wrap(text, width=110, initial_indent=f"    {'not covered':<13}", subsequent_indent=" " * 17))
    return lines


def _percent(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f}%"


def _slo_lines(results: list[SLOResult], style) -> list[str]:
    evaluated = sorted((r for r in results if not r.error),
                       key=lambda r: (r.budget_remaining if r.budget_remaining is not None else 1.0, r.slo))
    names = [r.slo for r in evaluated]
    groups = [", ".join(f"{k}={v}" for k, v in sorted(r.labels.items())) or "(all)" for r in evaluated]
    name_width = max([len("SLO")] + [len(n) for n in names])
    group_width = max([len("series")] + [len(g) for g in groups])
    lines = [f"  {'SLO':<{name_width}}  {'series':<{group_width}} {'objective':>9} {'attained':>9} {'budget left':>12} "
             f"{'worst burn':>18}"]
    for result, name, group in zip(evaluated, names, groups):
        budget = f"{_percent(result.budget_remaining, 1):>12}"
        if result.budget_remaining is not None and result.budget_remaining < 0:
            budget = style(budget, fg="red")
        worst = result.worst_burn
        burn = f"{worst['value']:.2f}x over {worst['window']}" if worst and worst.get("value") is not None else "n/a"
        lines.append(f"  {name:<{name_width}}  {group:<{group_width}} {result.objective:>8.3g}% "
                     f"{_percent(result.attainment):>9} {budget} {burn:>18}")
        for warning in result.warnings:
            lines.append(f"      note: {warning}")
    return lines
