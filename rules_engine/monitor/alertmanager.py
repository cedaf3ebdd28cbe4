"""Pushing alerts to Alertmanager's API v2 (`POST /api/v2/alerts`), each Alertmanager on its own.

As Prometheus' notifier does, every Alertmanager gets every alert; unlike it, a failed push is not dropped: the
round loop keeps what each Alertmanager has not acknowledged and offers it again next round (rounds.py), so one
Alertmanager being down neither delays nor loses the others' alerts.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests

from rules_engine.urls import redacted_url


class AlertmanagerError(Exception):
    """A push failed; the message names the Alertmanager (without credentials) and why."""


class Alertmanager:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.name = redacted_url(self.url)  # what logs and the metrics' `alertmanager` label show
        self.timeout = timeout
        self.session = requests.Session()

    def push(self, alerts: list[dict]) -> None:
        try:
            response = self.session.post(f"{self.url}/api/v2/alerts", json=alerts, timeout=self.timeout)
        except requests.RequestException as error:
            raise AlertmanagerError(f"Alertmanager {self.name}: {type(error).__name__}: {error}") from None
        if response.status_code >= 300:
            raise AlertmanagerError(f"Alertmanager {self.name}: HTTP {response.status_code}: {response.text[:300]}")

    def close(self) -> None:
        self.session.close()


def push_all(batches: dict[Alertmanager, list[dict]]) -> dict[Alertmanager, AlertmanagerError | None]:
    """Push each Alertmanager its batch, all at once (a slow one does not hold up the others)."""
    if not batches:
        return {}
    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        futures = {target: pool.submit(_push, target, alerts) for target, alerts in batches.items()}
        return {target: future.result() for target, future in futures.items()}


def _push(target: Alertmanager, alerts: list[dict]) -> AlertmanagerError | None:
    try:
        target.push(alerts)
    except AlertmanagerError as error:
        return error
    return None
