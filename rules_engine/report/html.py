"""The HTML report: one self-contained file (plotly.js inlined, no network) with the backtest's plots.

- Fleet overview: instances × categories, coloured by the worst severity found (the cell says how many alerts),
  beside each instance's health score.
- Per rule and series that fired: the value the rule compared over the range, its threshold per severity, and
  each firing interval shaded by its severity. Signals come from `backtest(..., keep_signals=True)`; a rule whose
  comparison ran in Prometheus has samples only where they were past the threshold, and the plot says so.
- Per SLO group: the error budget remaining over the range (the burn-down), burn alerts shaded.

`render_html(backtest, source)` returns the page as a string, for the CLI (`evaluate --report`) and the server;
`render_tune_html(sweep, source)` the curves of a threshold sweep (`tune --report`).
Labels are data: every text is escaped, nothing is evaluated.
"""
from __future__ import annotations

import html
from collections import Counter, defaultdict
from dataclasses import dataclass

import jinja2
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from rules_engine.evaluate.engine import Backtest, RuleOutcome
from rules_engine.evaluate.findings import SEVERITIES, Finding, severity_rank
from rules_engine.evaluate.slo import SLOResult
from rules_engine.evaluate.tune import Sweep
from rules_engine.spec.models import CATEGORIES, format_duration
from rules_engine.spec.times import rfc3339

SEVERITY_COLOURS = {"low": "#17becf", "medium": "#e6b800", "high": "#d62fbf", "critical": "#d62728"}
MAX_POINTS = 1500  # per plotted line: a week at 30 s (20,160 steps) is reduced to its extremes per bucket
MAX_PLOTS = 40  # rule × series plots, most severe first; the rest are listed
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
FLEET = "(fleet)"


@dataclass
class _Alert:
    """The findings of one rule on one series: one plot."""

    outcome: RuleOutcome | None
    labels: dict[str, str]
    findings: list[Finding]


# Where a page rendered with `plotlyjs=PLOTLYJS_SLOT` takes plotly.js, filled by `with_plotlyjs` when it is served:
# a stored report (an analysis job's) then holds its own data only, not 4.8 MB of the same library each time.
PLOTLYJS_SLOT = "/* rules-engine: plotly.js */"


def render_html(backtest: Backtest, source: str, title: str = "rules-engine backtest",
                max_points: int = MAX_POINTS, max_plots: int = MAX_PLOTS, plotlyjs: str | None = None) -> str:
    """The whole report page for a backtest (run it with keep_signals=True to get the signal plots).

    `plotlyjs`: the library inlined in the page (None: plotly's own, so the file opens offline as it is)."""
    alerts = _alerts(backtest)
    health = backtest.health()
    plots = [_alert_figure(alert, backtest, max_points) for alert in alerts[:max_plots]]
    slo_results = [result for result in backtest.slos if not result.error]
    page = _TEMPLATE.render(
        title=title, source=source, start=rfc3339(backtest.start), end=rfc3339(backtest.end),
        step=format_duration(backtest.step), plotlyjs=get_plotlyjs() if plotlyjs is None else plotlyjs,
        style=_STYLE, overall=None if health.overall is None else f"{health.overall:.1f}",
        counts=_severity_counts(backtest.findings), rules=len(backtest.outcomes), legend=SEVERITY_COLOURS.items(),
        fleet=_div(_fleet_figure(backtest)) if backtest.findings or backtest.instances else None,
        plots=[_div(figure) for figure in plots], more=[_alert_name(alert) for alert in alerts[max_plots:]],
        slos=[_slo_row(result) for result in slo_results],
        burn_downs=[_div(_burn_down_figure(result, max_points)) for result in slo_results
                    if result.burn_down is not None][:max_plots],
        failed=[(o.rule, o.error) for o in backtest.failed] + [(f"SLO {r.slo}", r.error) for r in backtest.slos if r.error],
    )
    return page


def with_plotlyjs(page: str) -> str:
    """A page rendered with `plotlyjs=PLOTLYJS_SLOT`, self-contained again (the slot is in <head>, before any data)."""
    return page.replace(PLOTLYJS_SLOT, get_plotlyjs(), 1)


