"""The fleet simulator: series shape and physics, incidents, determinism, file format, CLI, and a real backfill."""
from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict

import numpy as np
import pytest
from click.testing import CliRunner

from rules_engine.cli import main
from rules_engine.simulate import KINDS, FleetSpec, Incident, IncidentError, load_incidents, run_fleet, simulate
from rules_engine.simulate import catalog
from rules_engine.simulate.fleet import cumulative, histogram_counts
from rules_engine.simulate.timeparse import parse_time
from tests import processes
from tests.conftest import require_binary

END = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = 86400


def small_spec(**overrides) -> FleetSpec:
    values = dict(start=END - DAY, end=END, instances=4, step=60, seed=7)
    values.update(overrides)
    return FleetSpec(**values)


def series_of(series, name):
    return next(s for s in series if s.instance.name == name)


def test_counters_never_decrease_except_at_restarts():
    spec = small_spec(restarts_per_day=6.0)
    series, truth = run_fleet(spec)
    assert truth["restarts"], "a high restart rate must produce restarts"
    for s in series:
        for key, increments in s.increments.items():
            values = cumulative(increments, s.restart)
            steps = np.diff(values)
            assert (steps[~s.restart[1:]] >= 0).all(), key
            # A counter starts over at a restart: below where it was unless it was still near 0.
            at_restart = np.flatnonzero(s.restart)
            assert (values[at_restart] <= increments[at_restart]).all(), key
        if s.restart.any() and s.increments["generation_tokens"].sum() > 0:
            gen = cumulative(s.increments["generation_tokens"], s.restart)
            r = np.flatnonzero(s.restart)[0]
            assert gen[r] < gen[r - 1]


def test_histogram_buckets_are_cumulative_and_inf_equals_count():
    series, _ = run_fleet(small_spec(restarts_per_day=3.0))
    for s in series:
        for family, hist in s.histograms.items():
            bounds = catalog.HISTOGRAM_BUCKETS[family]
            buckets, count, sums = histogram_counts(hist, bounds, s.restart)
            assert buckets.shape[1] == len(bounds) + 1
            assert (np.diff(buckets, axis=1) >= 0).all(), f"{family}: le not cumulative"
            np.testing.assert_array_equal(buckets[:, -1], count)
            assert (np.diff(count)[~s.restart[1:]] >= 0).all()
            assert (sums >= 0).all() and sums[-1] > 0


def test_latency_follows_the_mean_the_model_sets():
    """The histogram's own mean (sum/count) matches the model's latency mean: rules read what was simulated."""
    series, _ = run_fleet(small_spec())
    hist = series[0].histograms[catalog.TTFT]
    _, count, sums = histogram_counts(hist, catalog.TTFT_BUCKETS, series[0].restart)
    expected = (hist.observations * hist.mean).sum() / hist.observations.sum()
    assert sums[-1] / count[-1] == pytest.approx(expected, rel=1e-6)


def test_diurnal_shape():
    spec = small_spec(start=END - 3 * DAY, instances=3, spikes_per_day=0)
    series, _ = run_fleet(spec, [])
    for s in series:
        hour = (s.times % DAY) // 3600
        afternoon = s.running[(hour >= 13) & (hour < 16)].mean()
        night = s.running[(hour >= 1) & (hour < 4)].mean()
        assert afternoon > 1.4 * night, (s.instance.name, afternoon, night)


def _in(s, spec, incident):
    start, end = incident.window(spec.start, spec.end)
    return (s.times >= start) & (s.times < (end if end is not None else np.inf))


