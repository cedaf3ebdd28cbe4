"""Histogram queries: bucket boundaries as `le` matchers, and the signals a histogram rule compares."""
from __future__ import annotations

from rules_engine.spec.models import format_duration


def le_regex(boundary: float) -> str:
    """A regex matching the `le` label of a bucket boundary however the client spelled it ("1", "1.0", "0.25")."""
    text = repr(float(boundary))
    if text.endswith(".0"):
        return text[:-2] + "([.]0+)?"
    return text.replace(".", "[.]") + "0*"


def histogram_signal(histogram) -> str:
    """The PromQL of a histogram measure (a regression rule's `histogram:`): mean, share above a boundary, or a
    quantile, of rates over `rate_window`, aggregated by the histogram's `by` labels."""
    by = ", ".join(histogram.by)
    rate = format_duration(histogram.rate_window)
    count = f"sum by ({by}) (rate({histogram.metric}_count[{rate}]))"
    if histogram.measure == "mean":
        return f"sum by ({by}) (rate({histogram.metric}_sum[{rate}])) / {count}"
    if histogram.measure == "share_above":
        bucket = f'sum by ({by}) (rate({histogram.metric}_bucket{{le=~"{le_regex(histogram.le)}"}}[{rate}]))'
        return f"1 - {bucket} / {count}"
    by_le = ", ".join(["le", *histogram.by])
    return f"histogram_quantile({histogram.q!r}, sum by ({by_le}) (rate({histogram.metric}_bucket[{rate}])))"
