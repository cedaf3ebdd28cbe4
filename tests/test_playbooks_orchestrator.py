"""A test orchestrator: the deployment API that playbook http steps call, on 127.0.0.1 in a thread.

It is a real HTTP server (http.server), so steps go through sockets, timeouts and status codes as in production.
It records every call, can answer with scripted status codes first (to exercise retries), can trickle its answer
on chosen paths a byte at a time (to exercise deadlines), and serves /metrics with gauges a test sets, so a
Prometheus scraping it sees the effect of a change (closing the loop for verify).
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import requests


@dataclass
class Call:
    method: str
    path: str
    body: object
    headers: dict[str, str]


@dataclass
class Orchestrator:
    url: str = ""
    calls: list[Call] = field(default_factory=list)
    scripted_statuses: list[int] = field(default_factory=list)  # answered (in order) before the normal 200s
    # series text -> value, served at /metrics, e.g. {'test_waiting{model_name="m"}': 10}
    gauges: dict[str, float] = field(default_factory=dict)
    on_call: Callable[[Call], None] | None = None  # e.g. apply a change to the gauges
    trickle_paths: set[str] = field(default_factory=set)  # answered one byte per `trickle_interval`
    trickle_interval: float = 0.1
    closing: threading.Event = field(default_factory=threading.Event)  # set at shutdown: trickling stops
    lock: threading.Lock = field(default_factory=threading.Lock)

    def calls_to(self, path: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.path == path]


def _handler(orchestrator: Orchestrator):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def do_GET(self):
            if self.path != "/metrics":
                self.send_error(404)
                return
            with orchestrator.lock:
                lines = [f"{series} {value}" for series, value in orchestrator.gauges.items()]
            names = sorted({series.split("{")[0] for series in orchestrator.gauges})
            text = "".join(f"# TYPE {name} gauge\n" for name in names) + "\n".join(lines) + "\n"
            self._answer(200, text.encode(), "text/plain; version=0.0.4")

        def _record(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            call = Call(self.command, self.path, body, dict(self.headers))
            with orchestrator.lock:
                orchestrator.calls.append(call)
                status = orchestrator.scripted_statuses.pop(0) if orchestrator.scripted_statuses else 200
            if status < 300 and orchestrator.on_call is not None:
                orchestrator.on_call(call)
            if self.path in orchestrator.trickle_paths:
                self._trickle(status, json.dumps({"ok": status < 300}).encode())
                return
            self._answer(status, json.dumps({"ok": status < 300}).encode(), "application/json")

        def _trickle(self, status: int, payload: bytes):
            raw = (f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
            try:
                for i in range(len(raw)):
                    if orchestrator.closing.wait(orchestrator.trickle_interval):
                        return
                    self.wfile.write(raw[i:i + 1])
                    self.wfile.flush()
            except OSError:  # the client gave up
                pass
            self.close_connection = True

        do_POST = do_PUT = do_PATCH = do_DELETE = _record

        def _answer(self, status: int, payload: bytes, content_type: str):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


class running_orchestrator:
    """Context manager: an Orchestrator listening on a free 127.0.0.1 port."""

    def __init__(self, **kwargs):
        self.orchestrator = Orchestrator(**kwargs)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.orchestrator))
        self.server.daemon_threads = True
        self.orchestrator.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Orchestrator:
        self.thread.start()
        return self.orchestrator

    def __exit__(self, *exc):
        self.orchestrator.closing.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_orchestrator_records_calls_scripts_statuses_and_serves_metrics():
    with running_orchestrator(scripted_statuses=[503], gauges={'test_waiting{model_name="m"}': 3}) as orch:
        first = requests.post(f"{orch.url}/v1/scale", json={"a": 1}, timeout=5)
        second = requests.post(f"{orch.url}/v1/scale", json={"a": 2}, timeout=5)
        metrics = requests.get(f"{orch.url}/metrics", timeout=5).text
    assert (first.status_code, second.status_code) == (503, 200)
    assert [c.body for c in orch.calls_to("/v1/scale")] == [{"a": 1}, {"a": 2}]
    assert 'test_waiting{model_name="m"} 3' in metrics and "# TYPE test_waiting gauge" in metrics