def _alerts(backtest: Backtest) -> list[_Alert]:
    """Rule findings grouped by rule and series, in the backtest's order (most severe first)."""
    outcomes = {outcome.rule: outcome for outcome in backtest.outcomes}
    grouped: dict[tuple, _Alert] = {}
    for finding in backtest.findings:
        if finding.kind == "slo":
            continue  # plotted on their SLO's burn-down
        key = (finding.rule, tuple(sorted(finding.labels.items())))
        if key not in grouped:
            grouped[key] = _Alert(outcomes.get(finding.rule), finding.labels, [])
        grouped[key].findings.append(finding)
    return list(grouped.values())


def _alert_name(alert: _Alert) -> str:
    first = alert.findings[0]
    return f"{first.rule} on {_labels_text(alert.labels)}"


def _labels_text(labels: dict[str, str]) -> str:
    head = labels.get("instance", "")
    rest = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "instance")
    return " ".join(part for part in (head, f"{{{rest}}}" if rest else "") if part) or "(all series)"


def _series_column(signal, labels: dict[str, str]) -> int | None:
    """The signal frame's column whose labels are the finding's (the finding drops __name__)."""
    table = signal.labels.drop(columns=["__name__"], errors="ignore")
    if table.empty:
        return None
    match = np.ones(len(table), dtype=bool)
    for name in table.columns:
        match &= table[name].to_numpy() == labels.get(name, "")
    found = np.flatnonzero(match)
    return int(found[0]) if len(found) else None


def downsample(values: pd.Series, max_points: int, largest: bool = True) -> pd.Series:
    """At most `max_points` points keeping each bucket's extreme (peaks survive), NaN where a bucket has none."""
    if len(values) <= max_points:
        return values
    size = int(np.ceil(len(values) / max_points))
    padded = np.full(size * int(np.ceil(len(values) / size)), np.nan)
    padded[:len(values)] = values.to_numpy(dtype=float)
    buckets = padded.reshape(-1, size)
    reduce = np.fmax if largest else np.fmin
    extremes = reduce.reduce(buckets, axis=1)  # fmax/fmin skip NaN; an all-NaN bucket stays NaN
    return pd.Series(extremes, index=values.index[::size][:len(extremes)])


def _alert_figure(alert: _Alert, backtest: Backtest, max_points: int) -> go.Figure:
    first = alert.findings[0]
    outcome = alert.outcome
    above = first.details.get("direction") != "below"
    figure = go.Figure()
    note = ""
    signal = outcome.signal if outcome is not None else None
    column = _series_column(signal, alert.labels) if signal is not None else None
    if column is not None:
        series = downsample(signal.values[column], max_points, largest=above)
        figure.add_trace(_line(series, "value", "#1f77b4"))
        if outcome.signal_filtered:
            note = " (samples only where past the threshold: the comparison ran in Prometheus)"
    else:
        note = " (signal not kept: shaded intervals only)"
    levels = outcome.levels if outcome is not None and outcome.levels else [(first.severity, first.threshold)]
    for severity, bound in _distinct_levels(levels):
        # A legend entry per level: annotations on the lines would pile up where a ladder's levels are close.
        figure.add_trace(go.Scatter(x=[backtest.start, backtest.end], y=[bound, bound], mode="lines",
                                    name=f"{severity} {bound:.4g}", hoverinfo="name",
                                    line={"color": SEVERITY_COLOURS[severity], "dash": "dash", "width": 1}))
    for finding in alert.findings:
        end = finding.end if finding.end is not None else backtest.end
        figure.add_vrect(x0=finding.start, x1=end, fillcolor=SEVERITY_COLOURS[finding.severity], opacity=0.22,
                         line_width=0)
    worst = max(alert.findings, key=lambda f: severity_rank(f.severity)).severity
    heading = (f"<b>{html.escape(first.rule)}</b> [{html.escape(first.category)}] on "
               f"{html.escape(_labels_text(alert.labels))}<br><sup>{len(alert.findings)} firing interval(s), worst "
               f"{worst}{html.escape(note)}</sup>")
    figure.update_layout(title={"text": heading, "font": {"size": 14}}, height=300, template="plotly_white",
                         legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom"},
                         margin={"l": 60, "r": 20, "t": 80, "b": 40}, xaxis={"range": [backtest.start, backtest.end]})
    return figure