def _mean_latency(s, family, mask):
    hist = s.histograms[family]
    return (hist.mean[mask] * hist.observations[mask]).sum() / hist.observations[mask].sum()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_incident_changes_only_the_affected_instance(kind):
    spec = small_spec()
    incident = Incident(kind, ("vllm-1:8000",), start="12h", duration=3600)
    baseline, _ = run_fleet(spec)
    affected, truth = run_fleet(spec, [incident])
    # Other instances are bit-identical: each instance draws from its own seeded stream.
    for before, after in zip(baseline, affected):
        if before.instance.name == "vllm-1:8000":
            continue
        np.testing.assert_array_equal(before.waiting, after.waiting)
        np.testing.assert_array_equal(before.kv_usage, after.kv_usage)
        np.testing.assert_array_equal(before.increments["success_abort"], after.increments["success_abort"])
    b, a = series_of(baseline, "vllm-1:8000"), series_of(affected, "vllm-1:8000")
    inside = _in(a, spec, incident)
    assert inside.sum() == 60
    before_window = a.times < a.times[inside][0]
    np.testing.assert_array_equal(a.waiting[before_window], b.waiting[before_window])
    [record] = truth["incidents"]
    assert record["instance"] == "vllm-1:8000" and record["kind"] == kind
    assert parse_time(record["start"]) == spec.start + 12 * 3600

    if kind == "queue_buildup":
        assert a.waiting[inside].max() > 100 > b.waiting[inside].max()
        assert _mean_latency(a, catalog.TTFT, inside) > 10 * _mean_latency(b, catalog.TTFT, inside)
        assert _mean_latency(a, catalog.QUEUE_TIME, inside) > 10 * _mean_latency(b, catalog.QUEUE_TIME, inside)
    elif kind == "kv_pressure":
        late = inside & (a.times >= a.times[inside][0] + 300)
        assert a.kv_usage[late].mean() > 0.94
        assert a.increments["preemptions"][inside].sum() > 0 == b.increments["preemptions"][inside].sum()
    elif kind == "ttft_spike":
        assert _mean_latency(a, catalog.TTFT, inside) > 3 * _mean_latency(b, catalog.TTFT, inside)
        assert _mean_latency(a, catalog.ITL, inside) == pytest.approx(_mean_latency(b, catalog.ITL, inside))
    elif kind == "itl_regression":
        ratio = _mean_latency(a, catalog.ITL, inside) / _mean_latency(b, catalog.ITL, inside)
        assert ratio == pytest.approx(KINDS[kind].default_magnitude, rel=0.1)
    elif kind == "kv_linear_climb":
        climb = a.kv_usage[inside]
        slope = np.polyfit(a.times[inside] - a.times[inside][0], climb, 1)[0]
        assert slope == pytest.approx((1 - KINDS[kind].default_magnitude) / 3600, rel=0.05)
        assert parse_time(record["saturation_at"]) == spec.start + 13 * 3600
        after = (a.times >= spec.start + 13 * 3600) & (a.times < spec.start + 13 * 3600 + 1200)
        assert a.kv_usage[after].min() > 0.97
        assert a.increments["preemptions"][after].sum() > 0
    elif kind in ("error_burst", "client_aborts"):
        # The default generation (0.15+) reports internal errors as `error`, client aborts as `abort`.
        key = "success_error" if kind == "error_burst" else "success_abort"
        total = sum(a.increments[f"success_{reason}"] for reason in catalog.FINISHED_REASONS)
        share = a.increments[key][inside].sum() / total[inside].sum()
        assert share == pytest.approx(KINDS[kind].default_magnitude, abs=0.03)
    elif kind == "throughput_drop":
        served = a.increments["generation_tokens"][inside].sum() / b.increments["generation_tokens"][inside].sum()
        assert served < 0.9
        assert a.waiting[inside].max() > 20 > b.waiting[inside].max()
    elif kind == "batch_cap":
        assert a.running[inside].max() <= 4 < b.running[inside].mean()
        assert a.waiting[inside].mean() > 20 > b.waiting[inside].mean()
    elif kind == "gpu_xid":
        assert (a.gpu[catalog.GPU_XID][inside] == KINDS[kind].default_magnitude).all()
        assert a.gpu[catalog.GPU_XID][~inside].max() == 0
        late = inside & (a.times >= a.times[inside][0] + 120)
        assert a.increments["generation_tokens"][late].sum() == 0 and a.gpu[catalog.GPU_UTIL][late].max() < 10
        assert a.running[late].min() > 0  # stuck requests keep their slots
    elif kind == "gpu_memory_leak":
        free = a.gpu[catalog.GPU_FB_FREE]
        assert free[inside][-1] < 0.02 * catalog.GPU_MEMORY_MIB < free[inside][0]
        assert a.increments["success_error"][inside].sum() > 3 * b.increments["success_error"][inside].sum()
    elif kind == "low_cache_hit":
        rate_a = a.increments["prefix_hits"][inside].sum() / a.increments["prefix_queries"][inside].sum()
        rate_b = b.increments["prefix_hits"][inside].sum() / b.increments["prefix_queries"][inside].sum()
        assert rate_a == pytest.approx(rate_b * KINDS[kind].default_magnitude, rel=0.1)
    elif kind == "restart":
        assert not a.present[inside].any()
        assert a.restart[np.flatnonzero(inside)[-1] + 1]
        assert any(r["instance"] == "vllm-1:8000" for r in truth["restarts"])


