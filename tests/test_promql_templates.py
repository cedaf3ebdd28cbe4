"""The annotation renderer: unit cases, and real Prometheus as judge (promtool renders the same templates)."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from rules_engine.promql.templates import (Unrenderable, go_float, humanize, humanize1024, humanize_duration,
                                           humanize_timestamp, printf, readable_value, render_readable,
                                           render_template)

LABELS = {"instance": "gpu-node-a:8000", "job": "vllm server_x"}

# Every supported function and form, with values chosen to reach each branch of Prometheus' formatting.
TEMPLATES = {
    "value": "{{ $value }}",
    "dot_value": "{{.Value}}",
    "humanize": "{{ $value | humanize }}",
    "humanize1024": "{{ humanize1024 $value }}",
    "percentage": "{{ $value | humanizePercentage }}",
    "printf_f": '{{ printf "%.2f" $value }}',
    "printf_pipe": '{{ $value | printf "%.3e" }}',
    "printf_verbs": '{{ printf "%g|%v|%f|%e|%.4g|100%%" $value $value $value $value $value }}',
    "printf_text": '{{ printf "%s=%v" $labels.job .Value }}',
    "case": "{{ $labels.instance | toUpper }} {{ .Labels.job | toLower }} {{ title $labels.job }}",
    "chain": "{{ $value | humanize | toUpper }}",
    "trim": "a  {{- $labels.missing -}}  b {{ $labels.instance }}",
}
# Functions that overflow Go's int64 on huge values (Prometheus errors, or prints garbage): an alert of their own,
# for values in range.
BOUNDED = {"timestamp": "{{ humanizeTimestamp .Value }}", "duration": "{{ $value | humanizeDuration }}"}
VALUES = [0.0, 1.0, 2.5, 0.975, -0.5, -42.25, 1234.0, 123456.7, 1e6, 1234567.0, 1e21, 1e-5, 0.000123, 999.95,
          1048576.0, 59.99, 3599.0, 86399.5, 93784.5, 1700000000.123456, 3.14159265358979, float("nan"),
          float("inf"), float("-inf")]


def _series_value(value: float) -> str:
    """A value in promtool's series notation, parsing back to the same float64."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Inf" if value > 0 else "-Inf"
    return repr(value)


