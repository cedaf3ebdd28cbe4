"""`rules-engine monitor` without the live loop: the tail-fetching cache, the selection of what it evaluates (and
what `generate --monitor` leaves out), the config file, and rounds and pushes when Prometheus or Alertmanager
are unreachable."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import yaml

from rules_engine import api
from rules_engine.compile.generate import GenerateOptions
from rules_engine.evaluate.findings import Finding
from rules_engine.kinds import RULE_KINDS
from rules_engine.monitor.alertmanager import Alertmanager
from rules_engine.monitor.cache import CachingSource
from rules_engine.monitor.config import MonitorConfigError, load_config
from rules_engine.monitor.metrics import monitor_metrics
from rules_engine.monitor.rounds import Monitor, TrackedAlert, monitored
from rules_engine.promql.slo import slo_exact_in_promql
from rules_engine.source.frame import RangeFrame, evaluation_grid
from rules_engine.source.prometheus import PrometheusSource
from rules_engine.spec import load_ruleset
from tests import processes

STEP = pd.Timedelta("30s")
T0 = pd.Timestamp("2026-01-01T00:00:00Z")


class History:
    """A Source over a table of samples the test edits (series appear, vanish, and late samples revise the tail)."""

    def __init__(self) -> None:
        grid = evaluation_grid(T0, T0 + 200 * STEP, STEP)
        rng = np.random.default_rng(3)
        self.samples = {"a": pd.Series(rng.normal(size=len(grid)), index=grid),
                        "b": pd.Series(rng.normal(size=len(grid)), index=grid)}
        self.samples["b"].iloc[120:] = np.nan  # b stops reporting
        self.samples["c"] = pd.Series(np.nan, index=grid)
        self.samples["c"].iloc[150:] = 1.0  # c starts
        self.asked: list[tuple[pd.Timestamp, pd.Timestamp]] = []

    def query_range(self, query, start, end, step) -> RangeFrame:
        self.asked.append((start, end))
        grid = evaluation_grid(start, end, step)
        columns = {name: values.reindex(grid) for name, values in sorted(self.samples.items())}
        present = [name for name, values in columns.items() if values.notna().any()]
        values = pd.DataFrame({i: columns[name].to_numpy() for i, name in enumerate(present)}, index=grid)
        values.columns = pd.RangeIndex(len(present))
        return RangeFrame(query, values, pd.DataFrame({"instance": present}))


def same(left: RangeFrame, right: RangeFrame) -> None:
    assert left.labels.to_dict("records") == right.labels.to_dict("records")
    pd.testing.assert_frame_equal(left.values, right.values)


def test_cache_fetches_the_tail_and_equals_a_fresh_query():
    history = History()
    cache = CachingSource(history, refetch=pd.Timedelta("1m"))
    for round_end in range(100, 190, 7):  # series b vanishes, c appears along the way
        end = T0 + round_end * STEP
        start = end - 40 * STEP
        same(cache.query_range("q", start, end, STEP), history.query_range("q", start, end, STEP))
    tails = history.asked[2::2]  # every other request was the fresh comparison
    assert all(end - start == 8 * STEP for start, end in tails)  # 7 new points + the last 1m (2 points) again
    assert cache.fetched_points == 41 + 12 * 9


def test_cache_picks_up_late_samples_within_refetch():
    history = History()
    cache = CachingSource(history, refetch=pd.Timedelta("1m"))
    end = T0 + 100 * STEP
    cache.query_range("q", end - 40 * STEP, end, STEP)
    history.samples["a"].iloc[99] = 42.0  # a late scrape revises a point the last round read
    frame = cache.query_range("q", end - 39 * STEP, end + STEP, STEP)
    assert frame.values.loc[T0 + 99 * STEP, 0] == 42.0


def test_cache_fetches_whole_when_the_range_moves_back_or_off_grid():
    history = History()
    cache = CachingSource(history)
    end = T0 + 100 * STEP
    cache.query_range("q", end - 40 * STEP, end, STEP)
    cache.query_range("q", end - 60 * STEP, end, STEP)
    cache.query_range("q", end - 40 * STEP + pd.Timedelta("1s"), end, STEP)
    assert history.asked[1:] == [(end - 60 * STEP, end), (end - 40 * STEP + pd.Timedelta("1s"), end)]


def test_selection_is_what_promql_cannot_express_and_generate_monitor_leaves_it_out():
    ruleset = load_ruleset(["rules"])
    names = monitored(ruleset, RULE_KINDS)
    kinds = {rule.name: rule.type for _, rule in ruleset.rules()}
    slos = {slo.name: slo for slo in ruleset.slos}
    assert {kinds.get(name, "slo") for name in names} == {"trend", "regression", "slo"}
    assert all(slos[name].sli.type == "timeslices" for name in names if name in slos)
    assert set(monitored(ruleset, RULE_KINDS, everything=True)) == set(kinds) | set(slos)
    # A kind is exact exactly when none of its shipped rules' alerts leaves a check to the engine.
    for pack, rule in ruleset.rules():
        condition = RULE_KINDS[rule.type].alert_condition(rule, pack, STEP)
        if RULE_KINDS[rule.type].exact_in_promql:
            assert not condition.engine_only, rule.name

    full, for_monitor = api.generate(ruleset), api.generate(ruleset, GenerateOptions(monitor=True, tests=True))
    for path, text in for_monitor.files.items():
        if not path.startswith("prometheus/"):
            continue
        rules = [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
        alerts = {r["alert"] for r in rules if "alert" in r}
        assert not alerts & set(names), path
        full_rules = [r for g in yaml.safe_load(full.files[path])["groups"] for r in g["rules"]]
        assert [r for r in full_rules if "record" in r] == [r for r in rules if "record" in r]  # recordings stay
        assert {r["alert"] for r in full_rules if "alert" in r} - alerts <= set(names)
    assert any("left to `rules-engine monitor`" in note for note in for_monitor.notes)
    assert not any(name in text for path, text in for_monitor.files.items() if path.startswith("tests/")
                   for name in names if f"alertname: {name}\n" in text)
    assert [slo.name for slo in ruleset.slos if not slo_exact_in_promql(slo)]


def test_config_file_errors_name_line_and_field(tmp_path):
    path = tmp_path / "monitor.yml"
    path.write_text("prometheus: http://p:9090\nalertmanager: http://a:9093\ninterval: soon\nresned: 1m\n")
    with pytest.raises(MonitorConfigError) as error:
        load_config(str(path))
    assert f"{path}:3: interval:" in str(error.value)
    assert f"{path}:4: resned: unknown key" in str(error.value)
    path.write_text("prometheus: http://p:9090\nalertmanager: [http://a:9093, http://b:9093]\ninterval: 15s\n")
    config = load_config(str(path))
    assert config.alertmanager == ["http://a:9093", "http://b:9093"] and config.interval == "15s"
    path.write_text("prometheus: http://p:9090\ninterval: 15s\ninterval: 1h\n")  # which one was meant?
    with pytest.raises(MonitorConfigError) as error:
        load_config(str(path))
    assert f"{path}:3:" in str(error.value) and "interval" in str(error.value)


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rules_engine.cli", "monitor", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def test_cli_refuses_bad_settings_with_exit_2(tmp_path):
    (tmp_path / "bad.yml").write_text("alertmanager: [http://a:9093]\ninterval: 0s\n")
    result = run_cli("--config", str(tmp_path / "bad.yml"), "--rules", "rules")
    assert result.returncode == 2 and "bad.yml:2: interval: " in result.stderr
    result = run_cli("--rules", "rules/vllm.yaml", "--prometheus", "http://127.0.0.1:1", "--alertmanager",
                     "http://127.0.0.1:1")
    assert result.returncode == 2 and "nothing for the monitor to evaluate" in result.stderr
    result = run_cli("--rules", "rules", "--prometheus", "http://127.0.0.1:1")
    assert result.returncode == 2 and "--alertmanager URL is required" in result.stderr


TREND = textwrap.dedent("""\
    kind: RulePack
    name: t
    keep_labels: [instance]
    rules:
      - name: Climb
        type: trend
        category: queue_buildup
        signal: max by (instance) (x)
        window: 10m
        slope_above: 1
        per: 1m
        severity: high
        recommendation: r
