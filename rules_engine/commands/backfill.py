"""`rules-engine backfill`: load history into a Prometheus data directory, recording rules included."""
from __future__ import annotations

import json
from pathlib import Path

import click

from rules_engine.simulate.backfill import BackfillError, backfill_openmetrics, backfill_rules
from rules_engine.simulate.timeparse import parse_time


def _blocks_range(data_dir: Path) -> tuple[float, float] | None:
    """[min, max] unix seconds over the TSDB blocks in `data_dir` (from their meta.json)."""
    metas = [json.loads(meta.read_text()) for meta in data_dir.glob("*/meta.json")]
    if not metas:
        return None
    return min(m["minTime"] for m in metas) / 1000, max(m["maxTime"] for m in metas) / 1000


@click.command("backfill")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Prometheus data directory (--storage.tsdb.path) to add blocks to; stop Prometheus first.")
@click.option("--openmetrics", "openmetrics", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="OpenMetrics file with timestamps to load first (repeatable), e.g. from `rules-engine simulate`.")
@click.option("--rules", "rule_paths", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Prometheus rule file, or a folder of *.yml (repeatable): its recording rules are evaluated over "
                   "the history and stored, in passes when rules read other rules.")
@click.option("--start", default=None, help="Start of the rule backfill (RFC 3339 / unix seconds; default: the "
                                            "oldest block's start).")
@click.option("--end", default=None, help="End of the rule backfill (default: the newest block's end).")
@click.option("--promtool", default="promtool", show_default=True, help="promtool binary.")
@click.option("--prometheus", default="prometheus", show_default=True,
              help="prometheus binary, run on a loopback port over --data while the rules are evaluated.")
def backfill(data_dir, openmetrics, rule_paths, start, end, promtool, prometheus) -> None:
    """Load OpenMetrics history into --data, then record the --rules' recording rules over it, so dashboards and
    alerts built on recorded series have history from the first minute."""
    files = sorted(p for path in rule_paths for p in ([path] if path.is_file() else sorted(path.glob("*.yml"))))
    if rule_paths and not files:
        raise click.BadParameter(f"no *.yml rule file in {', '.join(map(str, rule_paths))}", param_hint="--rules")
    try:
        if openmetrics:
            backfill_openmetrics(list(openmetrics), data_dir, promtool)
            click.echo(f"loaded {', '.join(map(str, openmetrics))} into {data_dir}")
        if not files:
            return
        known = _blocks_range(data_dir)
        if known is None and (start is None or end is None):
            raise click.UsageError(f"{data_dir} holds no blocks: give --start and --end, or --openmetrics")
        first = parse_time(start) if start is not None else known[0]
        last = parse_time(end) if end is not None else known[1]
        backfill_rules(files, data_dir, first, last, promtool, prometheus, log=click.echo)
    except (BackfillError, ValueError, OSError) as error:
        raise click.ClickException(str(error)) from None
