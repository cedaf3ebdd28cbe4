"""Click options shared by commands: reaching Prometheus, turned into a PrometheusSource."""
from __future__ import annotations

from typing import Callable

import click

from rules_engine.source.base import SourceError
from rules_engine.source.client import read_secret
from rules_engine.source.prometheus import PrometheusSource


def prometheus_options(command: Callable) -> Callable:
    """Click options for reaching Prometheus; pass the values on with `source_from_options(**options)`."""
    options = [
        click.option("--prometheus", "prometheus_url", metavar="URL",
                     help="Prometheus-compatible API base URL, path prefix included (Mimir: http://host/prometheus)."),
        click.option("--bearer-token-file", type=click.Path(dir_okay=False), help="File holding a bearer token."),
        click.option("--basic-auth", metavar="USER:PASSWORD_FILE", help="Basic auth user and a file with the password."),
        click.option("--ca-file", type=click.Path(dir_okay=False), help="CA certificate(s) to verify the server's TLS."),
        click.option("--insecure-skip-verify", is_flag=True, help="Do not verify the server's TLS certificate."),
        click.option("--header", "headers", multiple=True, metavar="NAME:VALUE",
                     help="Extra HTTP header, repeatable (e.g. X-Scope-OrgID:tenant for Mimir)."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
                     help="Seconds to wait for one request."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def source_from_options(prometheus_url: str | None, bearer_token_file: str | None = None,
                        basic_auth: str | None = None, ca_file: str | None = None, insecure_skip_verify: bool = False,
                        headers: tuple[str, ...] = (), timeout: float = 60.0) -> PrometheusSource:
    """Build the source from `prometheus_options` values; a bad value raises SourceError naming its option."""
    if not prometheus_url:
        raise SourceError("--prometheus URL is required")
    header_map: dict[str, str] = {}
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise SourceError(f"--header {header!r} is not NAME:VALUE")
        header_map[name.strip()] = value.strip()
    auth = None
    if basic_auth is not None:
        user, sep, password_file = basic_auth.partition(":")
        if not sep or not user or not password_file:
            raise SourceError(f"--basic-auth {basic_auth!r} is not USER:PASSWORD_FILE")
        auth = (user, read_secret(password_file, "--basic-auth password file"))
    return PrometheusSource(prometheus_url, bearer_token_file=bearer_token_file, basic_auth=auth, ca_file=ca_file,
                            insecure_skip_verify=insecure_skip_verify, headers=header_map, timeout=timeout)


def fix_options(command: Callable) -> Callable:
    """`--fix` and what goes with it: hand findings to the matching playbooks, as the webhook path does."""
    options = [
        click.option("--fix", is_flag=True, help="Hand the findings to the matching playbooks (workflows in the "
                     "store, waiting for approval like webhook alerts)."),
        click.option("--dry-run", is_flag=True, help="With --fix: run the workflows at once, recording what they "
                     "would do, with no side effects."),
        click.option("--database", "database_url", default="sqlite:///rules-engine.db", show_default=True,
                     help="With --fix: the workflow store (the one `serve` uses)."),
        click.option("--var", "variables", multiple=True, metavar="NAME=VALUE",
                     help="With --fix: a playbook template variable (`vars.NAME`), e.g. orchestrator_url=http://... ."),
    ]
    for option in reversed(options):
        command = option(command)
    return command
