"""The compile stage: RuleSet → Prometheus rule files, promtool tests, Alertmanager config, Grafana dashboards.

`generate.generate(ruleset, options)` builds every file as text (pure, deterministic); `generate.write_outputs`
writes them; `promql_backtest.run_promql_backtest` backtests the compiled alerts in Prometheus. See README.md.
"""