def test_promtool_renders_what_we_render(tmp_path, promtool_bin):
    """Prometheus fires one alert per value and renders every template; promtool fails on any byte of difference
    from our rendering of the same template, labels and value."""
    probes = [("TemplateProbe", "probe_value", TEMPLATES, VALUES),
              ("BoundedProbe", "probe_value > -1e10 < 1e10", BOUNDED, [v for v in VALUES if abs(v) < 1e10])]
    rules = [{"alert": name, "expr": expr, "annotations": templates} for name, expr, templates, _ in probes]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "templates", "rules": rules}]}))
    series = []
    for index, value in enumerate(VALUES):
        selector = ",".join(f'{k}="{v}"' for k, v in _labels(index).items())
        series.append({"series": f"probe_value{{{selector}}}", "values": " ".join([_series_value(value)] * 3)})
    checks = [{"eval_time": "1m", "alertname": name, "exp_alerts": [
        {"exp_labels": _labels(VALUES.index(value)), "exp_annotations": {
            key: render_template(text, _labels(VALUES.index(value)), value) for key, text in templates.items()}}
        for value in values]} for name, _, templates, values in probes]
    test = {"rule_files": ["rules.yml"], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": checks}]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test, allow_unicode=True))
    result = subprocess.run([promtool_bin, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _labels(case: int) -> dict[str, str]:
    return {**LABELS, "case": str(case)}


def test_value_prints_like_go_percent_v():
    assert go_float(2.5) == "2.5"
    assert go_float(3.0) == "3"
    assert go_float(100000.0) == "100000"
    assert go_float(1e6) == "1e+06"  # Go's %v switches to exponent form from 1e6, not 1e21
    assert go_float(1e21) == "1e+21"
    assert go_float(0.00001) == "1e-05"
    assert go_float(0.97) == "0.97"
    assert go_float(float("nan")) == "NaN"
    assert go_float(float("-inf"), "f", 2) == "-Inf"


def test_humanize_functions_like_prometheus():
    assert humanize(1234.0) == "1.234k"
    assert humanize(0.0123) == "12.3m"
    assert humanize(2.5) == "2.5"
    assert humanize(0) == "0"
    assert humanize(float("nan")) == "NaN"
    assert humanize1024(1048576.0) == "1Mi"
    assert humanize1024(0.5) == "0.5"
    assert humanize_duration(93784.5) == "1d 2h 3m 4s"
    assert humanize_duration(59.99) == "59.99s"
    assert humanize_duration(0.25) == "250ms"
    assert humanize_duration(0) == "0s"
    assert humanize_timestamp(1700000000.5) == "2023-11-14 22:13:20.5 +0000 UTC"


def test_printf_verbs():
    assert printf("%.2f %s %%", 0.975, "x") == "0.97 x %"  # 0.975 is just below .975 in binary, as in Go
    assert printf("%e", 1234.5) == "1.234500e+03"
    for unsupported in ('%5.2f', '%d', '%x', '%'):
        with pytest.raises(Unrenderable):
            printf(unsupported, 1.0)
    with pytest.raises(Unrenderable):
        printf("%f %f", 1.0)


def test_templates_render_labels_value_and_pipes():
    labels = {"instance": "a:1"}
    text = "{{ $labels.instance }} at {{ $value }} / {{ $value | humanizePercentage }} / {{$labels.missing}}."
    assert render_template(text, labels, 0.975) == "a:1 at 0.975 / 97.5% / ."
    assert render_template("{{ .Labels.instance | title }}", {"instance": "ab-cd_ef gh"}, 0) == "Ab-Cd_ef Gh"
    assert render_template('{{ printf "%.1f%%" $value }}', {}, 12.34) == "12.3%"


@pytest.mark.parametrize("template", [
    "{{ range $x := .Y }}{{ end }}",
    "{{ if gt $value 1.0 }}high{{ end }}",
    "{{ $externalLabels.cluster }}",
    "{{ $labels.instance | humanize }}",  # Prometheus would parse the text as a number
    "{{ $value | reReplaceAll \"a\" \"b\" }}",
    "{{ ($value) }}",
    "{{ $labels.name | toUpper }}",  # non-ASCII case mapping
    "{{ $value | humanizeDuration }}",  # beyond int64 seconds Go's conversion is undefined
])
def test_what_cannot_be_rendered_exactly_says_so(template):
    with pytest.raises(Unrenderable):
        render_template(template, {"name": "straße"}, 1e21)


def test_readable_rendering_for_reports():
    labels = {"instance": "vllm-0:8000"}
    assert render_readable("{{ $labels.instance }} preempts {{ $value }} requests/s", labels, 3.5711146384479724) == \
        "vllm-0:8000 preempts 3.571 requests/s"
    assert [readable_value(v) for v in (0.0, 0.2352, 12.5, 999.96, 12345.6, 0.00001234, float("nan"))] == \
        ["0", "0.2352", "12.5", "1000", "12.35k", "12.34u", "NaN"]
    # Explicit functions render exactly as Prometheus would; what cannot be reproduced stays as written.
    assert render_readable("{{ $value | humanizePercentage }} of {{ .Labels.instance }}", labels, 0.2352) == \
        "23.52% of vllm-0:8000"
    assert render_readable("{{ if gt $value 1.0 }}high{{ end }} {{ $value }}", labels, 2.0) == \
        "{{ if gt $value 1.0 }}high{{ end }} 2"


def test_label_values_are_data_never_templates():
    hostile = {"instance": '{{ $value }} {{ template "x" }} {{ $labels.instance }}'}
    for render in (render_readable, render_template):
        assert render("on {{ $labels.instance }}: {{ $labels.missing }}.", hostile, 7.0) == \
            'on {{ $value }} {{ template "x" }} {{ $labels.instance }}: .'
