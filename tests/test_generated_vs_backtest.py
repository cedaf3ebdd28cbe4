"""The generated rule files agree with the backtest step for step, for the kinds exact in PromQL.

Random series (random-walk gauges, counters with random increments and a reset) are backfilled into a real
Prometheus and backtested; the backtest's episodes become a `promtool test rules` file
(compile.promtool_tests.backtest_checks) whose inputs are the same raw series, so promtool runs the generated
recording rules and alerts as a rule group evaluates them, and checks at every step that exactly the backtest's
alerts fire, with their labels and annotations.
"""
from __future__ import annotations

import subprocess
import textwrap

import numpy as np
import pandas as pd
import pytest
import yaml

from rules_engine import api
from rules_engine.compile.alerts import AlertLabeler
from rules_engine.compile.promtool_tests import backtest_checks
from rules_engine.kinds import RULE_KINDS
from rules_engine.source.prometheus import PrometheusSource
from rules_engine.spec import load_ruleset
from tests import processes
from tests.conftest import require_binary

pytestmark = pytest.mark.integration

STEP = pd.Timedelta("30s")
POINTS = 240  # 2 h
ORIGIN = pd.Timestamp(0, unit="s", tz="UTC")  # promtool's inputs start at time 0
INSTANCES = ("a:1", "b:1", "c:1")
RULES = textwrap.dedent("""\
    kind: RulePack
    name: random
    keep_labels: [instance]
    rules:
      - name: GaugeMeanHigh
        category: queue_buildup
        signal: max by (instance) (test_gauge)
        stat: mean
        window: 5m
        above: 2
        for: 2m
        keep_firing_for: 1m
        severity: high
        recommendation: r
        annotations: {summary: "{{ $labels.instance }} is high"}
      - name: GaugeP90Low
        category: low_throughput
        signal: max by (instance) (test_gauge)
        stat: p90
        window: 3m
        below: -2
        for: 1m
        severity: medium
        recommendation: r
      - name: RequestRateHigh
        category: error_rate
        signal: sum by (instance) (rate(test_requests_total[2m]))
        above: 1.2
        for: 1m
        severity: low
        recommendation: r
        annotations: {summary: "{{ $labels.instance | toUpper }} takes too many requests"}
""")


def random_series(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    series = {}
    for instance in INSTANCES:
        series[f'test_gauge{{instance="{instance}"}}'] = np.round(np.cumsum(rng.normal(0, 0.4, POINTS)), 3)
        increments = rng.poisson(rng.uniform(0.5, 2.5, POINTS // 40).repeat(40) * 30)
        counter = np.cumsum(increments).astype(float)
        reset = int(rng.integers(POINTS // 4, POINTS))
        counter[reset:] -= counter[reset - 1]  # a restart: the counter starts again from 0
        series[f'test_requests_total{{instance="{instance}"}}'] = counter
    return series


def openmetrics(series: dict[str, np.ndarray]) -> str:
    lines = ["# TYPE test_gauge gauge", "# TYPE test_requests counter"]
    times = np.arange(POINTS) * STEP.total_seconds()
    for name in sorted(series, key=lambda n: not n.startswith("test_gauge")):
        lines += [f"{name} {value:g} {t:.0f}" for value, t in zip(series[name], times)]
    return "\n".join(lines) + "\n# EOF\n"


@pytest.mark.parametrize("seed", [1, 2])
def test_generated_rules_fire_where_the_backtest_says(tmp_path, seed):
    require_binary(processes.PROMTOOL)
    require_binary(processes.PROMETHEUS)
    (tmp_path / "rules.yaml").write_text(RULES)
    ruleset = load_ruleset([str(tmp_path / "rules.yaml")])
    series = random_series(seed)
    (tmp_path / "series.om").write_text(openmetrics(series))
    processes.backfill(tmp_path / "series.om", tmp_path / "data")
    start, end = ORIGIN + pd.Timedelta("10m"), ORIGIN + STEP * (POINTS - 1)
    with processes.running_prometheus(data_dir=tmp_path / "data", retention="36500d") as prometheus, \
            PrometheusSource(prometheus.url) as source:
        backtest = api.backtest(ruleset, source, start, end, STEP)
    assert not backtest.failed
    fired = {finding.rule for finding in backtest.findings}
    assert fired == {"GaugeMeanHigh", "GaugeP90Low", "RequestRateHigh"}, "the random series must make each rule fire"

    generated = api.generate(ruleset)
    (tmp_path / "random.rules.yml").write_text(generated.files["prometheus/random.rules.yml"])
    times = list(pd.date_range(start, end, freq=STEP))
    checks = backtest_checks(AlertLabeler(ruleset, RULE_KINDS, STEP), backtest.findings, times, ORIGIN,
                             sorted(fired))
    values = {name: " ".join(f"{value:g}" for value in points) for name, points in series.items()}
    document = {"rule_files": ["random.rules.yml"], "evaluation_interval": "30s", "tests": [{
        "interval": "30s", "input_series": [{"series": name, "values": text} for name, text in values.items()],
        "alert_rule_test": checks}]}
    (tmp_path / "random.test.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    result = subprocess.run([processes.PROMTOOL, "test", "rules", "random.test.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert sum(len(check["exp_alerts"]) for check in checks) > 20  # the checks are not all "nothing fires"
