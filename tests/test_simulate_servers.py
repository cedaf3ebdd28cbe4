"""TGI and SGLang instances in the simulator: each server's own names, labels and buckets, SGLang's per-rank
duplication, TGI's concurrency cap, truth in each server's terms, and the vLLM side left as it was."""
from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from rules_engine.cli import main
from rules_engine.simulate import FleetSpec, Incident, run_fleet, simulate
from rules_engine.simulate import sglang, tgi

END = 1_767_225_600  # 2026-01-01T00:00:00Z
HOUR = 3600


def spec(**overrides) -> FleetSpec:
    values = dict(start=END - 6 * HOUR, end=END, instances=1, tgi_instances=3, sglang_instances=3, step=60, seed=4)
    values.update(overrides)
    return FleetSpec(**values)


def series_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " ")]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("servers") / "fleet.om"
    incidents = [Incident("queue_buildup", ("tgi-1:8000",), start="2h", duration=HOUR, magnitude=1.3),
                 Incident("kv_pressure", ("sglang-2:8000",), start="3h", duration=HOUR)]
    sim = simulate(path, spec(), incidents)
    return path.read_text(), sim


def test_tgi_duration_buckets_are_tgis_odd_floats(written):
    text, _ = written
    les = {m.group(1) for m in re.finditer(r'tgi_request_queue_duration_bucket\{[^}]*le="([^"]+)"', text)}
    assert len(les) == 36  # 35 geometric buckets + Inf
    # The exact text TGI's exporter writes (reference/llm-servers.md §9).
    assert {"0.49878850951194753", "2.5251168294042348", "1.122274146401882", "+Inf"} <= les
    assert tgi.DURATION_BUCKETS[0] == 0.0001 * 1.5 and len(tgi.DURATION_BUCKETS) == 35


def test_tgi_series_have_no_model_label_and_counters_no_total(written):
    text, _ = written
    tgi_lines = [line for line in text.splitlines() if line.startswith("tgi_")]
    assert tgi_lines and not any("model_name" in line for line in tgi_lines)
    assert not any(line.startswith("tgi_request_count_total") for line in tgi_lines)
    assert series_lines(text, "tgi_request_count")
    assert '# TYPE tgi_request_failure counter' in text
    assert any('err="overloaded"' in line for line in series_lines(text, "tgi_request_failure"))


def test_tgi_queue_is_capped_and_overload_is_refused():
    series, _ = run_fleet(spec(), [Incident("queue_buildup", ("tgi-1:8000",), start="2h", duration=HOUR,
                                            magnitude=1.3)])
    s = next(s for s in series if s.instance.name == "tgi-1:8000")
    queue = s.gauge_values[tgi.QUEUE_SIZE][0][1]
    batch = s.gauge_values[tgi.BATCH_SIZE][0][1]
    assert (queue + batch <= tgi.MAX_CONCURRENT_REQUESTS).all() and queue.max() > 0
    assert s.waiting.max() > tgi.MAX_CONCURRENT_REQUESTS  # the load model's backlog, which TGI refuses
    overloaded = dict((extra["err"], v) for extra, v in s.counter_increments[tgi.REQUEST_FAILURE])["overloaded"]
    during = (s.times >= END - 4 * HOUR) & (s.times < END - 3 * HOUR)
    assert overloaded[during].sum() > 0.1 * s.counter_increments[tgi.REQUEST_COUNT][0][1][during].sum()
    assert overloaded[~during & (s.times < END - 4 * HOUR)].sum() == 0


def test_sglang_scheduler_metrics_repeat_per_pipeline_rank(written):
    text, sim = written
    big = next(s for s in sim.series if s.instance.server == "sglang" and sglang.pipeline_ranks(s) == 2)
    small = next(s for s in sim.series if s.instance.server == "sglang" and sglang.pipeline_ranks(s) == 1)
    for name, expected in ((big.instance.name, 2), (small.instance.name, 1)):
        ranks = {re.search(r'pp_rank="(\d)"', line).group(1) for line in series_lines(text, "sglang:num_queue_reqs")
                 if f'instance="{name}"' in line}
        assert len(ranks) == expected
        # Tokenizer metrics once per instance, whatever the ranks; counters keep their _total.
        ttft = {line.split(" ")[0] for line in series_lines(text, "sglang:time_to_first_token_seconds_count")
                if f'instance="{name}"' in line}
        assert len(ttft) == 2 and not any("pp_rank" in series for series in ttft)  # is_streaming true / false
    assert series_lines(text, "sglang:num_retracted_requests_total")
    les = {m.group(1) for m in re.finditer(r'sglang:time_to_first_token_seconds_bucket\{[^}]*le="([^"]+)"', text)}
    assert {"0.1", "1.0", "2.0", "400.0", "+Inf"} <= les and len(les) == 19