def _line(series: pd.Series, name: str, colour: str) -> go.Scatter:
    """A line over a regular grid: its start and spacing instead of every timestamp (a third of the bytes)."""
    spacing = (series.index[1] - series.index[0]) if len(series) > 1 else pd.Timedelta(0)
    return go.Scatter(x0=series.index[0], dx=spacing.total_seconds() * 1000, y=series.to_numpy(dtype=float),
                      mode="lines", name=name, line={"color": colour, "width": 1.2}, connectgaps=False)


def _distinct_levels(levels: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """One line per bound: a ladder level clamped to the threshold draws once, as its lowest severity."""
    seen: dict[float, str] = {}
    for severity, bound in levels:
        seen.setdefault(bound, severity)
    return [(severity, bound) for bound, severity in seen.items()]


def _fleet_figure(backtest: Backtest) -> go.Figure:
    """Instances × categories by worst severity (cell text: alerts), and each instance's health score."""
    health = backtest.health()
    worst: dict[tuple[str, str], int] = defaultdict(int)
    count: Counter = Counter()
    for finding in backtest.findings:
        key = (finding.instance or FLEET, finding.category)
        worst[key] = max(worst[key], severity_rank(finding.severity) + 1)
        count[key] += 1
    instances = sorted(set(backtest.instances) | {instance for instance, _ in worst})
    instances.sort(key=lambda name: (health.instances[name].score if name in health.instances else 100.0, name))
    categories = [c for c in CATEGORIES if any(k[1] == c for k in worst) or health.categories.get(c) is not None]
    z = [[worst.get((i, c), 0) for c in categories] for i in instances]
    text = [[str(count[(i, c)]) if count[(i, c)] else "" for c in categories] for i in instances]
    scale = ["#f2f2f2"] + [SEVERITY_COLOURS[s] for s in SEVERITIES]
    colours = [[edge, colour] for index, colour in enumerate(scale) for edge in (index / 5, (index + 1) / 5)]
    figure = make_subplots(rows=1, cols=2, shared_yaxes=True, column_widths=[0.78, 0.22], horizontal_spacing=0.02,
                           subplot_titles=("instances × categories", "health score"))
    figure.add_trace(go.Heatmap(
        z=z, x=categories, y=[html.escape(i) for i in instances], text=text, texttemplate="%{text}",
        zmin=0, zmax=5, colorscale=colours, xgap=2, ygap=2, showscale=False,  # the page's chips are its legend
        hovertemplate="%{y}<br>%{x}: %{text} alert(s)<extra></extra>"), row=1, col=1)
    scores = [health.instances[i].score if i in health.instances else None for i in instances]
    figure.add_trace(go.Bar(x=scores, y=[html.escape(i) for i in instances], orientation="h",
                            marker={"color": [_score_colour(s) for s in scores]},
                            text=[f"{s:.0f}" if s is not None else "n/a" for s in scores], textposition="auto",
                            hovertemplate="%{y}: %{x:.1f}<extra></extra>"), row=1, col=2)
    figure.update_xaxes(range=[0, 100], row=1, col=2)
    figure.update_layout(height=max(260, 60 + 28 * len(instances)), showlegend=False, template="plotly_white",
                         margin={"l": 140, "r": 20, "t": 50, "b": 40})
    return figure


def _score_colour(score: float | None) -> str:
    if score is None:
        return "#bbbbbb"
    return "#2ca02c" if score >= 90 else "#e6b800" if score >= 70 else "#d62728"


def _burn_down_figure(result: SLOResult, max_points: int) -> go.Figure:
    remaining = downsample(result.burn_down * 100.0, max_points, largest=False)
    figure = go.Figure(_line(remaining, "budget remaining",
                             "#2ca02c" if (result.budget_remaining or 0) >= 0 else "#d62728"))
    figure.add_hline(y=0, line={"color": "#555", "dash": "dot", "width": 1}, annotation_text="budget spent",
                     annotation_position="bottom left")
    for finding in result.findings:
        end = finding.end if finding.end is not None else result.burn_down.index[-1]
        figure.add_vrect(x0=finding.start, x1=end, fillcolor=SEVERITY_COLOURS[finding.severity], opacity=0.22,
                         line_width=0)
    group = ", ".join(f"{k}={v}" for k, v in sorted(result.labels.items())) or "(all)"
    heading = (f"<b>{html.escape(result.slo)}</b> {html.escape(group)}<br><sup>error budget remaining over "
               f"{format_duration(result.period)} (objective {result.objective:g}%); burn alerts shaded</sup>")
    figure.update_layout(title={"text": heading, "font": {"size": 14}}, height=280, showlegend=False,
                         template="plotly_white", yaxis={"ticksuffix": "%"}, margin={"l": 60, "r": 20, "t": 70, "b": 40})
    return figure


def _slo_row(result: SLOResult) -> dict[str, str]:
    def percent(value: float | None, digits: int) -> str:
        return "n/a" if value is None else f"{value * 100:.{digits}f}%"

    worst = result.worst_burn
    return {
        "slo": result.slo, "group": ", ".join(f"{k}={v}" for k, v in sorted(result.labels.items())) or "(all)",
        "objective": f"{result.objective:g}%", "attained": percent(result.attainment, 3),
        "budget": percent(result.budget_remaining, 1),
        "overspent": result.budget_remaining is not None and result.budget_remaining < 0,
        "burn": f"{worst['value']:.2f}x over {worst['window']}" if worst and worst.get("value") is not None else "n/a",
    }


def _severity_counts(findings: list[Finding]) -> list[tuple[str, int, str]]:
    counts = Counter(f.severity for f in findings)
    return [(s, counts[s], SEVERITY_COLOURS[s]) for s in reversed(SEVERITIES) if counts[s]]


def render_tune_html(sweep: Sweep, source: str) -> str:
    """Alerts per day, and with incidents the share detected and the median delay, against the threshold."""
    scored = bool(sweep.incidents)
    rows = 3 if scored else 1
    titles = ["alerts per day (fleet)"] + (["incidents detected (%)", "median delay to first alert (min)"] if scored
                                           else [])
    figure = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.07, subplot_titles=titles)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]
    for index, for_ in enumerate(sorted({c.for_ for c in sweep.candidates})):
        chosen = sorted((c for c in sweep.candidates if c.for_ == for_), key=lambda c: c.threshold)
        x = [c.threshold for c in chosen]
        style = {"color": palette[index % len(palette)]}
        name = f"for {format_duration(for_)}"
        figure.add_trace(go.Scatter(x=x, y=[c.alerts_per_day for c in chosen], mode="lines+markers", name=name,
                                    line=style, legendgroup=name), row=1, col=1)
        if scored:
            judged = len(sweep.incidents)
            figure.add_trace(go.Scatter(x=x, y=[100.0 * c.detected / judged for c in chosen], mode="lines+markers",
                                        name=name, line=style, legendgroup=name, showlegend=False), row=2, col=1)
            delays = [c.median_delay.total_seconds() / 60 if c.median_delay is not None else None for c in chosen]
            figure.add_trace(go.Scatter(x=x, y=delays, mode="lines+markers", name=name, line=style,
                                        legendgroup=name, showlegend=False), row=3, col=1)
    for row in range(1, rows + 1):
        figure.add_vline(x=sweep.threshold, line={"color": "#555", "dash": "dash", "width": 1}, row=row, col=1)
    figure.update_xaxes(title_text=f"threshold ({sweep.direction}; dashed: the rule's own, {sweep.threshold:g})",
                        row=rows, col=1)
    if scored:
        figure.update_yaxes(range=[0, 105], row=2, col=1)
    figure.update_layout(height=320 * rows, template="plotly_white", margin={"l": 60, "r": 20, "t": 70, "b": 50},
                         legend={"orientation": "h", "x": 0, "xanchor": "left", "y": 1.0, "yanchor": "bottom"})
    notes = list(sweep.notes) + [f"not judged: {i.describe()}: no series of the rule has its labels"
                                 for i in sweep.unmatched_incidents]
    return _TUNE_TEMPLATE.render(
        title=f"rules-engine tune: {sweep.rule}", source=source, start=rfc3339(sweep.start), end=rfc3339(sweep.end),
        step=format_duration(sweep.step), plotlyjs=get_plotlyjs(), style=_STYLE, curve=_div(figure),
        rule=f"{sweep.rule} [{sweep.category}], now {sweep.direction} {sweep.threshold:g} for "
             f"{format_duration(sweep.for_)}; {sweep.series} series",
        incidents=[i.describe() for i in sweep.incidents], notes=notes)


