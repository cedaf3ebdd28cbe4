"""Serve a simulated fleet live over HTTP, as its exporters would, so Prometheus scrapes it.

One simulation covers [start, end]: the part up to the serve start is history (written for backfill by
`history_until`), the rest is served live. A scrape at wall time t answers each instance's latest simulated
step at or before t, written by the simulator's own writer (`write_history` with only that step present), so
counters continue the backfilled history, an instance that is down in the simulation (restart incident, scrape
gap) is absent from the scrape, and every server kind and metric the simulator writes is served with no code of
its own here. A scrape computes the series up to its step only (counters are sums from the range start), so its
cost grows with the time since the start (4 instances: 0.16 s at 1,500 steps, 0.22 s at 3,000). Timestamps are stripped: Prometheus stamps samples with its scrape time, as with a real exporter,
and marks the series of a vanished instance stale.

Incidents that should happen live are scheduled with `schedule`: offsets count from the serve start and repeat.
"""
from __future__ import annotations

import dataclasses
import http.server
import io
import json
import re
import threading
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from rules_engine.simulate.fleet import FleetSpec, InstanceSeries
from rules_engine.simulate.history import run_fleet, write_history
from rules_engine.simulate.incidents import Incident, resolve_start

CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_TIMESTAMP = re.compile(rb" [0-9]+\n")


def schedule(incidents: Iterable[Incident], serve_start: float, serve_end: float, every: float | None = None
             ) -> list[Incident]:
    """Incidents with offset starts counted from `serve_start` (absolute starts kept), repeated every `every`
    seconds until `serve_end` when given."""
    scheduled = []
    for incident in incidents:
        first = resolve_start(incident.start, serve_start)
        repeats = 1 if not every else max(1, int(np.ceil((serve_end - first) / every)))
        scheduled += [dataclasses.replace(incident, start=first + k * every if every else first)
                      for k in range(repeats)]
    return scheduled


class LiveFleet:
    """A simulated fleet over `spec`'s range whose state at any wall time inside it can be scraped."""

    def __init__(self, spec: FleetSpec, incidents: Iterable[Incident] = ()):
        self.spec = spec
        self.series, self.truth = run_fleet(spec, list(incidents))
        self._cache: tuple[tuple[int, ...], bytes] | None = None
        self._lock = threading.Lock()

    def _only(self, keep: list[np.ndarray]) -> list[InstanceSeries]:
        return [dataclasses.replace(s, present=s.present & mask) for s, mask in zip(self.series, keep)]

    def _at(self, steps: tuple[int, ...]) -> list[InstanceSeries]:
        """Each instance's series cut after its step, with only that step present."""
        cut = []
        for s, step in zip(self.series, steps):
            head = _head(s, s.times.size, step + 1)
            present = np.zeros(step + 1, bool)
            present[step:] = s.present[step:step + 1]
            cut.append(dataclasses.replace(head, present=present))
        return cut

    def history_until(self, out: Path, until: float) -> int:
        """Write the samples at or before `until` as OpenMetrics with timestamps (for promtool); bytes written."""
        with open(out, "wb", buffering=1 << 20) as handle:
            return write_history(handle, self._only([s.times <= until for s in self.series]))

    def exposition(self, now: float) -> bytes:
        """The scrape at wall time `now`: each instance's latest step at or before `now`, without timestamps.
        Raises ValueError outside the simulated range."""
        if not self.spec.start <= now <= self.spec.end:
            raise ValueError(f"{now:.0f} is outside the simulated range [{self.spec.start:.0f}, {self.spec.end:.0f}]")
        steps = tuple(int(np.searchsorted(s.times, now, side="right")) - 1 for s in self.series)
        with self._lock:
            if self._cache is not None and self._cache[0] == steps:
                return self._cache[1]
            buffer = io.BytesIO()
            write_history(buffer, self._at(tuple(max(step, 0) for step in steps)))
            body = _TIMESTAMP.sub(b"\n", buffer.getvalue())
            self._cache = (steps, body)
            return body


def _head(value, length: int, keep: int):
    """`value` with every per-step array (first axis `length`) cut to its first `keep` steps, through dicts, lists,
    tuples and dataclasses, so whatever per-step state the simulator keeps (TGI and SGLang series included) is cut
    alike."""
    if isinstance(value, np.ndarray):
        return value[:keep] if value.ndim and value.shape[0] == length else value
    if isinstance(value, dict):
        return {key: _head(item, length, keep) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_head(item, length, keep) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _head(getattr(value, f.name), length, keep) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    return value


def make_server(fleet: LiveFleet, host: str, port: int, clock=time.time) -> http.server.ThreadingHTTPServer:
    """An HTTP server for `fleet`: GET /metrics (the scrape), /truth (ground truth JSON), /-/ready."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # scrapes every few seconds: the access log would drown the output
            pass

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                try:
                    self._answer(200, fleet.exposition(clock()), CONTENT_TYPE)
                except ValueError as error:  # past the end of the simulated range: say so, as a failed scrape
                    self._answer(503, f"{error}\n".encode(), "text/plain; charset=utf-8")
            elif path == "/truth":
                self._answer(200, json.dumps(fleet.truth, indent=1).encode(), "application/json")
            elif path == "/-/ready":
                self._answer(200, b"ready\n", "text/plain; charset=utf-8")
            else:
                self._answer(404, b"not found: try /metrics, /truth or /-/ready\n", "text/plain; charset=utf-8")

        def _answer(self, status: int, body: bytes, content_type: str):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
