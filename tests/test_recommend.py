"""The ranked recommendations' pure logic: which optimization answers which finding, the memory arithmetic, the
flags per server kind from current settings, the ranking. (Reading current settings from a real Prometheus is in
tests/test_analysis_api.py.)"""
from __future__ import annotations

import pytest

from rules_engine.playbooks import recommend as rc

KV = {"rule": "VLLMPreemptions", "category": "memory_pressure", "severity": "critical", "pack": "vllm",
      "labels": {"instance": "vllm-6:8000", "model_name": "llama-3.1-8b-instruct"}, "start": "2026-11-19T17:40:30Z",
      "end": None, "duration_seconds": 3900}
ITL = {"rule": "VLLMHighITL", "category": "high_latency", "severity": "medium",
       "labels": {"instance": "vllm-2:8000", "model_name": "llama-3.1-70b-instruct"},
       "start": "2026-11-19T17:40:30Z", "end": "2026-11-19T18:00:00Z", "duration_seconds": 1200}
ABORTS = {"rule": "VLLMRequestAborts", "category": "error_rate", "severity": "low", "labels": {"instance": "x"}}


def test_kv_bytes_per_token_and_what_fits_are_the_textbook_arithmetic():
    arch = rc.architecture("meta-llama/Llama-3.1-8B-Instruct", {}, rc.model_catalog())
    assert (arch["layers"], arch["kv_heads"], arch["head_dim"]) == (32, 8, 128)
    assert rc.kv_bytes_per_token(arch, 2) == 2 * 32 * 8 * 128 * 2 == 131_072
    plan = rc.memory_plan(arch, "bf16", 2, gpu_memory_gib=80, gpus=1, utilization=0.9)
    weights = 8.03e9 * 2
    budget = 80 * rc.GIB * 0.9 - weights - rc.OVERHEAD_GIB_PER_GPU * rc.GIB
    assert plan["weights_gib"] == round(weights / rc.GIB, 2) and plan["kv_tokens"] == int(budget // 131_072)
    # 70B in bf16 does not fit one 80 GiB GPU; in INT4 it does.
    big = rc.architecture("llama-3.1-70b-instruct", {}, rc.model_catalog())
    assert not rc.memory_plan(big, "bf16", 2, 80, 1, 0.9)["fits"]
    assert rc.memory_plan(big, "int4", 2, 80, 1, 0.9)["fits"]
    assert rc.architecture("unknown-model", {}, rc.model_catalog()) is None
    assert rc.architecture("mine", {"params_billion": 1, "layers": 2, "kv_heads": 1, "head_dim": 64},
                           rc.model_catalog())["source"] == "request"


def test_each_category_has_its_optimizations_and_errors_have_none():
    assert rc.optimizations_for(KV)[0] == "kv_cache_sizing"
    assert rc.optimizations_for(ITL)[0] == "prefill_budget_down"
    assert rc.optimizations_for({**ITL, "rule": "VLLMHighTTFT"})[0] == "scale_out"
    assert rc.optimizations_for({"category": "cache_inefficiency"}) == ["prefix_caching"]
    assert rc.optimizations_for({"category": "batch_size_suboptimal"}) == ["batching_limits"]
    assert rc.optimizations_for(ABORTS) == []


def test_ranked_with_priority_settings_for_every_server_kind_and_current_values_used():
    out = rc.recommend_findings([ITL, KV, ABORTS], {"vllm-6:8000": {
        "gpu_memory_gib": 80, "settings": {"gpu_memory_utilization": 0.9, "max_num_seqs": 128}}})
    recs = out["recommendations"]
    assert [r["rank"] for r in recs] == list(range(1, len(recs) + 1))
    assert [r["priority"] for r in recs] == sorted((r["priority"] for r in recs),
                                                    key=lambda p: -rc.SEVERITY_RANK[p])
    assert recs[0]["priority"] == "critical" and recs[-1]["priority"] == "medium"
    assert out["unanswered"][0]["rule"] == "VLLMRequestAborts"
    sizing = next(r for r in recs if r["optimization"] == "kv_cache_sizing")
    assert set(sizing["settings"]) == {"vllm", "tgi", "sglang"} and list(sizing["settings"])[0] == "vllm"
    flags = {s["flag"]: s for s in sizing["settings"]["vllm"]}
    assert flags["--gpu-memory-utilization"]["value"] == 0.93 and flags["--gpu-memory-utilization"]["current"] == 0.9
    assert flags["--max-num-seqs"]["value"] == 96 and flags["--max-num-seqs"]["current_source"] == "request"
    # (0.93 - 0.90) x 80 GiB / 131,072 B per token
    assert sizing["estimated_improvement"]["amount"] == int(0.03 * 80 * rc.GIB // 131_072)
    assert sizing["findings"][0]["rule"] == "VLLMPreemptions" and sizing["risks"]
    quant = next(r for r in recs if r["optimization"] == "weight_quantization")
    assert {s["flag"] for k in rc.SERVER_KINDS for s in quant["settings"][k]} == {"--quantization", "--quantize"}
    memory = quant["estimated_improvement"]["memory"]
    assert memory["fp8"]["kv_tokens"] > memory["bf16"]["kv_tokens"] and memory["int4"]["weights_gib"] < 4.0
    itl = next(r for r in recs if r["optimization"] == "prefill_budget_down")
    assert {s["flag"]: s["value"] for s in itl["settings"]["sglang"]} == {"--chunked-prefill-size": 4096}


@pytest.mark.parametrize("dtype, expected", [("auto", 2.0), ("fp8", 1.0), ("fp8_e4m3", 1.0), ("bfloat16", 2.0)])
def test_kv_dtype_bytes(dtype, expected):
    assert rc.kv_dtype_bytes(dtype) == expected


def test_a_prometheus_that_does_not_answer_is_noted_once_and_defaults_are_used():
    from rules_engine.source.client import PrometheusClient
    from tests.processes import free_port

    with PrometheusClient(f"http://127.0.0.1:{free_port()}", retries=0, timeout=2) as down:
        out = rc.recommend_findings([KV, {**KV, "labels": {"instance": "vllm-7:8000", "model_name": "other"}}],
                                    prometheus=down)
    assert len(out["notes"]) == 1 and "not read from Prometheus" in out["notes"][0]
    sizing = next(r for r in out["recommendations"] if r["optimization"] == "kv_cache_sizing")
    assert {s["current_source"] for s in sizing["settings"]["vllm"]} == {"default"}