def test_legacy_instances_expose_old_names(tmp_path):
    spec = small_spec(start=END - 3600, legacy_fraction=0.5)
    sim = simulate(tmp_path / "f.om", spec)
    legacy = {i["instance"] for i in sim.truth["instances"] if i["legacy_metric_names"]}
    assert len(legacy) == 2
    assert {i["generation"] for i in sim.truth["instances"] if i["instance"] in legacy} == {catalog.OLDEST}
    text = (tmp_path / "f.om").read_text()
    for name in legacy:
        assert f'vllm:gpu_cache_usage_perc{{job="vllm",instance="{name}"' in text
        assert f'vllm:kv_cache_usage_perc{{job="vllm",instance="{name}"' not in text
        assert f'vllm:time_per_output_token_seconds_bucket{{job="vllm",instance="{name}"' in text
        assert f'vllm:inter_token_latency_seconds_bucket{{job="vllm",instance="{name}"' not in text
        assert f'vllm:gpu_prefix_cache_hits_total{{job="vllm",instance="{name}"' in text
        assert f'vllm:prefix_cache_hits_total{{job="vllm",instance="{name}"' not in text


# §9 of the reference: which names each generation exposes (the renamed families and finished_reason="error").
GENERATION_NAMES = {
    "0.8.5-0.9.1": {"vllm:gpu_cache_usage_perc", "vllm:gpu_prefix_cache_hits_total",
                    "vllm:time_per_output_token_seconds_bucket"},
    "0.9.2-0.10.1": {"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "vllm:prefix_cache_hits_total",
                     "vllm:gpu_prefix_cache_hits_total", "vllm:time_per_output_token_seconds_bucket"},
    "0.10.2-0.11": {"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "vllm:prefix_cache_hits_total",
                    "vllm:gpu_prefix_cache_hits_total", "vllm:time_per_output_token_seconds_bucket",
                    "vllm:inter_token_latency_seconds_bucket"},
    "0.12-0.14": {"vllm:kv_cache_usage_perc", "vllm:prefix_cache_hits_total",
                  "vllm:inter_token_latency_seconds_bucket", 'finished_reason="error"'},
    "0.15+": {"vllm:kv_cache_usage_perc", "vllm:prefix_cache_hits_total", "vllm:inter_token_latency_seconds_bucket",
              'finished_reason="error"'},
}
RENAMED = set().union(*GENERATION_NAMES.values())


def test_each_generation_exposes_its_own_names_in_a_mixed_fleet(tmp_path):
    spec = small_spec(start=END - 1800, instances=5, generations=tuple(GENERATION_NAMES))
    simulate(tmp_path / "f.om", spec)
    lines = (tmp_path / "f.om").read_text().splitlines()
    for index, generation in enumerate(GENERATION_NAMES):
        mine = [line for line in lines if f'instance="vllm-{index}:8000"' in line]
        shown = {name for name in RENAMED if any(name in line for line in mine)}
        assert shown == GENERATION_NAMES[generation], generation
    # DCGM exporter series for each node, labelled as dcgm-exporter labels them.
    assert any(line.startswith('DCGM_FI_DEV_GPU_UTIL{job="dcgm",instance="vllm-0:9400",gpu="0"') for line in lines)


def test_generation_pinned_per_instance_and_unknown_generation_refused():
    spec = small_spec(instance_generations=(("vllm-2:8000", "0.10.2-0.11"),))
    series, truth = run_fleet(spec)
    assert [i["generation"] for i in truth["instances"]] == ["0.15+", "0.15+", "0.10.2-0.11", "0.15+"]
    with pytest.raises(ValueError, match="unknown vLLM generation.*0.7"):
        small_spec(generations=("0.7",))


