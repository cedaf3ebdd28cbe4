"""Selector injection and PromQL rendering: label values with `"` and `\\` are escaped the PromQL way (checked by a
real Prometheus answering the rendered query), and no selector is written with empty braces."""
from __future__ import annotations

import pandas as pd
import promql_parser
import pytest

from rules_engine.promql.selectors import inject_selector, render
from tests import processes
from tests.conftest import require_binary

AWKWARD = r'{a="b\"c", d="e\\f", g=~"h\\.i"}'  # a = b"c, d = e\f, g matches the text h.i


def test_values_with_quotes_and_backslashes_are_escaped():
    got = inject_selector("sum(rate(x_total[5m]))", AWKWARD)
    assert got == r'sum(rate(x_total{a="b\"c",d="e\\f",g=~"h\\.i"}[5m]))'
    matchers = {m.name: m.value for m in promql_parser.parse(inject_selector("x_total", AWKWARD)).matchers.matchers}
    assert matchers == {"a": 'b"c', "d": "e\\f", "g": "h\\.i"}


def test_string_arguments_and_control_characters_are_escaped():
    expr = r'label_replace(up{job="a\nb"}, "dst", "$1", "src", "(.*)\\.y")'
    assert render(promql_parser.parse(expr)) == expr


def test_empty_braces_are_dropped_but_braces_inside_strings_stay():
    tree = promql_parser.parse('sum(rate(req_count[5m])) + on() group_left x{a="{}"}')
    assert str(tree).count("{}") == 2  # promql_parser's own printing: req_count{}[5m]
    assert render(tree) == 'sum(rate(req_count[5m])) + on () group_left () x{a="{}"}'


@pytest.mark.integration
def test_prometheus_selects_the_escaped_values(tmp_path):
    require_binary(processes.PROMTOOL)
    require_binary(processes.PROMETHEUS)
    at = int(pd.Timestamp("2026-11-19T12:00:00Z").timestamp())
    series = [(r'a="b\"c",d="e\\f",g="h.i"', 1), (r'a="bc",d="ef",g="h.i"', 2), (r'a="b\"c",d="e\\f",g="hxi"', 4)]
    lines = ["# TYPE x gauge"] + [f"x{{{labels}}} {value} {t}" for labels, value in series
                                   for t in range(at - 600, at + 1, 60)]
    (tmp_path / "x.om").write_text("\n".join(lines) + "\n# EOF\n")
    processes.backfill(tmp_path / "x.om", tmp_path / "data")
    query = inject_selector('sum(label_replace(x, "quoted", "$1\\"", "a", "(.*)")) by (quoted)', AWKWARD)
    with processes.running_prometheus(tmp_path / "data") as prometheus:
        result = prometheus.query(query, time=at)
    assert [(r["metric"], r["value"][1]) for r in result] == [({"quoted": 'b"c"'}, "1")]
