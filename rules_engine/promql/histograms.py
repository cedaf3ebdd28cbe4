"""Histogram queries: bucket boundaries as `le` matchers, and the signals a histogram rule compares."""
from __future__ import annotations

from rules_engine.spec.models import format_duration


def le_regex(boundary: float) -> str:
    """A regex matching the `le` label of a bucket boundary however the client spelled it ("1", "1.0", "0.25")."""
    text = repr(float(boundary))
    if text.endswith(".0"):
        return text[:-2] + "([.]0+)?"
    return text.replace(".", "[.]") + "0*"


def renamed(names: list[str], suffix: str, matchers: str = "", wrap: str = "{}") -> str:
    """`wrap` of each name's series joined with `or`: the first name that has a series for a label set wins, so
    a server exposing a histogram under its old and new name (vLLM 0.10.2-0.11) is counted once."""
    return " or ".join(wrap.format(f"{name}{suffix}{matchers}") for name in names)


def histogram_signal(histogram) -> str:
    """The PromQL of a histogram measure (a regression rule's `histogram:`): mean, share above a boundary, or a
    quantile, of rates over `rate_window`, aggregated by the histogram's `by` labels."""
    by = ", ".join(histogram.by)
    names = [histogram.metric, *histogram.fallback]
    rate = "rate({}[" + format_duration(histogram.rate_window) + "])"
    count = f"sum by ({by}) ({renamed(names, '_count', wrap=rate)})"
    if histogram.measure == "mean":
        return f"sum by ({by}) ({renamed(names, '_sum', wrap=rate)}) / {count}"
    if histogram.measure == "share_above":
        le = f'{{le=~"{le_regex(histogram.le)}"}}'
        return f"1 - sum by ({by}) ({renamed(names, '_bucket', le, rate)}) / {count}"
    by_le = ", ".join(["le", *histogram.by])
    return f"histogram_quantile({histogram.q!r}, sum by ({by_le}) ({renamed(names, '_bucket', wrap=rate)}))"
