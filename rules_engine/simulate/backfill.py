"""Backfill history into a Prometheus data directory: raw OpenMetrics, then the recording rules over it.

Raw samples go in with `promtool tsdb create-blocks-from openmetrics`. Recording rules go in with `promtool tsdb
create-blocks-from rules`, which evaluates them through the query API of a Prometheus serving the data, so one is
started on a free loopback port over the data directory for the purpose. promtool does not let a rule see what
another rule being backfilled records (a documented limitation), and the generated files chain rules (SLO
windows and error budgets read the 5m ratios), so rules are backfilled in passes by dependency level: a pass
records the rules whose inputs are raw metrics or were recorded in an earlier pass, and its blocks join the data
before the next pass starts. Alerting rules are left out (promtool ignores them).

Timestamps: promtool stamps each value at the group's evaluation time, which is the interval grid shifted by a
per-group phase (a hash of the group's name and file, as Prometheus itself does for live evaluation). Each
recorded value equals the rule's expression evaluated at the value's own timestamp, but queried at a grid time T
the recorded series answers with the evaluation at T - interval + phase, so next to the raw expression at T it
looks up to one interval late. tests/test_backfill_rules.py measures both. Nothing is shifted: a shifted value
would claim to have seen samples that arrived after it was computed.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import promql_parser
import requests
import yaml

MAX_BLOCK_DURATION = "486h"  # promtool re-reads its input per block window: few wide windows load fastest


class BackfillError(RuntimeError):
    """A tool failed; the message carries its output."""


def recorded_inputs(expr: str) -> set[str]:
    """The metric names an expression selects (vector and matrix selectors)."""
    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return None

    promql_parser.transform(promql_parser.parse(expr), post_visit=visit)
    return names


def recording_levels(rule_files: Sequence[Path]) -> list[list[tuple[int, dict]]]:
    """Per pass, (index of the file in `rule_files`, rule-file document): pass k holds the recording rules whose
    inputs were recorded before pass k. Groups keep their name and settings; alerting rules and empty groups are
    dropped."""
    rules = []  # (file index, group, rule)
    for index, path in enumerate(rule_files):
        document = yaml.safe_load(Path(path).read_text()) or {}
        for group in document.get("groups") or []:
            rules += [(index, group, rule) for rule in group.get("rules") or [] if "record" in rule]
    recorded = {rule["record"] for _, _, rule in rules}
    level: dict[int, int] = {}
    pending = {number: recorded_inputs(rule["expr"]) & recorded for number, (_, _, rule) in enumerate(rules)}
    done_names: set[str] = set()
    current = 0
    while pending:
        ready = [n for n, needs in pending.items() if needs <= done_names]
        if not ready:
            cycle = sorted(rules[n][2]["record"] for n in pending)
            raise BackfillError(f"recording rules depend on each other in a cycle: {', '.join(cycle)}")
        for number in ready:
            level[number] = current
            del pending[number]
        # A name is done once every rule recording it is in this pass or earlier.
        done_names = {rules[n][2]["record"] for n in level} - {rules[n][2]["record"] for n in pending}
        current += 1
    passes = []
    for k in range(current):
        files: dict[int, dict[str, dict]] = {}
        for number, (index, group, rule) in enumerate(rules):
            if level[number] != k:
                continue
            groups = files.setdefault(index, {})
            copy = groups.setdefault(group["name"], {key: value for key, value in group.items() if key != "rules"})
            copy.setdefault("rules", []).append(rule)
        passes.append([(index, {"groups": list(groups.values())}) for index, groups in sorted(files.items())])
    return passes


def backfill_openmetrics(paths: Sequence[Path], data_dir: Path, promtool: str = "promtool") -> None:
    """Load OpenMetrics files (with timestamps) into blocks under `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for path in paths:
        _run([promtool, "tsdb", "create-blocks-from", "openmetrics", "--quiet",
              f"--max-block-duration={MAX_BLOCK_DURATION}", str(path), str(data_dir)])


def backfill_rules(rule_files: Sequence[Path], data_dir: Path, start: float, end: float, promtool: str = "promtool",
                   prometheus: str = "prometheus", log=print) -> int:
    """Record the recording rules of `rule_files` over [start, end] into `data_dir`; returns the passes run.

    Every pass writes its part of a file to the same path (the file keeps its name and groups their names), so a
    group keeps one evaluation phase across passes and a rule reading an earlier rule of its group sees that
    rule's value of the same evaluation, as when Prometheus evaluates the group.
    """
    paths = [Path(p) for p in rule_files]
    passes = recording_levels(paths)
    with tempfile.TemporaryDirectory(prefix="backfill-rules-") as tmp:
        root = Path(tmp)
        for number, documents in enumerate(passes, 1):
            files = []
            for index, document in documents:
                files.append(root / f"{index}-{paths[index].name}")
                files[-1].write_text(yaml.safe_dump(document, sort_keys=False))
            blocks = root / f"blocks-{number}"
            with serving_prometheus(data_dir, root, prometheus) as url:
                _run([promtool, "tsdb", "create-blocks-from", "rules", f"--start={int(start)}", f"--end={int(end)}",
                      f"--url={url}", f"--output-dir={blocks}", *map(str, files)])
            for block in blocks.iterdir():
                if (block / "meta.json").is_file():  # promtool leaves an empty wal/ and lock behind, not blocks
                    shutil.move(str(block), data_dir / block.name)
            rules = sum(len(g["rules"]) for _, d in documents for g in d["groups"])
            log(f"backfilled {rules} recording rule(s), pass {number} of {len(passes)}")
    return len(passes)


@contextlib.contextmanager
def serving_prometheus(data_dir: Path, workdir: Path, prometheus: str = "prometheus",
                       timeout: float = 120.0) -> Iterator[str]:
    """A Prometheus over `data_dir` on a free loopback port, scraping nothing; yields its URL, stops it after."""
    config = workdir / "prometheus.yml"
    config.write_text("global: {}\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={data_dir}",
                                 "--storage.tsdb.retention.time=18250d", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not _ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BackfillError(f"prometheus over {data_dir} did not become ready:\n"
                                    + log_path.read_text(errors="replace")[-2000:])
            time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/-/ready", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BackfillError(f"{' '.join(cmd[:4])} failed (exit {result.returncode}):\n"
                            f"{(result.stderr or result.stdout).strip()[-4000:]}")