def test_sglang_interval_gauges_match_the_counters():
    series, _ = run_fleet(spec())
    s = next(s for s in series if s.instance.server == "sglang")
    throughput = s.gauge_values[sglang.GEN_THROUGHPUT][0][1]
    np.testing.assert_allclose(throughput * 60, s.counter_increments[sglang.GENERATION_TOKENS][0][1])
    hit = s.gauge_values[sglang.CACHE_HIT_RATE][0][1]
    assert ((0 <= hit) & (hit <= 1)).all() and 0.3 < np.median(hit[s.present & (s.running > 0)]) < 0.6


def test_truth_names_each_servers_signals():
    _, truth = run_fleet(spec(), [Incident("error_burst", ("tgi-0:8000",), start="1h"),
                                  Incident("kv_pressure", ("sglang-1:8000",), start="1h"),
                                  Incident("error_burst", ("vllm-0:8000",), start="1h")])
    records = {r["instance"]: r for r in truth["incidents"]}
    assert records["tgi-0:8000"]["server"] == "tgi" and records["tgi-0:8000"]["model_name"] is None
    assert records["tgi-0:8000"]["expected_signals"] == ["tgi_request_failure"]
    assert "sglang:num_retracted_requests_total" in records["sglang-1:8000"]["expected_signals"]
    assert records["vllm-0:8000"]["expected_signals"] == ["vllm:request_success_total"]
    assert {i["server"] for i in truth["instances"]} == {"vllm", "tgi", "sglang"}


def test_tgi_refuses_an_incident_it_cannot_show():
    with pytest.raises(ValueError, match=r"low_cache_hit.*tgi-0:8000.*no prefix-cache metric"):
        run_fleet(spec(), [Incident("low_cache_hit", ("tgi-0:8000",), start="1h")])


def test_adding_other_servers_leaves_the_vllm_history_unchanged(tmp_path):
    alone, mixed = tmp_path / "alone.om", tmp_path / "mixed.om"
    simulate(alone, spec(tgi_instances=0, sglang_instances=0))
    simulate(mixed, spec())
    vllm_lines = [line for line in mixed.read_text().splitlines() if line.startswith("vllm:")]
    assert vllm_lines == [line for line in alone.read_text().splitlines() if line.startswith("vllm:")]


def test_fleet_without_vllm_instances(tmp_path):
    sim = simulate(tmp_path / "f.om", spec(instances=0, tgi_instances=1, sglang_instances=1))
    text = (tmp_path / "f.om").read_text()
    assert not any(line.startswith("vllm:") for line in text.splitlines()) and text.endswith("# EOF\n")
    assert [s.instance.name for s in sim.series] == ["tgi-0:8000", "sglang-0:8000"]
    with pytest.raises(ValueError, match="instances must be >= 1"):
        spec(instances=0, tgi_instances=0, sglang_instances=0)


def test_cli_mixed_fleet(tmp_path):
    out = tmp_path / "m.om"
    result = CliRunner().invoke(main, ["simulate", "--out", str(out), "--scenario", "none", "--duration", "1h",
                                       "--step", "60s", "--instances", "1", "--tgi-instances", "1",
                                       "--sglang-instances", "2", "--end", "2026-01-01T00:00:00Z"])
    assert result.exit_code == 0, result.output
    assert "1 instances + 1 TGI + 2 SGLang" in result.output
    text = out.read_text()
    assert 'instance="sglang-1:8000"' in text and 'tgi_queue_size{job="tgi",instance="tgi-0:8000"}' in text
