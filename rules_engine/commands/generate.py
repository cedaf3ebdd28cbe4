"""`rules-engine generate`: compile rule packs into Prometheus rules, Alertmanager config and Grafana dashboards."""
from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlsplit

import click
import yaml

from rules_engine.api import generate as generate_files
from rules_engine.commands.options import fail, load_or_exit
from rules_engine.compile import alertmanager
from rules_engine.compile.generate import GenerateOptions, write_outputs
from rules_engine.compile.render import dump_yaml
from rules_engine.spec.models import parse_duration


@click.command("generate")
@click.option("--rules", "rules_paths", multiple=True, required=True, type=click.Path(exists=True),
              help="Rule pack file or folder (repeatable).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--tests", is_flag=True, help="Also write `promtool test rules` files for every alert.")
@click.option("--interval", default="30s", show_default=True,
              help="Rule group evaluation interval (also the step of window statistics' subqueries).")
@click.option("--webhook-url", default=alertmanager.DEFAULT_WEBHOOK_URL, show_default=True,
              help="The engine's Alertmanager webhook URL.")
@click.option("--token-file", default=alertmanager.DEFAULT_TOKEN_FILE, show_default=True,
              help="Bearer token file Alertmanager sends to the webhook.")
@click.option("--alertmanager-config", "alertmanager_base", type=click.Path(exists=True, dir_okay=False),
              help="A base alertmanager.yml: also write alertmanager/alertmanager.yml with the generated part merged in.")
@click.option("--monitor", "for_monitor", is_flag=True,
              help="Leave out the alerting rules `rules-engine monitor` evaluates by default (trend and regression "
                   "rules, timeslice SLOs; their recording rules stay), so nothing fires twice.")
@click.option("--runbook-base-url", default="", metavar="URL",
              help="Prefix relative runbook URLs (the shipped packs link docs/runbooks/*.md#alert) with URL, e.g. "
                   "https://github.com/ORG/REPO/blob/main; absolute ones stay as written.")
@click.option("--strict", is_flag=True, help="Exit 1 when any rule could not be compiled.")
def generate(rules_paths, out_dir, tests, interval, webhook_url, token_file, alertmanager_base, for_monitor,
             runbook_base_url, strict) -> None:
    """Write Prometheus rule files, promtool tests, Alertmanager config and Grafana dashboards to OUT."""
    ruleset = load_or_exit(rules_paths)
    if not ruleset.packs and not ruleset.slos:
        fail(f"nothing to generate: no rule pack or SLO in {', '.join(rules_paths)}")
    try:
        step = parse_duration(interval)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--interval") from None
    if runbook_base_url and not urlsplit(runbook_base_url).scheme:
        raise click.BadParameter(f"{runbook_base_url!r} is not an absolute URL (https://...)",
                                 param_hint="--runbook-base-url")
    options = GenerateOptions(interval=step, tests=tests, webhook_url=webhook_url, token_file=token_file,
                              monitor=for_monitor, runbook_base_url=runbook_base_url)
    generated = generate_files(ruleset, options)
    if alertmanager_base:
        base = yaml.safe_load(Path(alertmanager_base).read_text()) or {}
        fragment = yaml.safe_load(generated.files["alertmanager/rules-engine.yml"])
        generated.files["alertmanager/alertmanager.yml"] = dump_yaml(alertmanager.merge(base, fragment))
    written = write_outputs(generated, out_dir)
    alerts = sum(len(p.alerts) for p in generated.packs)
    recordings = sum(len(p.recordings) for p in generated.packs)
    click.echo(f"wrote {len(written)} files to {out_dir}: {recordings} recording rules, {alerts} alerting rules "
               f"from {len(generated.packs)} packs")
    for note in generated.notes:
        click.echo(f"note: {note}", err=True)
    if strict and generated.notes:
        sys.exit(1)
