"""What went wrong between us and a Prometheus-compatible API, in words a person can act on.

A failed request surfaces as a chain of requests/urllib3/ssl/socket exceptions or as an HTTP answer that may be
Prometheus' error JSON, a proxy's text, or an SSO login page. These functions turn either into one sentence that
names the server, what was asked, and the likely fix (CA file, credentials, path prefix, timeout).
"""
from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
from http import HTTPStatus
from typing import Iterator
from urllib.parse import urlsplit

import requests

# Worth retrying: the server or something in front of it is overloaded or restarting. Any other 4xx is an answer.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def transport_error(exc: BaseException, url: str, timeout: float, retries: int, what: str) -> str:
    """No HTTP answer at all: TLS, timeout, refused connection, unknown host."""
    causes = list(_causes(exc))
    attempts = f", after {retries + 1} attempts" if retries else ""
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (f"TLS certificate of Prometheus at {url} not trusted: {cause.verify_message}; pass the "
                    f"CA that signed it with --ca-file, or --insecure-skip-verify ({what})")
    for cause in causes:
        if isinstance(cause, ssl.SSLError):
            reason = getattr(cause, "reason", None) or str(cause)
            return f"TLS handshake with Prometheus at {url} failed: {reason} ({what})"
    for cause in causes:
        if isinstance(cause, (requests.Timeout, socket.timeout, TimeoutError)) or "timed out" in str(cause):
            return (f"no answer from Prometheus at {url} within {timeout:g}s{attempts} for {what}; "
                    f"a slow query needs a larger --timeout or a shorter range / longer step")
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return f"cannot reach Prometheus at {url}: connection refused{attempts} ({what})"
        if isinstance(cause, socket.gaierror):
            return f"cannot reach Prometheus at {url}: host {urlsplit(url).hostname} not found ({what})"
        if isinstance(cause, OSError) and cause.strerror:
            return f"cannot reach Prometheus at {url}: {cause.strerror.lower()}{attempts} ({what})"
    return f"cannot reach Prometheus at {url}: {_innermost_message(causes)}{attempts} ({what})"


def broken_answer(exc: BaseException, url: str, timeout: float, what: str) -> str:
    """An answer that began and then broke off: the connection closed early, or nothing came for `timeout`."""
    causes = list(_causes(exc))
    if any(isinstance(cause, (requests.Timeout, socket.timeout, TimeoutError)) or "timed out" in str(cause)
           for cause in causes):
        return (f"Prometheus at {url} sent nothing for {timeout:g}s in the middle of its answer to {what}; "
                f"a slow server needs a larger --timeout")
    return f"the answer of Prometheus at {url} to {what} broke off part-way: {_innermost_message(causes)}"


def status_error(status: int, reason: str, body: bytes, content_type: str, url: str, retries: int,
                 what: str) -> str:
    """An HTTP answer other than 200: credentials, access, a wrong path prefix, or Prometheus' own error."""
    if not reason:
        with contextlib.suppress(ValueError):
            reason = HTTPStatus(status).phrase
    answer = _error_answer(body)
    detail = f"{answer[0]}: {answer[1]}" if answer else text_excerpt(body, content_type)
    if status in (401, 407):
        return (f"Prometheus at {url} refused the credentials (HTTP {status} {reason}): check the bearer "
                f"token or basic auth ({what}){_suffix(detail)}")
    if status == 403:
        return f"Prometheus at {url} denied access (HTTP 403 Forbidden) ({what}){_suffix(detail)}"
    if status == 404:
        return (f"no Prometheus API at {url} (HTTP 404 for /api/v1/...): check the URL and its path "
                f"prefix, e.g. http://mimir/prometheus ({what}){_suffix(detail)}")
    retried = f" after {retries + 1} attempts" if status in RETRY_STATUSES and retries else ""
    if answer:
        return f"Prometheus at {url} rejected {what} (HTTP {status}{retried}): {detail}"
    return f"Prometheus at {url} answered HTTP {status} {reason}{retried} to {what}{_suffix(detail)}"


def text_excerpt(body: bytes, content_type: str, limit: int = 160) -> str:
    """A short quote of a body that is not Prometheus JSON; an HTML page is quoted by its title."""
    text = body[:4096].decode("utf-8", errors="replace")
    is_html = "html" in content_type.lower() or text.lstrip().lower().startswith(("<!doctype html", "<html"))
    if is_html:
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.S | re.I)
        text = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", text, flags=re.S | re.I)
        text = re.sub(r"<[^>]+>", " ", text)
        if title:
            text = title.group(1)
    text = " ".join(text.split())
    if not text:
        return "an empty body"
    kind = "an HTML page" if is_html else "text"
    return f"{kind}: {text[:limit]!r}" + ("..." if len(text) > limit else "")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (requests → urllib3 MaxRetryError.reason → OSError ...)."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [getattr(current, "reason", None), current.__cause__, current.__context__, *current.args]
        pending += [item for item in linked if isinstance(item, BaseException)]


def _innermost_message(causes: list[BaseException]) -> str:
    message = str(causes[-1]) if causes else "unknown error"
    # urllib3 prefixes its messages with object reprs ("<urllib3.connection.HTTPConnection object at 0x..>: ").
    return re.sub(r"<[^>]+>: ", "", message)


def _error_answer(body: bytes) -> tuple[str, str] | None:
    """(errorType, error) from a Prometheus API error body, if the body is one."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if isinstance(answer, dict) and answer.get("status") == "error":
        return str(answer.get("errorType", "error")), str(answer.get("error", "(no message)"))
    return None


def _suffix(detail: str) -> str:
    return f": {detail}" if detail and detail != "an empty body" else ""
