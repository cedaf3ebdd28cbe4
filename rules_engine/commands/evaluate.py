"""`rules-engine evaluate`, `validate` and `record`: the backtest from the command line."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import pandas as pd

from rules_engine import api
from rules_engine.commands.options import (EXIT_BAD_INPUT, fail, fix_options, load_or_exit, prometheus_options,
                                           source_from_options, use_colour)
from rules_engine.evaluate.engine import DEFAULT_CONCURRENCY, Backtest
from rules_engine.evaluate.findings import SEVERITIES, severity_rank
from rules_engine.evaluate.local import LocalSource
from rules_engine.evaluate.series import EvaluationError
from rules_engine.report.export import backtest_record, export_text, write_export
from rules_engine.report.html import render_html
from rules_engine.report.text import render_text
from rules_engine.source.base import SourceError
from rules_engine.source.client import PrometheusClient
from rules_engine.source.prometheus import PrometheusSource
from rules_engine.source.snapshot import SnapshotSource, record_snapshot
from rules_engine.spec import RuleSet, SpecError, load_ruleset, parse_duration
from rules_engine.spec.timerange import resolve_range

EXIT_FAIL_ON = 1
EXIT_NOT_EVALUATED = 3


rules_option = click.option("--rules", "rule_paths", multiple=True, required=True, type=click.Path(),
                            help="Rule pack file or folder (repeatable); folders are read recursively.")
range_options = [
    click.option("--start", help="Range start: RFC 3339, unix seconds, or now-<duration>."),
    click.option("--end", help="Range end (default: now, or the snapshot's end)."),
    click.option("--time-range", help="Range length ending at --end, e.g. 24h or 7d (instead of --start)."),
    click.option("--step", help="Evaluation step, like Prometheus' evaluation_interval (default 30s, or the snapshot's)."),
]
rule_names_option = click.option("--rule", "rule_names", multiple=True, help="Evaluate only this rule (repeatable).")
snapshot_option = click.option("--snapshot", type=click.Path(dir_okay=False),
                               help="Replay a file made by `rules-engine record` instead of querying Prometheus.")


def with_options(options):
    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function
    return decorate


@click.command()
@rules_option
@snapshot_option
@prometheus_options
@with_options(range_options)
@rule_names_option
@click.option("--min-severity", type=click.Choice(SEVERITIES), default="low", show_default=True, help="Report only findings at least this severe.")
@click.option("--export", "export_path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the findings as JSON (the export contract); `-`: to stdout, instead of the text report.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Write an HTML report with plots (one self-contained file, opens without network access).")
@click.option("--fail-on", type=click.Choice(SEVERITIES), help="Exit 1 if a finding is at least this severe; exit 3 if a rule could not be evaluated (for CI).")
@click.option("--limit", type=int, default=50, show_default=True, help="Findings shown in the terminal report (the export has all).")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when stderr is a terminal).")
@click.option("--concurrency", type=click.IntRange(1, 32), default=DEFAULT_CONCURRENCY, show_default=True,
              help="Range queries in flight at once.")
@click.option("--engine", type=click.Choice(["pandas", "promql"]), default="pandas", show_default=True,
              help="pandas: the engine's own evaluation. promql: range-query the alert expressions `generate` "
                   "writes and apply for/keep_firing_for to them, to see what the live path in Prometheus would do.")
@click.option("--reader", type=click.Choice(["auto", "remote-read", "range-vector", "query"]), default="auto",
              show_default=True,
              help="How the pandas engine reads Prometheus. auto: raw samples by remote read, computed locally where "
                   "the server serves it (each query the local evaluator does not support is range-queried); "
                   "remote-read: insist on it; range-vector: raw samples through `metric[d]` queries; query: "
                   "range-query every expression. The export's rules[*].reads says how each query was answered.")
@fix_options
def evaluate(rule_paths, snapshot, start, end, time_range, step, rule_names, min_severity, export_path, report_path,
             fail_on, limit, progress, concurrency, engine, reader, fix, dry_run, database_url, variables, **prometheus):
    """Backtest rules over history: what would have fired, when, for how long, how bad.

    Reads series from Prometheus (or Thanos, Mimir, VictoriaMetrics) with --prometheus, or from a recorded
    --snapshot. Exit codes: 0 done, 1 --fail-on matched, 2 bad rules or arguments, 3 nothing could be evaluated
    (or, with --fail-on, some rule could not be).
    """
    ruleset = load_or_exit(rule_paths)
    source, source_name, (start_at, end_at, step_at) = source_and_range(snapshot, prometheus, start, end, time_range, step)
    backtest = _run(ruleset, source, start_at, end_at, step_at, rule_names, progress, concurrency, engine, reader,
                    keep_signals=report_path is not None)

    backtest.findings = [f for f in backtest.findings if severity_rank(f.severity) >= severity_rank(min_severity)]
    to_stdout = export_path == "-"  # the JSON alone on stdout: what else we say goes to stderr
    if to_stdout:
        click.echo(export_text(backtest_record(backtest, source_name)), nl=False)
    else:
        click.echo(render_text(backtest, source_name, colour=use_colour(sys.stdout), limit=limit), nl=False)
    if export_path and not to_stdout:
        write_export(backtest_record(backtest, source_name), export_path)
        click.echo(f"\nexported {len(backtest.findings)} finding(s) to {export_path}")
    if report_path:
        Path(report_path).write_text(render_html(backtest, source_name), encoding="utf-8")
        click.echo(f"wrote the HTML report to {report_path}", err=to_stdout)

    if fix:
        # Verify steps query the Prometheus the backtest read, with the same credentials and tenant.
        client = source.client if isinstance(source, PrometheusSource) else None
        fix_findings(backtest.findings, ruleset, dry_run, database_url, client, parse_variables(variables), err=to_stdout)
    elif dry_run:
        fail("--dry-run goes with --fix")

    if backtest.outcomes and len(backtest.failed) == len(backtest.outcomes):
        fail("no rule could be evaluated (see above)", EXIT_NOT_EVALUATED)
    if fail_on and backtest.failed:
        sys.exit(EXIT_NOT_EVALUATED)
    if fail_on and any(severity_rank(f.severity) >= severity_rank(fail_on) for f in backtest.findings):
        sys.exit(EXIT_FAIL_ON)


@click.command()
@rules_option
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one object on stdout, {\"ok\": ..., \"problems\": [{\"file\", \"line\", \"field\", \"message\"}], "
                   "and the counts when ok}.")
def validate(rule_paths, output_format):
    """Check rule packs, SLOs and playbooks; list every problem with file:line and field. Exit 2 on any."""
    if output_format == "json":
        try:
            ruleset = load_ruleset(list(rule_paths))
        except SpecError as error:
            problems = [{"file": p.path, "line": p.line, "field": p.field, "message": p.message} for p in error.problems]
            click.echo(json.dumps({"ok": False, "problems": problems}, indent=2))
            sys.exit(EXIT_BAD_INPUT)
        click.echo(json.dumps({"ok": True, "problems": [], "packs": len(ruleset.packs), "rules": len(ruleset.rules()),
                               "slos": len(ruleset.slos), "playbooks": len(ruleset.playbooks)}, indent=2))
        return
    ruleset = load_or_exit(rule_paths)
    rules = ruleset.rules()
    click.echo(f"ok: {len(ruleset.packs)} pack(s), {len(rules)} rule(s), {len(ruleset.slos)} SLO(s), "
               f"{len(ruleset.playbooks)} playbook(s)")


@click.command()
@rules_option
@prometheus_options
@with_options(range_options)
@rule_names_option
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Snapshot file to write.")
@click.option("--reader", type=click.Choice(["auto", "remote-read", "range-vector", "query"]), default="auto",
              show_default=True,
              help="auto/remote-read/range-vector: queries the local evaluator computes are stored as the raw samples "
                   "they read (once per selector), the others as results; query: every query's result.")
def record(rule_paths, start, end, time_range, step, rule_names, out_path, reader, **prometheus):
    """Save every range result the rules need for a range to one compressed file, for `evaluate --snapshot`."""
    ruleset = load_or_exit(rule_paths)
    if not prometheus.get("prometheus_url"):
        fail("--prometheus is required to record")
    source = _prometheus_source(prometheus)
    start_at, end_at, step_at = _range(start, end, time_range, step)
    try:
        queries, fetch_start = api.recording_plan(ruleset, start_at.floor(step_at), end_at.floor(step_at), step_at,
                                                  rule_names)
        if reader != "query":
            source = LocalSource(source, reader, cache_margin=pd.Timedelta(0))  # store only the range asked
        record_snapshot(source, queries, fetch_start, end_at.floor(step_at), step_at, out_path,
                        meta={"evaluation_start": start_at.floor(step_at).isoformat(),
                              "evaluation_end": end_at.floor(step_at).isoformat()})
    except (SourceError, EvaluationError) as error:
        fail(str(error), EXIT_NOT_EVALUATED)
    size = Path(out_path).stat().st_size
    click.echo(f"recorded {len(queries)} queries over {fetch_start.isoformat()} .. {end_at.floor(step_at).isoformat()} "
               f"to {out_path} ({size / 1e6:.1f} MB)")


def _range(start, end, time_range, step) -> tuple[pd.Timestamp, pd.Timestamp, pd.Timedelta]:
    try:
        start_at, end_at = resolve_range(start, end, time_range)
        return start_at, end_at, parse_duration(step or "30s")
    except ValueError as error:
        fail(str(error))


def _prometheus_source(prometheus: dict):
    try:
        return source_from_options(**prometheus)
    except SourceError as error:
        fail(str(error))


def source_and_range(snapshot, prometheus, start, end, time_range, step):
    """The source (a snapshot or Prometheus), its name for reports, and the range: a snapshot's by default."""
    if snapshot and prometheus.get("prometheus_url"):
        fail("give --prometheus or --snapshot, not both")
    if snapshot:
        try:
            source = SnapshotSource(snapshot)
        except SourceError as error:
            fail(str(error))
        meta = source.meta
        end_at = pd.Timestamp(meta.get("evaluation_end", source.end))
        if start or time_range:  # a range of the recording: "now" is long past its end, so --end defaults to it
            return source, f"snapshot {snapshot}", _range(start, end or end_at.isoformat(), time_range,
                                                          step or _format_step(source.step))
        start_at = pd.Timestamp(meta.get("evaluation_start", source.start))
        return source, f"snapshot {snapshot}", (start_at, end_at, parse_duration(step) if step else source.step)
    if not prometheus.get("prometheus_url"):
        fail("give --prometheus URL or --snapshot FILE")
    return _prometheus_source(prometheus), f"Prometheus {prometheus['prometheus_url']}", _range(start, end, time_range, step)


