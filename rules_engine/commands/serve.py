"""`rules-engine serve` (the server under gunicorn, server/gunicorn.py) and
`rules-engine workflows list|show|approve|reject` (directly on the store)."""
from __future__ import annotations

import atexit
import getpass
import json
import os
import shutil
import sys
import tempfile

import click

from rules_engine.commands.options import fail
from rules_engine.server.config import ConfigError, ServerConfig, load_config, prometheus_client
from rules_engine.server.gunicorn import run_gunicorn
from rules_engine.urls import redacted_url
from rules_engine.spec.times import rfc3339


@click.command("serve")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="Server config YAML (listen, database_url, playbooks, credentials, roles, ...).")
@click.option("--listen", help="host:port to bind (default 127.0.0.1:8080).")
@click.option("--database", "database_url", help="SQLAlchemy URL (default sqlite:///rules-engine.db; "
                                                  "postgresql://... accepted).")
@click.option("--playbooks", multiple=True, help="Playbook files or folders (repeatable; default rules/).")
@click.option("--rules", "rules", multiple=True,
              help="Rule packs and SLOs analysis jobs may name (files or folders, repeatable; default rules/).")
@click.option("--prometheus", "prometheus_url",
              help="Prometheus URL for verify steps and current settings (replaces the url of the config's "
                   "`prometheus:` section; its credentials, CA and headers still apply).")
@click.option("--dry-run", is_flag=True, default=None, help="Record what every workflow would do; send nothing.")
@click.option("--workers", type=int, help="WSGI worker processes (default 1: SQLite has one writer).")
@click.option("--threads", type=int, help="Threads per worker (default 16).")
@click.option("--no-processing", is_flag=True, default=False,
              help="Only receive and persist webhooks; another process runs intake and workflows.")
@click.option("--max-resumes", type=int,
              help="Times a workflow interrupted by a crash is resumed in a row without progress before it is "
                   "failed, its change rolled back if it made one (default 5).")
def serve(config_path, listen, database_url, playbooks, rules, prometheus_url, dry_run, workers, threads,
          no_processing, max_resumes):
    """Receive Alertmanager webhooks, run optimization playbooks, analysis jobs and recommendations (the API is
    described at /api/v1/openapi.json and browsable at /docs)."""
    try:
        config = load_config(config_path, listen=listen, database_url=database_url,
                             playbooks=list(playbooks) or None, rules=list(rules) or None,
                             prometheus_url=prometheus_url, dry_run=dry_run,
                             workers=workers, threads=threads, process=False if no_processing else None,
                             max_resumes=max_resumes)
        _check(config)
    except ConfigError as error:
        fail(str(error))
    if config.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Before any worker imports prometheus_client: /metrics then sums every worker's samples.
        metrics_dir = tempfile.mkdtemp(prefix="rules-engine-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        atexit.register(_remove_metrics_dir, metrics_dir, os.getpid())
    click.echo(f"rules-engine serve: listening on {config.listen}, store {redacted_url(config.database_url)}, "
               f"{config.workers} worker(s) x {config.threads} thread(s)"
               f"{', dry run' if config.dry_run else ''}{', receive only' if not config.process else ''}", err=True)
    run_gunicorn(config)


def _remove_metrics_dir(path: str, owner: int) -> None:
    """Remove the shared metrics directory when the master exits. gunicorn's workers are forks that inherit this
    atexit handler and leave through sys.exit; a worker removing the directory made its replacement fail to boot,
    and gunicorn then stopped the whole server."""
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def _check(config: ServerConfig) -> None:
    """Fail before forking workers: playbooks load, secrets are readable, the store opens."""
    from rules_engine.playbooks.runtime import load_playbooks
    from rules_engine.playbooks.store import open_store
    from rules_engine.server.config import Credentials
    from rules_engine.spec import SpecError, load_ruleset

    if config.alertmanager_auth is None:
        raise ConfigError("alertmanager_auth is required: the webhook never runs unauthenticated")
    if not config.operators:
        raise ConfigError("configure at least one operator (operators: [{name, token, roles}]) to approve workflows")
    try:
        # A step reading a variable the config lacks would fail mid-workflow. Not checked where no step runs here
        # (receive only) or where it shows as `<unset: vars.NAME>` instead (a dry run).
        checked = config.process and not config.dry_run
        load_playbooks(config.playbooks, variables=config.variables if checked else None)
    except SpecError as error:
        raise ConfigError("playbooks do not load:\n" + "\n".join(str(p) for p in error.problems)) from None
    try:
        load_ruleset(config.rules)
    except SpecError as error:
        raise ConfigError("rules (for analysis jobs) do not load:\n" + "\n".join(str(p) for p in error.problems)
                          ) from None
    Credentials.from_config(config)
    client = prometheus_client(config)
    if client is not None:
        client.close()
    open_store(config.database_url, synchronous=config.sqlite_synchronous).dispose()


# --- workflows ----------------------------------------------------------------------------------------------------
def _store(config_path: str | None, database_url: str | None):
    from rules_engine.playbooks.store import open_store

    try:
        config = load_config(config_path, database_url=database_url)
    except ConfigError as error:
        fail(str(error))
    return open_store(config.database_url, synchronous=config.sqlite_synchronous)


_store_options = [
    click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                 help="The serve config (for its database_url)."),
    click.option("--database", "database_url", help="SQLAlchemy URL of the store."),
]


