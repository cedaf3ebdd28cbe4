"""Sources of range vectors: a live Prometheus-compatible API, or a recorded snapshot replayed offline."""
from rules_engine.source.base import Source, SourceError
from rules_engine.source.frame import RangeFrame, evaluation_grid, frame_from_matrix
from rules_engine.source.prometheus import PrometheusSource, prometheus_options, source_from_options

__all__ = ["PrometheusSource", "RangeFrame", "Source", "SourceError", "evaluation_grid", "frame_from_matrix",
           "prometheus_options", "source_from_options"]
