"""Instant queries against the Prometheus HTTP API, for verify steps and current settings."""
from __future__ import annotations

import math

import requests


class PrometheusError(RuntimeError):
    pass


def instant_query(url: str, expr: str, timeout: float = 10.0, session: requests.Session | None = None
                  ) -> list[tuple[dict[str, str], float]]:
    """(labels, value) per series of an instant vector (a scalar comes back as one series without labels)."""
    getter = session or requests
    try:
        response = getter.get(f"{url.rstrip('/')}/api/v1/query", params={"query": expr}, timeout=timeout)
        body = response.json()
    except (requests.RequestException, ValueError) as error:
        raise PrometheusError(f"query {expr!r} against {url}: {error}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"query {expr!r}: {body.get('errorType')}: {body.get('error')}")
    result = body["data"]
    if result["resultType"] == "scalar":
        return [({}, float(result["result"][1]))]
    if result["resultType"] != "vector":
        raise PrometheusError(f"query {expr!r} returned a {result['resultType']}, a verify step needs an instant vector")
    series = [(item["metric"], float(item["value"][1])) for item in result["result"]]
    return [(labels, value) for labels, value in series if not math.isnan(value)]
