"""The shipped TGI and SGLang files, statically and in dry run: runbook links, playbooks and their launch flags,
SGLang rank aggregation and interval averages, TGI names, labels and bucket boundaries."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from rules_engine.playbooks.runtime import load_playbooks
from rules_engine.playbooks import workflow as wf
from rules_engine.playbooks.executor import claim_next, run_workflow
from rules_engine.spec import load_ruleset
from tests.test_playbooks import alert, get, ingest, runtime, store  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent


def github_anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("server", ["tgi", "sglang"])
def test_every_alert_links_its_runbook_section(server):
    pack = load_ruleset(ROOT / "rules" / f"{server}.yaml").packs[0]
    assert pack.server == server
    runbook = ROOT / "docs" / "runbooks" / f"{server}.md"
    anchors = {github_anchor(line[3:]) for line in runbook.read_text().splitlines() if line.startswith("## ")}
    for rule in pack.rules:
        path, _, anchor = rule.annotations.runbook_url.partition("#")
        assert path == f"docs/runbooks/{server}.md" and anchor == rule.name.lower(), rule.name
        assert anchor in anchors, f"{rule.name}: no section '## {rule.name}' in {runbook}"
    # The SLOs' burn-rate alerts share one section of their server's runbook.
    slos = load_ruleset(ROOT / "rules" / "slo" / f"{server}.yaml").slos
    assert slos and {slo.runbook_url for slo in slos} == {f"docs/runbooks/{server}.md#slo-burn-rate-alerts"}
    assert anchors == {rule.name.lower() for rule in pack.rules} | {"slo-burn-rate-alerts"}, (
        "a runbook section without an alert")


@pytest.mark.parametrize("server", ["tgi", "sglang"])
def test_playbooks_named_by_rules_exist_and_match_them(server):
    playbooks = load_playbooks(sorted((ROOT / "rules" / "playbooks").glob(f"{server}-*.yaml")))
    pack = load_ruleset(ROOT / "rules" / f"{server}.yaml").packs[0]
    for rule in pack.rules:
        if rule.playbook is None:
            continue
        playbook = playbooks[rule.playbook]
        assert playbook.server_kind == server
        assert playbook.matches({"alertname": rule.name}, {}), (rule.name, rule.playbook)


@pytest.mark.parametrize("server", ["tgi", "sglang"])
def test_shipped_playbooks_dry_run_every_alert_with_the_servers_knobs(store, server):
    """Each alert that names a playbook starts a workflow that completes in dry run, sends only under the
    orchestrator (a label value cannot add path segments), and carries that server's own launch flags."""
    shipped = load_playbooks(sorted((ROOT / "rules" / "playbooks").glob(f"{server}-*.yaml")))
    rt = runtime(store, *shipped.values(), dry_run=True, variables={"orchestrator_url": "http://orch:8000"})
    pack = load_ruleset(ROOT / "rules" / f"{server}.yaml").packs[0]
    # TGI alerts carry instance and job (no model label); SGLang alerts instance and model_name.
    extra = {"job": "tgi/../x"} if server == "tgi" else {"model_name": "m/../x"}
    alerted = [rule.name for rule in pack.rules if rule.playbook]
    for number, name in enumerate(alerted):
        ingest(rt, alert(alertname=name, instance=f"{server}-{number}:8000", **extra))
    urls, flags = [], set()
    while (workflow_id := claim_next(rt)) is not None:
        assert run_workflow(rt, workflow_id) == wf.COMPLETED
        for step in get(rt, workflow_id).steps:
            if "would_send" in step.output:
                urls.append(step.output["would_send"]["url"])
            flags |= {detail["flag"] for detail in step.output.get("details", [])}
    assert len(urls) >= len(alerted) and all(url.startswith("http://orch:8000/v1/") for url in urls), urls
    assert all("/../" not in url for url in urls)
    assert flags and all(flag.startswith("(") or flag in SERVER_FLAGS[server] for flag in flags), flags


# Launch flags each server really has (text-generation-launcher --help; sglang.launch_server --help), read from
# their sources (reference/llm-servers.md §5).
SERVER_FLAGS = {
    "tgi": {"--max-batch-total-tokens", "--max-concurrent-requests", "--max-batch-prefill-tokens", "--max-batch-size",
            "--waiting-served-ratio", "--max-waiting-tokens", "--kv-cache-dtype", "--quantize",
            "--cuda-memory-fraction", "--max-total-tokens", "--num-shard", "--speculate"},
    "sglang": {"--mem-fraction-static", "--max-running-requests", "--chunked-prefill-size", "--schedule-policy",
               "--schedule-conservativeness", "--kv-cache-dtype", "--cuda-graph-max-bs", "--dp-size",
               "--context-length"},
}


