"""What the intake and the executor need at run time: the store, the loaded playbooks and the engine's settings."""
from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import requests

from rules_engine.playbooks.notify import RetryPolicy
from rules_engine.playbooks.store import Store
from rules_engine.playbooks.targets import configured_targets
from rules_engine.source.client import PrometheusClient
from rules_engine.spec.playbook import Playbook


@dataclass
class Runtime:
    store: Store
    playbooks: dict[str, Playbook]
    dry_run: bool = False  # global: every workflow records what it would do, nothing is sent
    # Verify steps, baselines and current settings query it; None: verify steps fail, recommend uses defaults.
    prometheus: PrometheusClient | None = None
    variables: dict = field(default_factory=dict)  # `vars` in templates, e.g. the orchestrator's URL
    # Base URLs http steps may call; empty: the http(s) URLs among `variables` (see playbooks.targets).
    targets: tuple[str, ...] = ()
    lease_seconds: float = 60.0  # an IN_PROGRESS workflow whose owner stops renewing is resumed after this
    max_resumes: int = 5  # resumed more often than this without progress: failed (its owners keep dying on it)
    notify_urls: list[str] = field(default_factory=list)  # outbound webhooks on workflow state changes
    notify_policy: RetryPolicy = field(default_factory=RetryPolicy)  # their retries (rules_engine.playbooks.notify)
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")
    stop: threading.Event = field(default_factory=threading.Event)
    http: requests.Session = field(default_factory=requests.Session)
    # Called as observe_step(step_type, outcome, seconds) after each step; the server wires its metrics here.
    observe_step: Callable[[str, str, float], None] = lambda step_type, outcome, seconds: None

    def allowed_targets(self) -> tuple[str, ...]:
        return configured_targets(self.targets, self.variables)


def load_playbooks(paths: Iterable[str | Path], variables: dict | None = None) -> dict[str, Playbook]:
    """Playbooks from files/folders through the spec loader (rule packs beside them are loaded and checked too).
    With `variables` (the serve config's), every `vars.NAME` a template reads must be among them. Raises
    rules_engine.spec.SpecError with file:line problems."""
    from rules_engine.spec import load_ruleset

    ruleset = load_ruleset(list(paths), context=None if variables is None else {"variables": variables})
    found: dict[str, Playbook] = {}
    for playbook in ruleset.playbooks:
        if playbook.name in found:
            from rules_engine.spec import Problem, SpecError
            raise SpecError([Problem(ruleset.files.get(f"Playbook/{playbook.name}", ""), None, "name",
                                     f"duplicate playbook name {playbook.name!r}")])
        found[playbook.name] = playbook
    return found
