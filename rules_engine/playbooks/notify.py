"""Outbound notifications of workflow state changes (the serve config's `notify_urls`), retried with backoff.

A transition writes a row to the `notifications` outbox in its own transaction (rules_engine.playbooks.workflow).
Here each new row is handed over as one delivery per URL, and every delivery is attempted on its own schedule:
due now, a POST bounded by `timeout`; on a failure that another attempt may cure (no answer, 5xx, 429, 408) the
next attempt is due after the backoff (`backoff`, doubling, at most `max_backoff`), until `attempts` are spent or
`deadline` seconds have passed since the change; then the delivery is given up and the audit log says so. A
delivery that waits for its next attempt holds nothing back: the others are sent meanwhile, and intake and
executors never wait on a notification target.

A delivery is claimed before it is sent (its next attempt moved past the send's deadline), so several receiver
processes sharing a store send it once; a process that dies mid-send leaves it to be retried after that deadline
(at least once, then: a receiver may see a duplicate after a crash).
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import insert, select, update

from rules_engine.playbooks import outbound
from rules_engine.playbooks import store as st

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    backoff: float = 1.0
    max_backoff: float = 60.0
    deadline: float = 900.0
    timeout: float = 5.0


def hand_over(store: st.Store, urls: list[str], batch: int = 200) -> int:
    """New outbox rows -> one delivery per URL (the row is marked handed over). Returns the rows handed over."""
    with store.read() as conn:
        if conn.execute(select(st.notifications.c.id).where(st.notifications.c.sent_at.is_(None)).limit(1)
                        ).first() is None:
            return 0
    with store.write() as conn:
        rows = conn.execute(select(st.notifications.c.id, st.notifications.c.at)
                            .where(st.notifications.c.sent_at.is_(None)).order_by(st.notifications.c.id)
                            .limit(batch)).all()
        if not rows:
            return 0
        now = time.time()
        if urls:
            conn.execute(insert(st.notification_deliveries), [
                {"notification_id": row.id, "url": url, "created_at": row.at, "next_at": now, "attempts": 0}
                for row in rows for url in urls])
        conn.execute(update(st.notifications).where(st.notifications.c.id.in_([r.id for r in rows]))
                     .values(sent_at=now))
        return len(rows)


def deliver_due(store: st.Store, policy: RetryPolicy, now: float | None = None, batch: int = 20,
                senders: int = 4) -> int:
    """Attempt every delivery that is due (at most `batch`), `senders` at a time. Returns how many were tried."""
    now = time.time() if now is None else now
    due = ((st.notification_deliveries.c.sent_at.is_(None)) & (st.notification_deliveries.c.gave_up_at.is_(None))
           & (st.notification_deliveries.c.next_at <= now))
    with store.read() as conn:
        if conn.execute(select(st.notification_deliveries.c.id).where(due).limit(1)).first() is None:
            return 0
    with store.write() as conn:
        rows = conn.execute(
            select(st.notification_deliveries.c.id, st.notification_deliveries.c.url,
                   st.notification_deliveries.c.attempts, st.notification_deliveries.c.created_at,
                   st.notifications.c.body, st.notifications.c.workflow_id)
            .join(st.notifications, st.notifications.c.id == st.notification_deliveries.c.notification_id)
            .where(due).order_by(st.notification_deliveries.c.next_at).limit(batch)).all()
        claimed = [row for row in rows if conn.execute(
            update(st.notification_deliveries).where(st.notification_deliveries.c.id == row.id, due)
            .values(next_at=now + policy.timeout + 1.0, attempts=row.attempts + 1)).rowcount == 1]
    if not claimed:
        return 0
    with ThreadPoolExecutor(max_workers=max(1, min(senders, len(claimed)))) as pool:
        answers = list(pool.map(lambda row: outbound.send(
            "POST", row.url, row.body.encode(), {"Content-Type": "application/json"}, policy.timeout), claimed))
    with store.write() as conn:
        for row, answer in zip(claimed, answers):
            _record(conn, row, answer, policy)
    return len(claimed)


def _record(conn, row, answer: outbound.Answer, policy: RetryPolicy) -> None:
    now = time.time()
    attempts = row.attempts + 1
    if answer.status is not None and 200 <= answer.status < 300:
        conn.execute(update(st.notification_deliveries).where(st.notification_deliveries.c.id == row.id)
                     .values(sent_at=now, error=None))
        return
    error = f"HTTP {answer.status}" if answer.status is not None else answer.error
    pause = outbound.backoff_pause(policy.backoff, attempts, policy.max_backoff)
    final = (not outbound.worth_retrying(answer) or attempts >= policy.attempts
             or now + pause > row.created_at + policy.deadline)
    if not final:
        conn.execute(update(st.notification_deliveries).where(st.notification_deliveries.c.id == row.id)
                     .values(next_at=now + pause, error=error))
        return
    conn.execute(update(st.notification_deliveries).where(st.notification_deliveries.c.id == row.id)
                 .values(gave_up_at=now, error=error))
    why = ("not retried: the target refused it" if not outbound.worth_retrying(answer) else
           f"after {attempts} attempt(s)" if attempts >= policy.attempts else
           f"the {policy.deadline:g}s deadline would pass before the next attempt")
    st.record_audit(conn, "engine", "notification_failed", row.workflow_id, url=row.url, error=error,
                    attempts=attempts, gave_up=why)


def next_due(store: st.Store) -> float | None:
    """When the next delivery is due (unix seconds), or None when none waits."""
    with store.read() as conn:
        return conn.execute(select(st.notification_deliveries.c.next_at).where(
            st.notification_deliveries.c.sent_at.is_(None), st.notification_deliveries.c.gave_up_at.is_(None))
            .order_by(st.notification_deliveries.c.next_at).limit(1)).scalar_one_or_none()