def _div(figure: go.Figure) -> str:
    return figure.to_html(full_html=False, include_plotlyjs=False, config=PLOT_CONFIG)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
.meta { color: #555; } .chip { display: inline-block; padding: .1em .6em; border-radius: .8em; color: #fff; margin-right: .3em; }
table { border-collapse: collapse; } td, th { padding: .25em .8em; border-bottom: 1px solid #eee; text-align: left; }
.bad { color: #d62728; font-weight: bold; } .plot { margin-bottom: 1em; }
"""
_ENVIRONMENT = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_TUNE_TEMPLATE = _ENVIRONMENT.from_string("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>{{ style }}</style>
<script>{{ plotlyjs|safe }}</script></head>
<body>
<h1>{{ title }}</h1>
<p class="meta">{{ start }} .. {{ end }}, step {{ step }}; {{ source }}</p>
<p>{{ rule }}</p>
{% if incidents %}<p>incidents judged: {{ incidents|join("; ") }}</p>{% endif %}
{% for note in notes %}<p class="meta">note: {{ note }}</p>{% endfor %}
<div class="plot" id="curve">{{ curve|safe }}</div>
</body></html>
""")
_TEMPLATE = _ENVIRONMENT.from_string("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{{ style }}</style>
<script>{{ plotlyjs|safe }}</script></head>
<body>
<h1>{{ title }}</h1>
<p class="meta">{{ start }} .. {{ end }}, step {{ step }}; {{ source }}</p>
<p>health <b>{{ overall if overall is not none else "unknown" }}</b>{% if overall is not none %} / 100{% endif %};
{{ rules }} rule(s);
{% for severity, count, colour in counts %}<span class="chip" style="background: {{ colour }}">{{ count }} {{ severity }}</span>{% else %}no findings{% endfor %}</p>
{% if fleet %}<h2>Fleet overview</h2>
<p class="meta">cell colour: <span class="chip" style="background: #e6e6e6; color: #333">none</span>{% for severity, colour in legend %}<span class="chip" style="background: {{ colour }}">{{ severity }}</span>{% endfor %}
(the worst severity of the category's alerts on the instance; the number: how many alerts)</p>
<div class="plot" id="fleet">{{ fleet|safe }}</div>{% endif %}
<h2>Findings</h2>
{% for plot in plots %}<div class="plot finding">{{ plot|safe }}</div>
{% else %}<p>No rule fired in this range.</p>{% endfor %}
{% if more %}<p>{{ more|length }} more not plotted:</p><ul>{% for name in more %}<li>{{ name }}</li>{% endfor %}</ul>{% endif %}
{% if slos %}<h2>SLOs</h2>
<table><tr><th>SLO</th><th>series</th><th>objective</th><th>attained</th><th>budget left</th><th>worst burn</th></tr>
{% for row in slos %}<tr><td>{{ row.slo }}</td><td>{{ row.group }}</td><td>{{ row.objective }}</td><td>{{ row.attained }}</td>
<td{% if row.overspent %} class="bad"{% endif %}>{{ row.budget }}</td><td>{{ row.burn }}</td></tr>{% endfor %}</table>
{% for plot in burn_downs %}<div class="plot burn-down">{{ plot|safe }}</div>{% endfor %}{% endif %}
{% if failed %}<h2>Could not be evaluated</h2><ul>{% for name, why in failed %}<li>{{ name }}: {{ why }}</li>{% endfor %}</ul>{% endif %}
</body></html>
""")