@pytest.mark.parametrize("server", ["tgi", "sglang"])
def test_every_flag_the_pack_runbook_and_playbooks_name_is_a_real_flag(server):
    texts = [ROOT / "rules" / f"{server}.yaml", ROOT / "rules" / "slo" / f"{server}.yaml",
             ROOT / "docs" / "runbooks" / f"{server}.md", *(ROOT / "rules" / "playbooks").glob(f"{server}-*.yaml")]
    # Our own commands' flags (`rules-engine evaluate --rules ...` in a runbook) are not the server's.
    own_commands = re.compile(r"rules-engine [^`\n]*")
    named = {flag for path in texts
             for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", own_commands.sub("", path.read_text()))}
    assert named and named <= SERVER_FLAGS[server] | EXTRA_FLAGS[server], named - SERVER_FLAGS[server]


# Flags named in explanations rather than changed by a playbook.
EXTRA_FLAGS = {"tgi": set(), "sglang": {"--enable-metrics", "--disable-radix-cache", "--pp-size"}}


# SGLang scheduler metrics: one series per rank (reference/llm-servers.md §0.5, §9).
SGLANG_PER_RANK = {"sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:token_usage",
                   "sglang:num_retracted_requests_total", "sglang:gen_throughput", "sglang:cache_hit_rate"}
INTERVAL_AVERAGES = {"sglang:gen_throughput", "sglang:cache_hit_rate"}


def selectors_with_context(node, aggregations=(), calls=()):
    """(metric name, enclosing aggregation operators outermost first, enclosing function names) per selector."""
    import promql_parser

    if isinstance(node, promql_parser.VectorSelector):
        yield node.name, aggregations, calls
    elif isinstance(node, promql_parser.MatrixSelector):
        yield from selectors_with_context(node.vector_selector, aggregations, calls)
    elif isinstance(node, promql_parser.AggregateExpr):
        yield from selectors_with_context(node.expr, aggregations + (str(node.op),), calls)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from selectors_with_context(arg, aggregations, calls + (node.func.name,))
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from selectors_with_context(node.lhs, aggregations, calls)
        yield from selectors_with_context(node.rhs, aggregations, calls)
    elif isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
        yield from selectors_with_context(node.expr, aggregations, calls)


def sglang_expressions():
    pack = load_ruleset(ROOT / "rules" / "sglang.yaml").packs[0]
    for rule in pack.rules:
        yield rule.name, rule.signal
        if rule.guard:
            yield rule.name + " guard", rule.guard
    for name, playbook in load_playbooks(sorted((ROOT / "rules" / "playbooks").glob("sglang-*.yaml"))).items():
        for step in playbook.steps:
            if step.type == "verify":  # templates render label values inside strings only
                yield f"{name}/{step.name}", re.sub(r"\{%.*?%\}", "", re.sub(r"\{\{.*?\}\}", "x", step.query))


def test_sglang_rank_series_are_never_summed_and_interval_averages_never_rated():
    import promql_parser

    checked = 0
    for where, expr in sglang_expressions():
        for name, aggregations, calls in selectors_with_context(promql_parser.parse(expr)):
            if name in SGLANG_PER_RANK:
                # The innermost aggregation over a rank series is max: ranks report the same scheduler.
                assert aggregations and aggregations[-1] == "max", (where, name, aggregations)
                checked += 1
            if name in INTERVAL_AVERAGES:
                assert not {"rate", "irate", "increase", "deriv"} & set(calls), (where, name, calls)
    assert checked >= 10
    # The check bites: the naive aggregation is caught.
    naive = promql_parser.parse("sum by (instance) (rate(sglang:num_retracted_requests_total[5m]))")
    assert [a[-1] for _, a, _ in selectors_with_context(naive)] == ["sum"]


def test_tgi_names_have_no_total_suffix_no_model_label_and_slos_sit_on_its_boundaries():
    from rules_engine.simulate import tgi

    texts = [ROOT / "rules" / "tgi.yaml", ROOT / "rules" / "slo" / "tgi.yaml",
             *(ROOT / "rules" / "playbooks").glob("tgi-*.yaml")]
    for path in texts:
        text = path.read_text()
        assert not re.search(r"tgi_\w+_total\b", text), path
        assert "model_name" not in re.sub(r"#.*", "", text), path
    latency = [slo for slo in load_ruleset(ROOT / "rules" / "slo" / "tgi.yaml").slos if slo.sli.latency]
    assert latency and all(slo.sli.latency.threshold in tgi.DURATION_BUCKETS for slo in latency)
    pack = load_ruleset(ROOT / "rules" / "tgi.yaml").packs[0]
    quantile_rules = [r for r in pack.rules if "histogram_quantile" in r.signal and "+" not in r.signal]
    assert quantile_rules and all(r.threshold in tgi.DURATION_BUCKETS for r in quantile_rules)
