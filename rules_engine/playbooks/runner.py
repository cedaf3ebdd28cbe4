"""Background loops of a receiver process: intake (events → workflows), executors, notifications, housekeeping.

Every loop reads its work from the store, so several processes can run them against one database: the webhook
only persists and wakes the local intake, and a process that dies leaves nothing that another (or its own
restart) cannot pick up.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from rules_engine.playbooks import notify
from rules_engine.playbooks import store as st
from rules_engine.playbooks.executor import Interrupted, LeaseLost, claim_next, release, run_workflow
from rules_engine.playbooks.intake import expire_approvals, process_next_event
from rules_engine.playbooks.runtime import Runtime

log = logging.getLogger(__name__)
HOUSEKEEPING_INTERVAL = 5.0
INTAKE_FAILURES_NOT_READY = 3


@dataclass
class Runner:
    rt: Runtime
    executor_threads: int = 2  # workflows run at once by this process (playbooks also cap their own)
    poll_interval: float = 0.5  # how often to look for work written by other processes
    intake_linger: float = 0.05
    intake_wake: threading.Event = field(default_factory=threading.Event)
    executor_wake: threading.Event = field(default_factory=threading.Event)
    notify_wake: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    intake_failures: int = 0  # intake rounds failed in a row
    intake_error: str | None = None  # why the last one failed

    def start(self) -> "Runner":
        self.threads = [threading.Thread(target=self._intake_loop, name="intake", daemon=True)]
        self.threads += [threading.Thread(target=self._executor_loop, name=f"executor-{i}", daemon=True)
                         for i in range(self.executor_threads)]
        if self.rt.notify_urls:
            self.threads.append(threading.Thread(target=self._notify_loop, name="notify", daemon=True))
        for thread in self.threads:
            thread.start()
        return self

    def wake(self) -> None:
        self.intake_wake.set()
        self.executor_wake.set()
        self.notify_wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self.rt.stop.set()
        self.wake()
        for thread in self.threads:
            thread.join(timeout)

    def intake_problem(self) -> str | None:
        """Why the intake counts as failing (several rounds failed in a row: one may be a passing lock), or None."""
        if self.intake_failures < INTAKE_FAILURES_NOT_READY:
            return None
        return f"intake: the last {self.intake_failures} rounds failed: {self.intake_error}"

    def _intake_loop(self) -> None:
        last_housekeeping = 0.0
        while not self.rt.stop.is_set():
            # Linger briefly after a wake-up so a burst of deliveries is processed in one transaction instead of
            # competing with the acknowledgements for the write lock one by one.
            self.rt.stop.wait(self.intake_linger)
            try:
                worked = False
                with self.rt.store.intake_turn() as mine:
                    while mine and not self.rt.stop.is_set():
                        self.rt.store.yield_to_acks()
                        if not process_next_event(self.rt):
                            break
                        worked = True
                if worked:
                    self.executor_wake.set()
                if time.monotonic() - last_housekeeping > HOUSEKEEPING_INTERVAL:
                    last_housekeeping = time.monotonic()
                    expire_approvals(self.rt)
                self.intake_failures = 0
            except Exception as error:  # the database may be briefly unavailable; log and keep going
                log.exception("intake loop")
                self.intake_failures, self.intake_error = self.intake_failures + 1, st.describe_error(error)
                self.rt.stop.wait(1.0)
            self.intake_wake.wait(self.poll_interval)
            self.intake_wake.clear()

    def _notify_loop(self) -> None:
        """Notifications on a thread of their own: a slow or failing target never holds up intake or executors."""
        while not self.rt.stop.is_set():
            try:
                while deliver_notifications(self.rt):
                    pass
                due = notify.next_due(self.rt.store)
            except Exception:
                log.exception("notify loop")
                due = None
            wait = self.poll_interval if due is None else min(max(due - time.time(), 0.01), self.poll_interval)
            self.notify_wake.wait(wait)
            self.notify_wake.clear()

    def _executor_loop(self) -> None:
        while not self.rt.stop.is_set():
            try:
                workflow_id = claim_next(self.rt)
                if workflow_id is not None:
                    try:
                        run_workflow(self.rt, workflow_id)
                    except Interrupted as stopped:
                        release(self.rt, workflow_id)
                        log.info("workflow %s left for resumption: %s", workflow_id, stopped)
                    except LeaseLost as lost:
                        log.warning("workflow %s: %s", workflow_id, lost)
                    continue
            except Exception:
                log.exception("executor loop")
                self.rt.stop.wait(1.0)
            self.executor_wake.wait(self.poll_interval)
            self.executor_wake.clear()


def deliver_notifications(rt: Runtime) -> int:
    """Hand new workflow notifications over as deliveries and attempt those due; returns the attempts made."""
    if not rt.notify_urls:
        return 0
    notify.hand_over(rt.store, rt.notify_urls)
    return notify.deliver_due(rt.store, rt.notify_policy)
