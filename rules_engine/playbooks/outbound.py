"""One outbound call of an http step, within a total deadline, saying whether anything reached the target.

`requests`' timeout bounds each socket read, so a server trickling one byte a second holds a call with
`timeout: 2s` for as long as it likes. Here a timer shuts the socket down when the deadline passes, whatever
phase the call is in. Whether the request may have reached the target decides the rollback: a connection that
was never established (refused, unreachable, unresolvable) changed nothing; after the first byte is sent, the
outcome is unknown.

The proxy environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY, in either case) applies as it does to every
other outbound call of the engine, which `requests` makes: the same rules decide, read through `requests.utils`. An
http:// URL is sent to the proxy in absolute form; an https:// one goes through a CONNECT tunnel, so TLS (and its
certificate check) is still end to end with the target. A refused CONNECT sent nothing to the target.
"""
from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
import base64
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

from requests.utils import get_environ_proxies, select_proxy

RESPONSE_KEEP = 2000  # characters of a response body kept in the step output


def backoff_pause(base: float, retry: int, cap: float = float("inf")) -> float:
    """Seconds to wait before retry number `retry` (1 for the first retry): base, 2 x base, 4 x base, ... at most
    `cap`. http steps and outbound notifications back off on this one schedule."""
    return min(base * 2 ** max(retry - 1, 0), cap)


def worth_retrying(answer: "Answer") -> bool:
    """Whether another attempt may succeed: no answer (refused, timed out, cut off), 5xx, 429 or 408. Any other
    status is the target's final word on this request."""
    return answer.status is None or answer.status >= 500 or answer.status in (408, 429)


@dataclass(frozen=True)
class Answer:
    """What one attempt came to: a status (and body), or an error; `sent`: the request may have reached the target."""

    sent: bool
    seconds: float
    status: int | None = None
    body: str = ""
    error: str | None = None

    def record(self) -> dict:
        if self.status is not None:
            return {"status": self.status, "seconds": round(self.seconds, 4)}
        return {"error": self.error, "sent": self.sent, "seconds": round(self.seconds, 4)}


def proxy_for(url: str) -> SplitResult | None:
    """The proxy the environment names for `url` (None: connect directly), by the rules `requests` follows."""
    chosen = select_proxy(url, get_environ_proxies(url))
    if not chosen:
        return None
    return urlsplit(chosen if "://" in chosen else f"http://{chosen}")


def _connection(parts: SplitResult, proxy: SplitResult | None, deadline: float
                ) -> tuple[http.client.HTTPConnection, dict[str, str]]:
    """The connection to open for `parts` and the headers the proxy needs on the request itself."""
    if proxy is None:
        if parts.scheme == "https":
            return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=deadline,
                                               context=ssl.create_default_context()), {}
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=deadline), {}
    if proxy.scheme != "http":
        raise ValueError(f"proxy {proxy.scheme}://{proxy.hostname}: only http:// proxies are supported")
    credentials = {}
    if proxy.username is not None:
        pair = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
        credentials["Proxy-Authorization"] = "Basic " + base64.b64encode(pair).decode()
    if parts.scheme == "https":
        tunnelled = http.client.HTTPSConnection(proxy.hostname, proxy.port or 80, timeout=deadline,
                                                context=ssl.create_default_context())
        tunnelled.set_tunnel(parts.hostname, parts.port, headers=credentials)
        return tunnelled, {}
    return http.client.HTTPConnection(proxy.hostname, proxy.port or 80, timeout=deadline), credentials


def send(method: str, url: str, body: bytes | None, headers: dict[str, str], deadline: float) -> Answer:
    """Send one request and read its whole answer within `deadline` seconds (connect included)."""
    parts = urlsplit(url)
    started = time.monotonic()
    proxy = proxy_for(url)
    try:
        connection, proxy_headers = _connection(parts, proxy, deadline)
    except ValueError as error:
        return Answer(False, 0.0, error=str(error))
    # Through a proxy, a plain-http request names its whole target; the proxy's credentials go with it.
    target = url.split("#", 1)[0] if proxy is not None and parts.scheme == "http" else None
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        if connection.sock is not None:
            try:
                connection.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(deadline, cut)
    timer.daemon = True
    timer.start()
    try:
        try:
            connection.connect()
        except OSError as error:  # refused, unreachable, unresolvable, or too slow: nothing was sent
            late = expired.is_set() or isinstance(error, TimeoutError)
            via = f" (via proxy {proxy.hostname}:{proxy.port or 80})" if proxy is not None else ""
            return Answer(False, time.monotonic() - started,
                          error=(f"not connected within {deadline:.3g}s" if late
                                 else f"{type(error).__name__}: {error}") + via)
        if expired.is_set():
            return Answer(False, time.monotonic() - started, error=f"not connected within {deadline:.3g}s")
        try:
            path = target or (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            connection.request(method, path, body=body, headers={**headers, **proxy_headers})
            response = connection.getresponse()
            text = response.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as error:
            late = expired.is_set() or isinstance(error, TimeoutError)
            return Answer(True, time.monotonic() - started,
                          error=f"no complete answer within {deadline:.3g}s (total deadline)" if late
                          else f"{type(error).__name__}: {error}")
        if expired.is_set():  # the shutdown raced a complete read: still late
            return Answer(True, time.monotonic() - started, error=f"no complete answer within {deadline:.3g}s")
        return Answer(True, time.monotonic() - started, status=response.status, body=text[:RESPONSE_KEEP])
    finally:
        timer.cancel()
        connection.close()

