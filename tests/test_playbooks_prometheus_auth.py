"""Verify steps against a Prometheus that requires a bearer token (as a Mimir or an authenticating proxy does).

Prometheus' own web config knows only basic auth, so a small reverse proxy on 127.0.0.1 stands in front of the
real Prometheus: it answers 401 to a request without `Authorization: Bearer <token>` and forwards the rest. The
playbook runtime is built by the server from its `prometheus:` config section, the way `serve` builds it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Iterator

import pytest
import requests

from rules_engine.playbooks import workflow as wf
from rules_engine.server.app import EXTENSION, create_app, shutdown
from tests import processes
from tests.test_playbooks import alert, get, ingest, run_claimed, verify_playbook
from tests.test_playbooks_orchestrator import running_orchestrator
from tests.test_server import config

TOKEN = "prom-token-7f3a"


@dataclass
class BearerProxy:
    url: str = ""
    seen: list[dict[str, str]] = field(default_factory=list)  # headers of every request, refused ones included


@contextlib.contextmanager
def bearer_token_proxy(upstream: str, token: str) -> Iterator[BearerProxy]:
    """A reverse proxy to `upstream` that lets through only requests carrying `Authorization: Bearer <token>`."""
    proxy = BearerProxy()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _forward(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            proxy.seen.append(dict(self.headers))
            if self.headers.get("Authorization") != f"Bearer {token}":
                self._answer(401, b"missing or wrong bearer token\n", "text/plain",
                             {"WWW-Authenticate": 'Bearer realm="prometheus"'})
                return
            headers = {name: value for name, value in self.headers.items()
                       if name.lower() in ("content-type", "accept")}
            answer = requests.request(self.command, upstream + self.path, data=body, headers=headers, timeout=30)
            self._answer(answer.status_code, answer.content, answer.headers.get("Content-Type", ""))

        do_GET = do_POST = _forward

        def _answer(self, status: int, payload: bytes, content_type: str, extra: dict[str, str] | None = None):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

    with processes.serving(Handler) as url:
        proxy.url = url
        yield proxy


@contextlib.contextmanager
def served_runtime(tmp_path, orchestrator_url: str, prometheus: dict, condition: dict):
    """The playbook runtime of an app built from a server config with this `prometheus:` section."""
    settings = config(tmp_path, prometheus=prometheus, variables={"orchestrator_url": orchestrator_url})
    app = create_app(settings, playbooks={"pb": verify_playbook(condition)}, start_runner=False)
    try:
        yield app.extensions[EXTENSION].runtime
    finally:
        shutdown(app)


@pytest.mark.integration
def test_verify_step_reaches_a_prometheus_that_requires_a_bearer_token(tmp_path, prometheus):
    (tmp_path / "prometheus-token").write_text(TOKEN + "\n")
    with bearer_token_proxy(prometheus.url, TOKEN) as proxy, running_orchestrator() as orch:
        section = {"url": proxy.url, "bearer_token_file": str(tmp_path / "prometheus-token"),
                   "headers": {"X-Scope-OrgID": "fleet-a"}}
        with served_runtime(tmp_path, orch.url, section, {"below": 1}) as rt:
            workflow_id = ingest(rt, alert(instance="a")).created[0]
            assert run_claimed(rt) == wf.COMPLETED
            check = get(rt, workflow_id).steps[2]
    assert check.state == wf.STEP_SUCCEEDED and check.output["value"] == 0.5
    assert proxy.seen and all(h["Authorization"] == f"Bearer {TOKEN}" and h["X-Scope-OrgID"] == "fleet-a"
                              for h in proxy.seen)
    assert orch.calls_to("/v1/undo") == []


@pytest.mark.integration
def test_without_the_token_the_verify_step_fails_with_the_401_and_the_change_is_rolled_back(tmp_path, prometheus):
    with bearer_token_proxy(prometheus.url, TOKEN) as proxy, running_orchestrator() as orch:
        with served_runtime(tmp_path, orch.url, {"url": proxy.url}, {"below": 1}) as rt:
            workflow_id = ingest(rt, alert(instance="a")).created[0]
            assert run_claimed(rt) == wf.ROLLED_BACK
            found = get(rt, workflow_id)
    check = found.steps[2]
    assert check.state == wf.STEP_FAILED
    assert check.note == (f"Prometheus at {proxy.url} refused the credentials (HTTP 401 Unauthorized): check the "
                          f"bearer token or basic auth (query vector(0.5)): text: 'missing or wrong bearer token'")
    # The recommend step's current-settings lookup fell back to defaults, saying why; a 401 is an answer, not
    # retried: one request for the lookup, one for the verify query.
    assert "refused the credentials (HTTP 401" in found.steps[0].output["current_source"]
    assert len(proxy.seen) == 2
    assert found.steps[3].state == wf.STEP_SUCCEEDED and len(orch.calls_to("/v1/undo")) == 1
