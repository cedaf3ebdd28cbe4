"""http steps honour the proxy environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) as the engine's `requests` calls
do: a real forwarding proxy on 127.0.0.1 records each request it carried, plain-http ones in absolute form and
https ones as a CONNECT tunnel to a TLS orchestrator whose certificate is checked end to end."""
from __future__ import annotations

import base64
import http.client
import select
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

import pytest

from rules_engine.playbooks import outbound
from rules_engine.playbooks import workflow as wf
from tests.processes import serving
from tests.test_playbooks import alert, ingest, playbook, run_claimed, runtime, store  # noqa: F401 (fixture)
from tests.test_playbooks_orchestrator import running_orchestrator
from tests.test_source_prometheus import _make_certificates

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@dataclass
class ProxyLog:
    # (method, absolute URL or CONNECT host:port, the Proxy-Authorization header or None)
    carried: list[tuple[str, str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _proxy_handler(log: ProxyLog) -> type:
    class Proxy(BaseHTTPRequestHandler):
        """Forwards absolute-form requests and tunnels CONNECT, to 127.0.0.1 only."""

        def log_message(self, *args):
            pass

        def _forward(self):
            target = urlsplit(self.path)
            with log.lock:
                log.carried.append((self.command, self.path, self.headers.get("Proxy-Authorization")))
            if target.hostname != "127.0.0.1":
                self.send_error(403)
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-authorization", "connection")}
            upstream.request(self.command, target.path or "/", body=body, headers=headers)
            answer = upstream.getresponse()
            payload = answer.read()
            upstream.close()
            self.send_response(answer.status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        def do_CONNECT(self):
            with log.lock:
                log.carried.append(("CONNECT", self.path, self.headers.get("Proxy-Authorization")))
            host, _, port = self.path.rpartition(":")
            if host != "127.0.0.1":
                self.send_error(403)
                return
            upstream = socket.create_connection((host, int(port)), timeout=10)
            self.send_response(200, "Connection established")
            self.end_headers()
            ends = [self.connection, upstream]
            try:
                while True:
                    readable, _, _ = select.select(ends, [], [], 10)
                    if not readable:
                        return
                    for end in readable:
                        chunk = end.recv(65536)
                        if not chunk:
                            return
                        (upstream if end is self.connection else self.connection).sendall(chunk)
            finally:
                upstream.close()
                self.close_connection = True

    return Proxy


@pytest.fixture
def proxy(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    log = ProxyLog()
    with serving(_proxy_handler(log)) as url:
        yield url, log


def _scale_out(store, orchestrator_url: str):  # noqa: F811
    rt = runtime(store, playbook(approval={"required": False}), variables={"orchestrator_url": orchestrator_url})
    ingest(rt, alert())
    return run_claimed(rt)


def test_an_http_step_goes_through_the_environments_proxy(store, proxy, monkeypatch):  # noqa: F811
    proxy_url, log = proxy
    monkeypatch.setenv("HTTP_PROXY", proxy_url.replace("http://", "http://engine:p%40ss@"))
    with running_orchestrator() as orch:
        assert _scale_out(store, orch.url) == wf.COMPLETED
    assert [c.path for c in orch.calls] == ["/v1/scale"]
    assert "Proxy-Authorization" not in orch.calls[0].headers
    assert log.carried == [("POST", f"{orch.url}/v1/scale", "Basic " + base64.b64encode(b"engine:p@ss").decode())]


def test_no_proxy_sends_directly(store, proxy, monkeypatch):  # noqa: F811
    proxy_url, log = proxy
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    with running_orchestrator() as orch:
        assert _scale_out(store, orch.url) == wf.COMPLETED
    assert [c.path for c in orch.calls] == ["/v1/scale"]
    assert log.carried == []


def test_https_goes_through_a_connect_tunnel_with_the_certificate_checked(proxy, monkeypatch, tmp_path):
    proxy_url, log = proxy
    ca_cert, cert, key = _make_certificates(tmp_path)
    monkeypatch.setenv("HTTPS_PROXY", proxy_url)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_cert))  # the test CA, for ssl.create_default_context()
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    orchestrator = running_orchestrator()
    orchestrator.server.socket = tls.wrap_socket(orchestrator.server.socket, server_side=True)
    with orchestrator as orch:
        url = orch.url.replace("http://", "https://") + "/v1/scale"
        answer = outbound.send("POST", url, b"{}", {"Content-Type": "application/json"}, deadline=10)
        assert answer.status == 200, answer
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "nothing-trusted.pem"))
        refused = outbound.send("POST", url, b"{}", {"Content-Type": "application/json"}, deadline=10)
    assert refused.status is None and not refused.sent and "CERTIFICATE_VERIFY_FAILED" in refused.error
    port = urlsplit(url).port
    assert log.carried == [("CONNECT", f"127.0.0.1:{port}", None)] * 2
    assert [c.path for c in orch.calls] == ["/v1/scale"]
