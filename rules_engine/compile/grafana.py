"""Grafana dashboards (one per pack, one SLO overview) and provisioning files, built with grafana-foundation-sdk.

Panels read the recorded series the alerts read, so a dashboard shows exactly what the alert compares; each
rule's panel draws the threshold and every severity level as threshold lines, has a unit guessed from what the
signal measures (seconds, ratios), a legend naming the series' kept labels (model_name included) and a plain-text
description (alert templates such as `{{ $labels.instance }}` do not render in a panel description). Firing
alerts of the pack (Prometheus' ALERTS series) are drawn as annotations. Variables: the Prometheus datasource,
then one per kept label of the pack (instance, model_name, ...), all multi-select with "All".
"""
from __future__ import annotations

import hashlib
import json

import pandas as pd
from grafana_foundation_sdk.builders import (
    common,
    dashboard,
    prometheus,
    stat,
    timeseries,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dashboard_models

from rules_engine.compile.prometheus import AlertingRule, CompiledPack
from rules_engine.compile.render import dump_yaml
from rules_engine.promql.burn_windows import slo_catalog
from rules_engine.promql.windows import window_stat_query
from rules_engine.spec.loader import RuleSet
from rules_engine.spec.models import format_duration

DEFAULT_PROMETHEUS_URL = "http://prometheus:9090"
DATASOURCE = "${datasource}"
SEVERITY_ORDER = ("low", "medium", "high", "critical")
SEVERITY_COLORS = {"low": "yellow", "medium": "orange", "high": "red", "critical": "dark-red"}
PANEL_WIDTH, PANEL_HEIGHT = 12, 8
SLO_VARIABLES = ("sloth_service", "sloth_slo")


def uid(name: str) -> str:
    """A stable dashboard uid (Grafana allows 40 characters)."""
    text = f"rules-engine-{name}"
    return text if len(text) <= 40 else f"{text[:33]}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def _datasource_ref():
    return dashboard_models.DataSourceRef(type_val="prometheus", uid=DATASOURCE)


def _matchers(labels: list[str], extra: dict[str, str]) -> str:
    parts = [f'{key}="{value}"' for key, value in extra.items()] + [f'{label}=~"${label}"' for label in labels]
    return "{" + ", ".join(parts) + "}"


def _thresholds(alerts: list[AlertingRule]):
    """Threshold steps for a rule's levels: colors grow with severity in the direction the rule fires."""
    above = ">" in alerts[0].comparison
    # One line per distinct bound, colored by the mildest severity there (a trend's lead-time levels share one).
    mildest: dict[float, str] = {}
    for alert in sorted(alerts, key=lambda a: SEVERITY_ORDER.index(a.severity)):
        mildest.setdefault(alert.bound, alert.severity)
    levels = sorted(mildest.items())
    if above:
        steps = [dashboard_models.Threshold(value=None, color="green")]
        steps += [dashboard_models.Threshold(value=bound, color=SEVERITY_COLORS[severity]) for bound, severity in levels]
    else:
        # Below-rules are worse the lower the value: the base color is the worst level's.
        ordered = sorted(levels, key=lambda level: level[0])
        steps = [dashboard_models.Threshold(value=None, color=SEVERITY_COLORS[ordered[0][1]])]
        for index, (bound, _severity) in enumerate(ordered):
            color = SEVERITY_COLORS[ordered[index + 1][1]] if index + 1 < len(ordered) else "green"
            steps.append(dashboard_models.Threshold(value=bound, color=color))
    return dashboard.ThresholdsConfig().mode(dashboard_models.ThresholdsMode.ABSOLUTE).steps(steps)


def _alert_annotations(rule_pack: str):
    """Firing alerts of one pack (Prometheus' ALERTS series), drawn on every panel of the dashboard."""
    return (dashboard.AnnotationQuery().name("Firing alerts").datasource(_datasource_ref()).enable(True)
            .icon_color("red").expr(f'ALERTS{{alertstate="firing", rule_pack="{rule_pack}"}}'))


def _unit(text: str, alerts: list[AlertingRule]) -> str:
    """Grafana unit of a rule's signal, from what it reads: seconds, a share (0..1), or a plain number."""
    if alerts[0].kind == "regression":  # current / baseline
        return "none"
    if "_seconds" in text and ("histogram_quantile" in text or "_seconds_sum" in text or "_seconds_bucket" in text):
        return "s"
    if "_perc" in text or ("/" in text and all(abs(a.bound) <= 1 for a in alerts)):
        return "percentunit"
    return "short"


def _plain(text: str) -> str:
    """Text for a panel description: alert templates do not render there, so sentences using them are dropped."""
    return " ".join(sentence for sentence in text.split(". ") if "{{" not in sentence).strip()


def _rule_description(rule, alerts: list[AlertingRule]) -> str:
    levels = ", ".join(f"{a.severity} {a.comparison} {a.bound:g}"
                       for a in sorted(alerts, key=lambda a: SEVERITY_ORDER.index(a.severity)))
    held = f" for {format_duration(alerts[0].for_)}" if alerts[0].for_ > pd.Timedelta(0) else ""
    parts = [f"{rule.category}: alerts at {levels}{held}."]
    parts += [_plain(text) for text in (rule.annotations.description, rule.recommendation) if _plain(text)]
    return " ".join(parts)


def pack_dashboard(compiled: CompiledPack, interval: pd.Timedelta) -> dict:
    pack = compiled.pack
    rules = {rule.name: rule for rule in pack.rules}
    by_rule: dict[str, list[AlertingRule]] = {}
    for alert in compiled.alerts:
        by_rule.setdefault(alert.rule, []).append(alert)
    first_record = compiled.recordings[0].record if compiled.recordings else "up"

    board = (dashboard.Dashboard(f"rules-engine / {pack.name}")
             .uid(uid(pack.name))
             .tags(["rules-engine", pack.server, pack.name])
             .description(f"Signals and thresholds of rule pack {pack.name!r} (generated by `rules-engine generate`).")
             .refresh("1m")
             .time("now-6h", "now")
             .timezone("utc")
             .annotation(_alert_annotations(pack.name))
             .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")))
    for label in pack.keep_labels:
        board = board.with_variable(
            dashboard.QueryVariable(label).label(label).datasource(_datasource_ref())
            .query(f'label_values({first_record}{{rule_pack="{pack.name}"}}, {label})')
            .multi(True).include_all(True).all_value(".*"))

    panel_id = 1
    for name, alerts in by_rule.items():
        rule = rules[name]
        first = alerts[0]
        labels = [label for label in pack.keep_labels if label in first.series_labels]
        selector = first.inputs["signal"] + _matchers(labels, {"rule_pack": pack.name})
        legend = " ".join(f"{{{{{label}}}}}" for label in labels) or "{{rule_pack}}"
        source = " ".join(str(value) for value in (getattr(rule, "signal", None), getattr(rule, "histogram", None)))
        panel = (timeseries.Panel().id(panel_id).title(name).datasource(_datasource_ref())
                 .description(_rule_description(rule, alerts)).unit(_unit(source, alerts))
                 .span(PANEL_WIDTH).height(PANEL_HEIGHT)
                 .with_target(prometheus.Dataquery().expr(selector).legend_format(legend).ref_id("A"))
                 .thresholds(_thresholds(alerts))
                 .thresholds_style(common.GraphThresholdsStyleConfig().mode(common_models.GraphThresholdsStyleMode.LINE)))
        if getattr(rule, "stat", None):
            stat_expr = window_stat_query(selector, rule.stat, rule.window, interval)
            panel = panel.with_target(prometheus.Dataquery().expr(stat_expr)
                                      .legend_format(f"{rule.stat} {format_duration(rule.window)} {legend}").ref_id("B"))
        board = board.with_panel(panel)
        panel_id += 1
    return _encode(board)


def _burn_thresholds(page_factor: float | None):
    """Burn rate 1 spends the budget exactly over the period; the fastest page fires at `page_factor`."""
    steps = [dashboard_models.Threshold(value=None, color="green"), dashboard_models.Threshold(value=1, color="orange")]
    if page_factor is not None:
        steps.append(dashboard_models.Threshold(value=page_factor, color="red"))
    return dashboard.ThresholdsConfig().mode(dashboard_models.ThresholdsMode.ABSOLUTE).steps(steps)


def _budget_thresholds():
    """Budget remaining: red once spent, orange under a quarter left."""
    return (dashboard.ThresholdsConfig().mode(dashboard_models.ThresholdsMode.ABSOLUTE).steps([
        dashboard_models.Threshold(value=None, color="red"), dashboard_models.Threshold(value=0, color="orange"),
        dashboard_models.Threshold(value=0.25, color="green")]))


def slo_dashboard(interval: pd.Timedelta, ruleset: RuleSet | None = None) -> dict:
    """Budget and burn of every SLO, on the Sloth series names (so Sloth's own dashboards work on them too)."""
    slos = list(ruleset.slos) if ruleset is not None else []
    grouped = [label for slo in slos for label in slo.group_by]
    extra = sorted(set(grouped), key=grouped.index)  # e.g. model_name: one series per model per SLO
    factors = {round(max(pair.factor(slo.period) for pair in slo_catalog(slo).pairs), 6) for slo in slos}
    page_factor = factors.pop() if len(factors) == 1 else None  # one line only where every SLO shares it
    board = (dashboard.Dashboard("rules-engine / SLO overview").uid(uid("slo-overview"))
             .tags(["rules-engine", "slo"]).refresh("1m").time("now-7d", "now").timezone("utc")
             .description("Error budget and burn rates of the SLOs compiled by `rules-engine generate`.")
             .annotation(_alert_annotations("slo"))
             .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")))
    for label in SLO_VARIABLES:
        board = board.with_variable(
            dashboard.QueryVariable(label).label(label.replace("sloth_", "")).datasource(_datasource_ref())
            .query(f"label_values(slo:objective:ratio, {label})").multi(True).include_all(True).all_value(".*"))
    selector = _matchers(list(SLO_VARIABLES), {})
    legend = " ".join(["{{sloth_service}}/{{sloth_slo}}", *(f"{{{{{label}}}}}" for label in extra)])
    burn = _burn_thresholds(page_factor)
    panels = [
        ("Error budget remaining (period)", stat.Panel(), f"slo:period_error_budget_remaining:ratio{selector}",
         "percentunit", _budget_thresholds(), "Share of the period's error budget left; below 0 the SLO is missed."),
        ("Objective", stat.Panel(), f"slo:objective:ratio{selector}", "percentunit", None,
         "The target share of good events."),
        ("Current burn rate (5m)", timeseries.Panel(), f"slo:current_burn_rate:ratio{selector}", "none", burn,
         "How fast the budget burns now: 1 spends it exactly over the period"
         + (f"; the fastest page fires above {page_factor:g}." if page_factor else ".")),
        ("Period burn rate", timeseries.Panel(), f"slo:period_burn_rate:ratio{selector}", "none", burn,
         "Burn rate over the whole period: above 1 the SLO is missed at this pace."),
        ("SLI error ratio (5m)", timeseries.Panel(), f"slo:sli_error:ratio_rate5m{selector}", "percentunit", None,
         "Share of bad events over the last 5 minutes."),
        ("Error budget", timeseries.Panel(), f"slo:error_budget:ratio{selector}", "percentunit", None,
         "The share of events allowed to be bad (1 - objective)."),
    ]
    for panel_id, (title, panel, expr, unit, thresholds, description) in enumerate(panels, start=1):
        panel = (panel.id(panel_id).title(title).datasource(_datasource_ref()).unit(unit).description(description)
                 .span(PANEL_WIDTH).height(PANEL_HEIGHT)
                 .with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id("A")))
        if thresholds is not None:
            panel = panel.thresholds(thresholds)
            if isinstance(panel, timeseries.Panel):
                panel = panel.thresholds_style(
                    common.GraphThresholdsStyleConfig().mode(common_models.GraphThresholdsStyleMode.LINE))
        board = board.with_panel(panel)
    return _encode(board)


def _encode(board) -> dict:
    return json.loads(json.dumps(board.build(), cls=JSONEncoder, sort_keys=True))


def dashboards(packs: list[CompiledPack], ruleset: RuleSet, interval: pd.Timedelta) -> dict[str, dict]:
    found = {f"{compiled.pack.name}.json": pack_dashboard(compiled, interval) for compiled in packs if compiled.alerts}
    if ruleset.slos:
        found["slo-overview.json"] = slo_dashboard(interval, ruleset)
    return found


def panel_queries(document: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every panel target: what a test runs against Prometheus."""
    return [(panel.get("title", ""), target["expr"]) for panel in document.get("panels", [])
            for target in panel.get("targets", []) if target.get("expr")]


def provisioning(prometheus_url: str = DEFAULT_PROMETHEUS_URL) -> dict[str, str]:
    """Grafana provisioning: the Prometheus datasource and a file provider for the generated dashboards."""
    datasources = {"apiVersion": 1, "datasources": [{
        "name": "Prometheus", "type": "prometheus", "uid": "prometheus", "access": "proxy",
        "url": prometheus_url, "isDefault": True, "editable": False}]}
    providers = {"apiVersion": 1, "providers": [{
        "name": "rules-engine", "orgId": 1, "folder": "rules-engine", "type": "file", "disableDeletion": False,
        "allowUiUpdates": False, "updateIntervalSeconds": 60,
        "options": {"path": "/var/lib/grafana/dashboards/rules-engine", "foldersFromFilesStructure": False}}]}
    return {"datasources/prometheus.yml": dump_yaml(datasources), "dashboards/rules-engine.yml": dump_yaml(providers)}

