"""Sources of range vectors: a live Prometheus-compatible API, or a recorded snapshot replayed offline; and the one
client every caller uses to reach that API."""
from rules_engine.source.base import Source, SourceError
from rules_engine.source.client import PrometheusClient
from rules_engine.source.frame import RangeFrame, evaluation_grid
from rules_engine.source.prometheus import PrometheusSource
from rules_engine.source.snapshot import SnapshotSource, record_snapshot

__all__ = ["PrometheusClient", "PrometheusSource", "RangeFrame", "SnapshotSource", "Source", "SourceError",
           "evaluation_grid", "record_snapshot"]