def _format_step(step: pd.Timedelta) -> str:
    return f"{int(step.total_seconds())}s"


def parse_variables(pairs: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            fail(f"--var takes NAME=VALUE, got {pair!r}")
        found[name] = value
    return found


def require_playbooks(ruleset: RuleSet) -> None:
    if not ruleset.playbooks:
        fail("--fix needs playbooks: add a folder with kind: Playbook documents to --rules")


def fix_findings(findings: list, ruleset: RuleSet, dry_run: bool, database_url: str,
                 prometheus: PrometheusClient | None, variables: dict[str, str], err: bool = False) -> None:
    """The seeds' --fix: each finding becomes the alert the live rule would send, through the webhook's own path
    (`monitor --fix` hands each round's new findings here too).

    `err`: say it on stderr (stdout carries the JSON export)."""
    from rules_engine.playbooks.fix import run_findings
    from rules_engine.playbooks.store import open_store

    def echo(text: str) -> None:
        click.echo(text, err=err)

    require_playbooks(ruleset)
    store = open_store(database_url)
    try:
        run = run_findings(findings, ruleset.playbooks, store, dry_run=dry_run,
                           prometheus=prometheus, variables=variables)
    finally:
        store.dispose()
    echo(f"\n{'Dry run' if dry_run else 'Fix'}: {len(run.created)} workflow(s) from {len(findings)} "
         f"finding(s) (store {database_url})")
    for workflow in run.created:
        echo(_workflow_line(workflow))
        for line in _plan_lines(workflow):
            echo(line)
    if run.existing:
        echo(f"{len(run.existing)} workflow(s) already existed for these alert episodes (deduplicated: one "
             "workflow per playbook and episode), not started again:")
        for workflow in run.existing:
            echo(_workflow_line(workflow))
    if run.suppressed:
        echo(f"{run.suppressed} finding(s) within their playbook's cooldown: no workflow started")
    unset = sorted({name for w in run.created for s in w.steps for name in s.output.get("unset", [])})
    if unset:
        echo("  unset: " + ", ".join(f"vars.{name}" for name in unset) + " (set with --var NAME=VALUE)")
    if not dry_run and run.created:
        echo("  approve with `rules-engine workflows approve ID` or the API; `serve` runs approved workflows")


def _workflow_line(workflow) -> str:
    return f"  {workflow.id}  {workflow.state:<17} {workflow.playbook:<24} {workflow.alertname} {workflow.instance}"


def _plan_lines(workflow) -> list[str]:
    """What a dry run would send, step by step (or why a step failed)."""
    from rules_engine.playbooks.workflow import STEP_FAILED

    lines = []
    for step in workflow.steps:
        would = step.output.get("would_send")
        if would:
            body = json.dumps(would["json"], sort_keys=True) if would["json"] is not None else ""
            lines.append(f"      {step.name}: {would['method']} {would['url']} {body}".rstrip())
        elif step.state == STEP_FAILED:
            lines.append(f"      {step.name}: FAILED: {step.note}")
    return lines


def _run(ruleset, source, start, end, step, rule_names, progress, concurrency, engine, reader="auto",
         keep_signals=False) -> Backtest:
    show = engine == "pandas" and (sys.stderr.isatty() if progress is None else progress)
    try:
        if not show:
            return api.backtest(ruleset, source, start, end, step, rules=rule_names, engine=engine,
                                concurrency=concurrency, keep_signals=keep_signals and engine == "pandas", reader=reader)
        queries, _ = api.fetch_plan(ruleset, start.floor(step), step, rule_names)
        with click.progressbar(length=len(queries), label="querying", file=sys.stderr) as bar:
            return api.backtest(ruleset, source, start, end, step, rules=rule_names, concurrency=concurrency,
                                on_query=lambda _: bar.update(1), keep_signals=keep_signals, reader=reader)
    except EvaluationError as error:
        fail(str(error))
