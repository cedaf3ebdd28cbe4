"""The `rules-engine` command line."""
from __future__ import annotations

import click

from rules_engine import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rules-engine")
def main() -> None:
    """Rules engine for LLM inference fleets (vLLM, TGI, SGLang) on Prometheus and Alertmanager."""


# Sub-commands (rules_engine/commands/) are registered below, one line each.
from rules_engine.commands.serve import serve, workflows  # noqa: E402
main.add_command(serve)
main.add_command(workflows)
from rules_engine.commands.simulate import simulate  # noqa: E402
main.add_command(simulate)
from rules_engine.commands.backfill import backfill  # noqa: E402
main.add_command(backfill)
from rules_engine.commands.generate import generate  # noqa: E402
main.add_command(generate)
from rules_engine.commands.evaluate import evaluate, record, validate  # noqa: E402
main.add_command(evaluate)
main.add_command(validate)
main.add_command(record)
from rules_engine.commands.monitor import monitor  # noqa: E402
main.add_command(monitor)
from rules_engine.commands.tune import tune  # noqa: E402
main.add_command(tune)


if __name__ == "__main__":  # `python3 -m rules_engine.cli`, how a checkout runs without installing
    main()