""")


def test_rounds_and_pushes_survive_unreachable_prometheus_and_alertmanager(tmp_path):
    (tmp_path / "rules.yaml").write_text(TREND)
    ruleset = load_ruleset([str(tmp_path / "rules.yaml")])
    metrics = monitor_metrics()
    down = f"http://127.0.0.1:{processes.free_port()}"
    with PrometheusSource(down, timeout=2, retries=0) as source:
        live = Monitor(ruleset, CachingSource(source), ["Climb"], STEP, RULE_KINDS, metrics=metrics)
        result = live.round(T0)
    assert list(result.failed) == ["Climb"] and not result.episodes
    assert metrics.registry.get_sample_value("rules_engine_monitor_rule_evaluation_failures_total",
                                             {"rule": "Climb"}) == 1
    # An alert the rounds hold is offered to an Alertmanager until it accepts it.
    finding = Finding("Climb", "trend", "queue_buildup", "high", {"instance": "i"}, T0, None, 2.0, 1.0, "r", None,
                      pack="t")
    labels, annotations = live.labeler.alert(finding)
    assert labels == {"instance": "i", "rule_pack": "t", "severity": "high", "category": "queue_buildup",
                      "alertname": "Climb"}
    generated = api.generate(ruleset).packs[0].alerts[0].annotations
    assert "fit_filter" in generated and "fit_filter" not in annotations  # the engine does check the fit
    assert {k: v for k, v in generated.items() if k != "fit_filter"} == annotations
    live.alerts[tuple(sorted(labels.items()))] = TrackedAlert(labels, annotations, T0, version=1)
    target = Alertmanager(down, timeout=2)
    errors = live.send([target], T0)
    assert list(errors) == [target.name]
    assert metrics.registry.get_sample_value("rules_engine_monitor_alert_send_failures_total",
                                             {"alertmanager": target.name}) == 1
    assert len(live.due(target.name, T0 + STEP)) == 1
    payload = live.payload(next(iter(live.alerts.values())), T0)
    assert payload["startsAt"] == "2026-01-01T00:00:00Z" and payload["endsAt"] == "2026-01-01T00:04:00Z"


def test_cli_from_config_keeps_running_while_prometheus_is_down_and_stops_on_sigterm(tmp_path):
    (tmp_path / "rules.yaml").write_text(TREND)
    down = f"http://127.0.0.1:{processes.free_port()}"
    (tmp_path / "monitor.yml").write_text(yaml.safe_dump({
        "rules": [str(tmp_path / "rules.yaml")], "prometheus": down, "alertmanager": [down], "interval": "1s",
        "timeout": 1}))
    log_path = tmp_path / "monitor.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rules_engine.cli", "monitor", "--config",
                                 str(tmp_path / "monitor.yml")], stdout=log, stderr=subprocess.STDOUT)
    try:
        processes.wait_for("two failed rounds", lambda: log_path.read_text().count("1 failed") >= 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert "rule Climb not evaluated" in text and "monitor: stopped" in text


def test_the_cli_leaves_prometheus_client_unimported_until_a_command_runs():
    # prometheus_client fixes at its first import whether metrics go to per-process files; `serve` sets
    # PROMETHEUS_MULTIPROC_DIR before it, so importing the CLI (every command module) must not import it.
    probe = "import sys, rules_engine.cli; print('prometheus_client' in sys.modules)"
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "False"