def test_same_seed_same_file_other_seed_other_file(tmp_path):
    spec = small_spec(start=END - 6 * 3600)
    incidents = [Incident("ttft_spike", ("vllm-0:8000",), start="1h", duration=600)]
    digests = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        simulate(tmp_path / f"{name}.om", FleetSpec(**{**spec.__dict__, "seed": seed}), incidents,
                 truth_path=tmp_path / f"{name}.json")
        digests.append(hashlib.sha256((tmp_path / f"{name}.om").read_bytes()).hexdigest())
    assert digests[0] == digests[1] != digests[2]
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()


def test_shards_split_instances_without_changing_samples(tmp_path):
    spec = small_spec(start=END - 3600)
    whole = simulate(tmp_path / "whole.om", spec)
    split = simulate(tmp_path / "split.om", spec, shards=3)
    assert [p.name for p in split.paths] == ["split.0.om", "split.1.om", "split.2.om"]
    samples = lambda text: {line for line in text.splitlines() if not line.startswith("#")}  # noqa: E731
    shard_samples = [samples(p.read_text()) for p in split.paths]
    assert all(p.read_text().endswith("# EOF\n") for p in split.paths)
    assert set().union(*shard_samples) == samples(whole.paths[0].read_text())
    assert sum(map(len, shard_samples)) == len(samples(whole.paths[0].read_text()))
    forked = simulate(tmp_path / "forked.om", spec, shards=3, jobs=2)
    assert [p.read_bytes() for p in forked.paths] == [p.read_bytes() for p in split.paths]
    assert forked.bytes_written == split.bytes_written == sum(p.stat().st_size for p in split.paths)


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\d+(?:\.\d+)?) (\d{10})$')


def test_openmetrics_file_is_well_formed(tmp_path):
    """Families contiguous and typed before their samples, every series in time order, `# EOF` last."""
    spec = small_spec(start=END - 2 * 3600, restarts_per_day=0)
    simulate(tmp_path / "f.om", spec)
    lines = (tmp_path / "f.om").read_text().splitlines()
    assert lines[-1] == "# EOF"
    families_seen, current = [], None
    last_time: dict[str, int] = {}
    suffixes = ("_total", "_bucket", "_count", "_sum")
    per_family_series = defaultdict(set)
    for line in lines[:-1]:
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ")
            assert family not in families_seen, f"family {family} interleaved"
            families_seen.append(family)
            current = family
            continue
        if line.startswith("# HELP"):
            continue
        match = SAMPLE.match(line)
        assert match, line
        name, labels, _, ts = match.groups()
        base = next((name[: -len(sfx)] for sfx in suffixes if name.endswith(sfx) and name[: -len(sfx)] == current),
                    name)
        assert base == current, f"{name} outside its family {current}"
        key = name + (labels or "")
        assert int(ts) > last_time.get(key, 0), f"{key} out of order"
        last_time[key] = int(ts)
        per_family_series[current].add(key)
    assert len(per_family_series[catalog.TTFT]) == 4 * (len(catalog.TTFT_BUCKETS) + 3)
    assert len(per_family_series["vllm:request_success"]) == 4 * 4  # stop, length, abort, error (0.15+)
    assert 'le="1.0"' in "".join(per_family_series[catalog.TTFT])


def test_incident_file_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "incidents.yaml"
    path.write_text("incidents:\n  - kind: ttft_spike\n    instance: 1\n    start: 2h\n"
                    "  - kind: melting\n    instance: vllm-2\n    start: 1h\n")
    with pytest.raises(IncidentError, match=r"incidents.yaml:5: incidents\[1\]: kind: 'melting' is not one of"):
        load_incidents(path)
    path.write_text("- kind: ttft_spike\n  instance: 1\n  start: 2h\n  duration: soon\n")
    with pytest.raises(IncidentError, match=r"incidents.yaml:1: incidents\[0\]: duration: invalid duration"):
        load_incidents(path)
    path.write_text("- kind: ttft_spike\n  instances: [1, vllm-2]\n  start: '2025-12-31T10:00:00Z'\n"
                    "  duration: 15m\n  magnitude: 4\n")
    [incident] = load_incidents(path)
    assert incident.instances == ("vllm-1:8000", "vllm-2:8000")
    assert incident.window(0, 2e9) == (parse_time("2025-12-31T10:00:00Z"), parse_time("2025-12-31T10:15:00Z"))


