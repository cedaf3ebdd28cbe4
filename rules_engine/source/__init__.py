"""Sources of range vectors: a live Prometheus-compatible API, or a recorded snapshot replayed offline."""
from rules_engine.source.base import Source, SourceError
from rules_engine.source.frame import RangeFrame, evaluation_grid
from rules_engine.source.prometheus import PrometheusSource
from rules_engine.source.snapshot import SnapshotSource, record_snapshot

__all__ = ["PrometheusSource", "RangeFrame", "SnapshotSource", "Source", "SourceError", "evaluation_grid",
           "record_snapshot"]
