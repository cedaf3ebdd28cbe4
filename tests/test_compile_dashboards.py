"""Grafana dashboards: schema (the SDK's own model round-trips them) and every panel query run against a real
Prometheus that evaluates the generated rules over backfilled simulated history. Grafana itself is not
installable here, so this is how a dashboard is judged: each query must succeed, each rule's panel must return
series, and the SLO overview must show every SLO's budget."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dashboard_model

from rules_engine.api import generate
from rules_engine.compile.generate import GenerateOptions, write_outputs
from rules_engine.compile.grafana import panel_queries
from rules_engine.simulate.fleet import FleetSpec
from rules_engine.simulate.history import simulate
from rules_engine.spec import load_ruleset
from tests import processes
from tests.conftest import require_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parent.parent
GOLDEN_SPEC = Path(__file__).parent / "golden" / "spec"
# A short group interval so the first evaluation of every generated group comes within seconds of startup.
INTERVAL = pd.Timedelta("2s")


def _dashboards(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "grafana" / "dashboards").glob("*.json"))}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """Generated output of the shipped rules (packs + SLOs), and a Prometheus evaluating it over 3 h of history
    that ends now."""
    require_binary(processes.PROMETHEUS)
    require_binary(processes.PROMTOOL)
    root = tmp_path_factory.mktemp("dashboards")
    ruleset = load_ruleset(ROOT / "rules")
    write_outputs(generate(ruleset, GenerateOptions(interval=INTERVAL)), root / "out")
    end = time.time()
    simulate(root / "history.om", FleetSpec(start=end - 3 * 3600, end=end, instances=2, step=30, seed=3,
                                             tgi_instances=1, sglang_instances=1))
    processes.backfill(root / "history.om", root / "data")
    rule_files = sorted((root / "out" / "prometheus").glob("*.yml"))
    with processes.running_prometheus(data_dir=root / "data", rule_files=rule_files) as prometheus:
        _wait_for_two_evaluations(prometheus.url)
        yield root / "out", prometheus


def _wait_for_two_evaluations(url: str, timeout: float = 60.0) -> None:
    """Wait until every generated group has been evaluated twice: a window panel's subquery evaluates at
    multiples of its step, and the newest of those must come after the first recorded sample."""
    deadline = time.monotonic() + timeout
    first: dict[str, str] = {}
    while True:
        groups = requests.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        for group in groups:
            if not group["lastEvaluation"].startswith("0001"):
                first.setdefault(group["name"], group["lastEvaluation"])
        if groups and all(group["name"] in first and group["lastEvaluation"] != first[group["name"]] for group in groups):
            return
        assert time.monotonic() < deadline, "rule groups were not evaluated in time"
        time.sleep(0.2)


def _with_all(expr: str) -> str:
    """What Grafana sends with every variable set to All (our variables' all value is .*)."""
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def test_dashboards_round_trip_through_the_sdk_model(tmp_path):
    write_outputs(generate(load_ruleset(GOLDEN_SPEC)), tmp_path)
    dashboards = _dashboards(tmp_path)
    assert set(dashboards) == {"demo.json", "slo-overview.json"}
    for name, document in dashboards.items():
        model = dashboard_model.Dashboard.from_json(document)
        assert json.loads(json.dumps(model, cls=JSONEncoder, sort_keys=True)) == document, name
        ids = [panel["id"] for panel in document["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        variables = [v["name"] for v in document["templating"]["list"]]
        assert variables[0] == "datasource"
        assert all(panel["datasource"]["uid"] == "${datasource}" for panel in document["panels"])


def test_rule_panels_draw_every_severity_level(tmp_path):
    write_outputs(generate(load_ruleset(GOLDEN_SPEC)), tmp_path)
    demo = _dashboards(tmp_path)["demo.json"]
    assert [v["name"] for v in demo["templating"]["list"]] == ["datasource", "instance", "model_name"]
    panel = next(p for p in demo["panels"] if p["title"] == "DemoQueueBuildup")
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(s["value"], s["color"]) for s in steps] == [
        (None, "green"), (5, "yellow"), (6, "orange"), (7.5, "red"), (10, "dark-red")]
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"
    below = next(p for p in demo["panels"] if p["title"] == "DemoLowCacheHitRate")
    colors = [s["color"] for s in below["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert colors[0] == "dark-red" and colors[-1] == "green"


def test_panels_carry_units_plain_descriptions_and_model_name_legends(tmp_path):
    write_outputs(generate(load_ruleset(GOLDEN_SPEC)), tmp_path)
    demo = _dashboards(tmp_path)["demo.json"]
    panels = {p["title"]: p for p in demo["panels"]}
    units = {title: panel["fieldConfig"]["defaults"]["unit"] for title, panel in panels.items()}
    assert units == {"DemoQueueBuildup": "short", "DemoHighTTFT": "s", "DemoKVCacheFull": "percentunit",
                     "DemoLowCacheHitRate": "percentunit", "DemoKVCacheFillingUp": "percentunit",
                     "DemoTTFTRegression": "none"}
    for title, panel in panels.items():
        assert "{{" not in panel["description"], title  # alert templates do not render in a panel description
        assert "{{model_name}}" in panel["targets"][0]["legendFormat"], title
    assert panels["DemoQueueBuildup"]["description"].startswith(
        "queue_buildup: alerts at low > 5, medium >= 6, high >= 7.5, critical >= 10 for 5m.")


def test_dashboards_annotate_firing_alerts_and_slo_panels_draw_thresholds(tmp_path):
    write_outputs(generate(load_ruleset(GOLDEN_SPEC)), tmp_path)
    dashboards = _dashboards(tmp_path)
    for name, pack in (("demo.json", "demo"), ("slo-overview.json", "slo")):
        annotations = dashboards[name]["annotations"]["list"]
        assert [a["expr"] for a in annotations] == [f'ALERTS{{alertstate="firing", rule_pack="{pack}"}}'], name
    slo = {p["title"]: p for p in dashboards["slo-overview.json"]["panels"]}
    budget = slo["Error budget remaining (period)"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(s["value"], s["color"]) for s in budget] == [(None, "red"), (0, "orange"), (0.25, "green")]
    burn = slo["Current burn rate (5m)"]["fieldConfig"]["defaults"]
    assert [s["value"] for s in burn["thresholds"]["steps"]][:2] == [None, 1]
    assert burn["custom"]["thresholdsStyle"]["mode"] == "line"
    assert all(panel["description"] for panel in slo.values())


def test_alert_annotations_find_the_firing_alerts(shipped):
    """The annotation query is what Grafana sends to Prometheus: it must select the pack's firing alerts."""
    out, prometheus = shipped
    for name, document in _dashboards(out).items():
        expr = document["annotations"]["list"][0]["expr"]
        prometheus.query(expr)  # raises on a query error
        pack = re.search(r'rule_pack="([^"]+)"', expr).group(1)
        assert pack == ("slo" if name == "slo-overview.json" else name.removesuffix(".json"))


def test_every_panel_query_runs_and_rule_panels_return_series(shipped):
    out, prometheus = shipped
    dashboards = _dashboards(out)
    assert "slo-overview.json" in dashboards and len(dashboards) >= 2
    now = time.time()
    empty = []
    queries = [(name, title, expr) for name, document in dashboards.items() for title, expr in panel_queries(document)]
    rules = sum(len(document["panels"]) for name, document in dashboards.items() if name != "slo-overview.json")
    assert len(queries) >= rules + 6
    for name, title, expr in queries:
        result = prometheus.query_range(_with_all(expr), now - 300, now, 15)  # raises on a query error
        if not result:
            empty.append(f"{name}: {title}: {expr}")
    assert not empty, "panels without series:\n" + "\n".join(empty)


def test_template_variables_resolve_to_the_fleet(shipped):
    out, prometheus = shipped
    for name, document in _dashboards(out).items():
        for variable in document["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["query"])
            assert match, variable["query"]
            values = {series["metric"].get(match.group(2)) for series in prometheus.query(match.group(1))}
            assert values - {None}, f"{name}: variable {variable['name']} has no values"
