"""Checking an analysis request before it is queued (pure: no Prometheus): names, selector, range, size, inline
rules; and the /docs page's assets are the packaged files (it works offline)."""
from __future__ import annotations

import re

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_
from pydantic import ValidationError

from rules_engine.playbooks.analysis import AnalysisLimits, AnalysisRequest, RequestProblem, plan
from rules_engine.spec import load_ruleset
from tests.test_server import app, client  # noqa: F401 (fixtures)

NOW = pd.Timestamp("2026-11-20T00:00:00Z")


def configured():
    return load_ruleset(["rules/"])


def check(**body):
    return plan(AnalysisRequest.model_validate({"start": "now-6h", **body}), configured, AnalysisLimits(), NOW)


def test_the_selector_reaches_every_query_and_names_select_packs_and_slos():
    found = check(packs=["vllm"], slos=[], selector={"instance": "a:1", "model": "m", "job": "vllm"})
    assert {pack.name for pack in found.ruleset.packs} == {"vllm"} and not found.ruleset.slos
    assert found.queries and all('instance="a:1"' in q and 'model_name="m"' in q and 'job="vllm"' in q
                                 for q in found.queries)
    everything = check()
    assert len(everything.ruleset.packs) > 1 and everything.ruleset.slos
    assert found.start == NOW - pd.Timedelta(hours=6) and found.points_per_series > 6 * 120


@pytest.mark.parametrize("body, location", [
    ({"packs": ["nope"]}, "body.packs"), ({"slos": ["nope"]}, "body.slos"), ({"rules": ["Nope"]}, "body.rules"),
    ({"step": "0.1s"}, "body.step"), ({"step": "soon"}, "body.step"), ({"end": "now-7h"}, "body.end"),
    ({"step": "inf"}, "body.step"), ({"step": "1e30"}, "body.step"), ({"start": "now-nan"}, "body.start"),
    ({"start": "then"}, "body.start"), ({"start": "nan"}, "body.start"), ({"end": float("nan")}, "body.end"),
    ({"timeout": 10_000}, "body.timeout"),
    ({"inline_rules": "kind: RulePack\nname: x\nrules: []\n"}, "body.inline_rules"),
    ({"inline_rules": "kind: Playbook\nname: p\n"}, "body.inline_rules"),
    ({"inline_rules": "a: &a [*a]\n"}, "body.inline_rules"),
])
def test_bad_requests_name_the_field(body, location):
    with pytest.raises(RequestProblem) as problem:
        check(**body)
    assert problem.value.location == location and problem.value.message


def test_a_quote_in_a_selector_value_is_refused():
    with pytest.raises(ValueError, match="double quote"):
        AnalysisRequest.model_validate({"start": "now-1h", "selector": {"instance": 'a"b'}})


@pytest.mark.parametrize("body, location", [({"step": "1m", "end": "now", "start": "now"}, "body.end")])
def test_an_empty_range_names_the_end(body, location):
    with pytest.raises(RequestProblem) as problem:
        check(**body)
    assert problem.value.location == location


def test_inline_rules_problems_carry_their_line_and_a_window_file_is_refused():
    with pytest.raises(RequestProblem) as problem:
        check(inline_rules="kind: RulePack\nname: x\nrules:\n  - {name: A, category: nope, signal: up, above: 1}\n")
    assert str(problem.value).startswith("body.inline_rules: line 4: rules[0].category: Input should be")
    slo = ("kind: SLO\nname: s\nobjective: 99\nalerting: {windows: /etc/passwd}\n"
           "sli: {ratio: {errors: 'up', total: 'up + 1'}}\n")
    with pytest.raises(RequestProblem, match="names a file"):
        check(inline_rules=slo)


def test_too_many_points_is_refused_before_anything_is_fetched():
    with pytest.raises(RequestProblem, match="limit is 1,000") as problem:
        plan(AnalysisRequest(start="now-30d", step="15s"), configured, AnalysisLimits(max_points=1000), NOW)
    assert problem.value.location == "body.step"


def test_docs_page_loads_only_packaged_assets(client):  # noqa: F811
    page = client.get("/docs/")
    assert page.status_code == 200 and b"swagger-ui" in page.data
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.get_data(as_text=True))
    assert assets and not [a for a in assets if a.startswith(("http:", "https:", "//"))]
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert b'"/api/v1/openapi.json"' in page.data
    document = client.get("/api/v1/openapi.json").json
    assert {"/api/v1/analysis", "/api/v1/analysis/{job_id}", "/api/v1/optimization/recommend"} <= set(
        document["paths"]) and "post" in document["paths"]["/api/v1/workflows"]
    assert document["components"]["schemas"]["AnalysisRequest"]["properties"]["selector"]


JSONISH = st_.none() | st_.booleans() | st_.integers() | st_.floats() | st_.text(max_size=30)
TIMES = st_.sampled_from(["now", "now-1h", "now-7d", "now-100000d", "2026-11-19T00:00:00Z", "1763510400", "0",
                          "-5", "1e300", "nan", "", "now-", "now-1x"]) | st_.floats() | st_.text(max_size=12)


@settings(max_examples=300, deadline=None, database=None)
@given(st_.fixed_dictionaries({}, optional={
    "start": TIMES, "end": TIMES, "step": TIMES | st_.sampled_from(["1s", "30s", "1h", "0s", "1ms"]),
    "packs": st_.lists(st_.sampled_from(["vllm", "vllm-trends", "x"]), max_size=2) | JSONISH,
    "slos": st_.lists(st_.text(max_size=10), max_size=2), "rules": st_.lists(st_.text(max_size=10), max_size=2),
    "inline_rules": st_.text(max_size=200) | st_.sampled_from(["kind: SLO\n", "kind: RulePack\nname: p\n"]),
    "timeout": JSONISH, "selector": st_.dictionaries(st_.sampled_from(["instance", "model", "job", "pod"]),
                                                     JSONISH, max_size=3)}))
def test_any_request_is_planned_or_refused_naming_a_field(body):
    try:
        request = AnalysisRequest.model_validate(body)
    except ValidationError as error:
        assert error.errors()
        return
    try:
        found = plan(request, configured, AnalysisLimits(max_points=10_000_000), NOW)
    except RequestProblem as problem:
        assert problem.location.startswith("body") and problem.message
        return
    assert found.end > found.start and found.queries is not None