def test_cli_writes_history_and_truth(tmp_path):
    incidents = tmp_path / "incidents.yaml"
    incidents.write_text("- kind: error_burst\n  instance: vllm-1:8000\n  start: 1h\n  duration: 20m\n")
    result = CliRunner().invoke(main, [
        "simulate", "--out", str(tmp_path / "f.om"), "--instances", "2", "--duration", "3h",
        "--end", "2026-01-01T00:00:00Z", "--scenario", "none", "--incidents", str(incidents),
        "--truth", str(tmp_path / "truth.json"), "--seed", "5"])
    assert result.exit_code == 0, result.output
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert [(r["kind"], r["instance"], r["start"], r["end"]) for r in truth["incidents"]] == [
        ("error_burst", "vllm-1:8000", "2025-12-31T22:00:00Z", "2025-12-31T22:20:00Z")]
    assert (tmp_path / "f.om").read_text().endswith("# EOF\n")
    bad = CliRunner().invoke(main, ["simulate", "--out", str(tmp_path / "g.om"), "--instances", "2",
                                    "--duration", "3d", "--scenario", "demo"])
    assert bad.exit_code != 0 and "no instance vllm-" in bad.output
    incidents.write_text("- kind: error_burst\n  instance: vllm-1:8000\n  start: 1h\n  magnitude: lots\n")
    bad = CliRunner().invoke(main, ["simulate", "--out", str(tmp_path / "g.om"), "--scenario", "none",
                                    "--incidents", str(incidents)])
    assert bad.exit_code != 0 and "incidents.yaml:1: incidents[0]: magnitude:" in bad.output


@pytest.mark.integration
def test_backfilled_history_answers_promql(promtool_bin):
    require_binary(processes.PROMETHEUS)
    spec = FleetSpec(start=END - 6 * 3600, end=END, instances=3, step=30, seed=11)
    incident = Incident("queue_buildup", ("vllm-2:8000",), start="4h", duration=1800, magnitude=1.3)
    # Two shards loaded by two promtool processes: the path a large fleet takes.
    with processes.simulated_prometheus(spec, [incident], shards=2, jobs=2) as (prom, sim):
        assert [p.name for p in sim.paths] == ["fleet.0.om", "fleet.1.om"]
        check_incident_visible(prom, sim)


def check_incident_visible(prom, sim):
    rate = prom.query("sum by (instance) (rate(vllm:generation_tokens_total[5m]))", time=END - 3600)
    assert {r["metric"]["instance"] for r in rate} == {"vllm-0:8000", "vllm-1:8000", "vllm-2:8000"}
    assert all(float(r["value"][1]) > 100 for r in rate)

    p95 = "histogram_quantile(0.95, sum by (le, instance) (rate(vllm:time_to_first_token_seconds_bucket[5m])))"
    [record] = sim.truth["incidents"]
    start, end = parse_time(record["start"]), parse_time(record["end"])
    during = {r["metric"]["instance"]: float(r["value"][1]) for r in prom.query(p95, time=end)}
    before = {r["metric"]["instance"]: float(r["value"][1]) for r in prom.query(p95, time=start - 600)}
    assert set(during) == {"vllm-0:8000", "vllm-1:8000", "vllm-2:8000"}
    assert during["vllm-2:8000"] > 20 * before["vllm-2:8000"]
    for other in ("vllm-0:8000", "vllm-1:8000"):
        assert during[other] < 3 * before[other]

    waiting = prom.query_range('vllm:num_requests_waiting{instance="vllm-2:8000"}', start - 1800, end, 60)
    values = np.array([float(v) for _, v in waiting[0]["values"]])
    times = np.array([float(t) for t, _ in waiting[0]["values"]])
    assert values[times < start].max() < 20 and values[times >= end - 300].min() > 200
