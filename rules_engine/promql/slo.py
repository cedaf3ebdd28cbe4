"""The range queries of an SLO's SLI: raw counters (good or errors, and total) or a timeslice signal."""
from __future__ import annotations

from rules_engine.promql.histograms import le_regex
from rules_engine.promql.selectors import inject_selector, matcher_text, quote
from rules_engine.spec.promql import parse_selector
from rules_engine.spec.slo import SLO


def slo_queries(slo: SLO) -> dict[str, str]:
    """The range queries an SLO needs, by role: `good` or `errors` plus `total` (counters), or `signal`."""
    sli = slo.sli
    if sli.ratio is not None:
        role = "good" if sli.ratio.good is not None else "errors"
        return {role: inject_selector(sli.ratio.good or sli.ratio.errors, slo.selector),  # type: ignore[arg-type]
                "total": inject_selector(sli.ratio.total, slo.selector)}
    if sli.latency is not None:
        return {"good": inject_selector(latency_bucket(slo, sli.latency.threshold), ""),
                "total": inject_selector(latency_series(slo, "_count"), "")}
    return {"signal": inject_selector(sli.timeslices.signal, slo.selector)}  # type: ignore[union-attr]


# Whether an SLI type's compiled burn-rate alerts mean what the engine evaluates. Timeslice SLIs (percentile
# slices: "p99 TTFT <= 0.5 s in 99% of slices") are judged per aligned slice by the engine, which the compiled
# `avg_over_time(...[w:slice])` only approximates: `rules-engine monitor` evaluates them.
SLI_EXACT_IN_PROMQL = {"ratio": True, "latency": True, "timeslices": False}


def slo_exact_in_promql(slo: SLO) -> bool:
    return SLI_EXACT_IN_PROMQL[slo.sli.type]


def latency_selectors(slo: SLO, suffix: str, *extra_matchers: str) -> list[str]:
    """`<histogram><suffix>{...}` of a latency SLI and of each of its fallback names, with the SLO's and the SLI's
    selector matchers."""
    latency = slo.sli.latency
    assert latency is not None
    matchers = [*_matchers(slo.selector, latency.selector), *extra_matchers]
    body = f"{{{', '.join(matchers)}}}" if matchers else ""
    return [f"{name}{suffix}{body}" for name in (latency.histogram, *latency.fallback)]


def latency_series(slo: SLO, suffix: str, *extra_matchers: str) -> str:
    """The series of a latency SLI: its histogram's, or the first of its names present (`new or old`), so a server
    exposing both names is counted once."""
    return " or ".join(latency_selectors(slo, suffix, *extra_matchers))


def latency_bucket(slo: SLO, boundary: float) -> str:
    """The bucket series of a latency SLI at `boundary` (the requests at most that slow), however `le` is spelled."""
    return latency_series(slo, "_bucket", f"le=~{quote(le_regex(boundary))}")


def _matchers(*selectors: str) -> list[str]:
    found: list[str] = []
    for selector in selectors:
        if selector.strip():
            found.extend(matcher_text(m) for m in parse_selector(selector))
    return found