def _with_store(function):
    for option in reversed(_store_options):
        function = option(function)
    return function


@click.group("workflows")
def workflows():
    """List, show, approve and reject optimization workflows (directly on the store: DB access is admin access)."""


@workflows.command("list")
@_with_store
@click.option("--state", help="Filter by state (PENDING_APPROVAL, APPROVED, IN_PROGRESS, COMPLETED, ...).")
@click.option("--instance")
@click.option("--alertname")
@click.option("--playbook")
@click.option("--limit", type=int, default=100)
@click.option("--json", "as_json", is_flag=True)
def list_command(config_path, database_url, state, instance, alertname, playbook, limit, as_json):
    """List workflows, newest first."""
    from rules_engine.playbooks import store as st

    store = _store(config_path, database_url)
    with store.read() as conn:
        found = st.list_workflows(conn, state=state, instance=instance, alertname=alertname, playbook=playbook,
                                  limit=limit)
    if as_json:
        click.echo(json.dumps([w.to_json(with_steps=False) for w in found], indent=2))
        return
    click.echo(f"{'ID':12}  {'STATE':16}  {'PLAYBOOK':32}  {'ALERT':28}  {'INSTANCE':24}  CREATED")
    for w in found:
        click.echo(f"{w.id:12}  {w.state + (' (dry)' if w.dry_run else ''):16}  {w.playbook[:32]:32}  "
                   f"{w.alertname[:28]:28}  {w.instance[:24]:24}  {rfc3339(w.created_at)[:19]}")


@workflows.command("show")
@_with_store
@click.argument("workflow_id")
def show_command(config_path, database_url, workflow_id):
    """Show one workflow with its steps (state, output, timing) and its audit trail, as JSON."""
    from rules_engine.playbooks import store as st

    store = _store(config_path, database_url)
    with store.read() as conn:
        found = st.get_workflow(conn, workflow_id)
        if found is None:
            raise click.ClickException(f"no workflow {workflow_id!r}")
        body = found.to_json()
        body["audit"] = st.audit_entries(conn, workflow_id)
    click.echo(json.dumps(body, indent=2))


def _decide(config_path, database_url, workflow_id, text, decision):
    from rules_engine.playbooks import workflow as wf

    store = _store(config_path, database_url)
    actor = f"cli:{getpass.getuser()}"
    try:
        updated = (wf.approve if decision == "approve" else wf.reject)(store, workflow_id, actor, text)
    except (wf.TransitionError, wf.NotFound) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{updated.id}: {updated.state} (by {actor})")


@workflows.command("approve")
@_with_store
@click.argument("workflow_id")
@click.option("--comment", default="")
def approve_command(config_path, database_url, workflow_id, comment):
    """Approve a workflow waiting for approval (recorded as cli:<user>)."""
    _decide(config_path, database_url, workflow_id, comment, "approve")


@workflows.command("reject")
@_with_store
@click.argument("workflow_id")
@click.option("--reason", default="")
def reject_command(config_path, database_url, workflow_id, reason):
    """Reject a workflow waiting for approval (recorded as cli:<user>)."""
    _decide(config_path, database_url, workflow_id, reason, "reject")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve())
