"""The compile stage: RuleSet → Prometheus rule files, promtool tests, Alertmanager config, Grafana dashboards.

`generate.generate(ruleset, kinds, options)` builds every file as text (pure, deterministic);
`generate.write_outputs` writes them. What each rule means in PromQL comes from rules_engine/promql, which the
engines share; nothing here imports the engines. See README.md.
"""
