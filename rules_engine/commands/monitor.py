"""`rules-engine monitor`: evaluate rules live, in rounds, and push their alerts to Alertmanager (API v2)."""
from __future__ import annotations

import logging
import signal
import sys
import threading

import click
from click.core import ParameterSource

from rules_engine.commands.evaluate import fix_findings, parse_variables, require_playbooks
from rules_engine.commands.options import fail, fix_options, load_or_exit, prometheus_options, source_from_options
from rules_engine.evaluate.series import EvaluationError
from rules_engine.kinds import RULE_KINDS
from rules_engine.monitor.alertmanager import Alertmanager
from rules_engine.monitor.cache import CachingSource
from rules_engine.monitor.config import MonitorConfig, MonitorConfigError, load_config
from rules_engine.source.base import SourceError
from rules_engine.spec.models import format_duration, parse_duration

# command-line parameter -> its key in the config file (where the names differ)
CONFIG_KEYS = {"rule_paths": "rules", "prometheus_url": "prometheus", "headers": "header", "alertmanagers": "alertmanager",
               "everything": "all", "database_url": "database", "variables": "var"}


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML file with these settings (keys: the option names with _ for -; options given here win).")
@click.option("--rules", "rule_paths", multiple=True, type=click.Path(),
              help="Rule pack file or folder (repeatable); folders are read recursively.")
@prometheus_options
@click.option("--alertmanager", "alertmanagers", multiple=True, metavar="URL",
              help="Alertmanager base URL (repeatable); every alert goes to each of them.")
@click.option("--interval", default="30s", show_default=True,
              help="Round interval, also the evaluation step (like a rule group's interval).")
@click.option("--resend", default="1m", show_default=True,
              help="Resend firing alerts this often; keep it below Alertmanager's resolve_timeout (5m).")
@click.option("--refetch", default="1m", show_default=True,
              help="Fetch the newest points again for this long each round (late scrapes change them).")
@click.option("--all", "everything", is_flag=True,
              help="Evaluate every rule and SLO, not only those the generated rules cannot express exactly.")
@click.option("--listen", metavar="HOST:PORT", help="Serve the monitor's own /metrics here, e.g. 127.0.0.1:9464.")
@fix_options
@click.pass_context
def monitor(ctx, config_path, **given):
    """Evaluate rules live and push their alerts to Alertmanager, as a Prometheus ruler does.

    Every --interval, each selected rule (and SLO) is evaluated with the code `evaluate` runs over a sliding range
    ending now, and its firing episodes go to every --alertmanager with the alertname, labels and annotations of
    the generated rules. By default only what the generated rules cannot express exactly is evaluated (trend and
    regression rules, timeslice SLOs): load the rules `generate --monitor` writes into Prometheus beside it and
    nothing fires twice. Replicas send identical alerts, which Alertmanager deduplicates. Stops on SIGTERM/SIGINT
    (exit 0); exit 2 on bad rules or settings.
    """
    # Imported here, not at the top: the CLI imports every command module, and prometheus_client fixes at its first
    # import whether metrics go to per-process files, which `serve` decides later (PROMETHEUS_MULTIPROC_DIR).
    from rules_engine.monitor.metrics import monitor_metrics
    from rules_engine.monitor.rounds import Monitor, monitored

    settings = _settings(ctx, config_path, given)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    if not settings["rule_paths"]:
        fail("--rules is required (or `rules:` in --config)")
    if not settings["alertmanagers"]:
        fail("--alertmanager URL is required (or `alertmanager:` in --config)")
    interval, resend, refetch = (_duration(settings[name], name) for name in ("interval", "resend", "refetch"))
    ruleset = load_or_exit(tuple(settings["rule_paths"]))
    names = monitored(ruleset, RULE_KINDS, settings["everything"])
    if not names:
        fail("nothing for the monitor to evaluate: every rule and SLO is exact in PromQL (the generated rules "
              "alert on them in Prometheus); --all evaluates them here too")
    if settings["fix"]:
        require_playbooks(ruleset)
    variables = parse_variables(tuple(settings["variables"]))
    try:
        prometheus = source_from_options(settings["prometheus_url"], settings["bearer_token_file"],
                                         settings["basic_auth"], settings["ca_file"], settings["insecure_skip_verify"],
                                         tuple(settings["headers"]), settings["timeout"])
    except SourceError as error:
        fail(str(error))
    metrics = monitor_metrics()
    try:
        live = Monitor(ruleset, CachingSource(prometheus, refetch), names, interval, RULE_KINDS, resend, metrics)
    except EvaluationError as error:
        fail(str(error))
    if settings["listen"]:
        _serve_metrics(settings["listen"], metrics.registry)
    targets = [Alertmanager(url) for url in settings["alertmanagers"]]

    def on_new(findings) -> None:
        fix_findings(findings, ruleset, settings["dry_run"], settings["database_url"], prometheus.client, variables)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    click.echo(f"monitor: {len(names)} rule(s)/SLO(s) every {format_duration(interval)} from {prometheus.url} to "
               f"{', '.join(t.name for t in targets)}: {', '.join(names)}", err=True)
    try:
        live.run(targets, stop, on_new if settings["fix"] else None)
    finally:
        prometheus.close()
        for target in targets:
            target.close()
    click.echo("monitor: stopped", err=True)


def _settings(ctx: click.Context, config_path: str | None, given: dict) -> dict:
    """Command-line values, with the config file's for every option not given on the command line."""
    if config_path is None:
        return given
    try:
        config = load_config(config_path)
    except MonitorConfigError as error:
        fail(f"invalid --config:\n{error}")
    settings = dict(given)
    for name in given:
        key = CONFIG_KEYS.get(name, name)
        if key in MonitorConfig.model_fields and ctx.get_parameter_source(name) in (ParameterSource.DEFAULT, None):
            value = getattr(config, key)
            settings[name] = tuple(value) if isinstance(value, list) else value
    return settings


def _duration(text: str, name: str):
    try:
        value = parse_duration(text)
    except ValueError as error:
        fail(f"--{name}: {error}")
    if value.total_seconds() <= 0:
        fail(f"--{name}: must be positive, got {text!r}")
    return value


def _serve_metrics(listen: str, registry) -> None:
    from prometheus_client import start_http_server

    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        fail(f"--listen {listen!r} is not HOST:PORT")
    try:
        start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
    except OSError as error:
        fail(f"--listen {listen}: {error.strerror}")

