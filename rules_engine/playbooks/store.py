"""The persistent store: raw webhook events, alert episodes, workflows, their steps, and the audit log.

SQLAlchemy Core over SQLite (WAL) by default; a PostgreSQL URL works too. Correctness across several receiver
processes sharing one store rests on the database, not on process memory:
- an episode is UNIQUE (fingerprint, starts_at) and a workflow UNIQUE (playbook, fingerprint, starts_at), so
  resends, HA duplicates and concurrent receivers can insert it at most once;
- writers are serialized (SQLite `BEGIN IMMEDIATE`; PostgreSQL row locks / `SKIP LOCKED` on the event queue and
  an advisory lock around intake), so the cooldown check and the insert it guards see the same world;
- the audit table refuses UPDATE and DELETE (SQLite triggers), so it stays append-only whatever code runs.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from sqlalchemy import (Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text, UniqueConstraint,
                        create_engine, event, func, insert, select, text, update)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from rules_engine.spec.times import rfc3339

metadata = MetaData()

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("received_at", Float, nullable=False),
    Column("remote_addr", String(100), nullable=False, default=""),
    Column("external_url", Text, nullable=False, default=""),
    Column("group_key", Text, nullable=False, default=""),
    Column("status", String(20), nullable=False, default=""),
    Column("alert_count", Integer, nullable=False, default=0),
    Column("body", Text, nullable=False),
    Column("processed_at", Float, nullable=True),
    Column("progress", Integer, nullable=False, default=0),  # alerts of the event already processed
    Column("attempts", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Index("ix_events_unprocessed", "processed_at", "id"),
)

episodes = Table(
    "episodes", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fingerprint", String(64), nullable=False),
    Column("starts_at", String(40), nullable=False),
    Column("alertname", Text, nullable=False),
    Column("labels", Text, nullable=False),
    Column("annotations", Text, nullable=False),
    Column("first_event_id", Integer, nullable=True),
    Column("first_seen", Float, nullable=False),
    Column("deliveries", Integer, nullable=False, default=1),
    Column("resolved_at", Float, nullable=True),
    Column("ends_at", String(40), nullable=True),
    Column("generator_url", Text, nullable=False, default=""),
    UniqueConstraint("fingerprint", "starts_at", name="uq_episode"),
)

workflows = Table(
    "workflows", metadata,
    Column("id", String(32), primary_key=True),
    Column("playbook", String(200), nullable=False),
    Column("state", String(20), nullable=False),
    Column("phase", String(20), nullable=False, default="main"),  # main | rollback | done
    Column("dry_run", Boolean, nullable=False, default=False),
    Column("optimization_level", String(20), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("starts_at", String(40), nullable=False),
    Column("alertname", Text, nullable=False),
    Column("instance", Text, nullable=False, default=""),
    Column("series_key", Text, nullable=False, default=""),
    Column("labels", Text, nullable=False),
    Column("annotations", Text, nullable=False),
    Column("origin", String(40), nullable=False, default="alertmanager"),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("decided_by", Text, nullable=True),
    Column("reason", Text, nullable=True),
    Column("context", Text, nullable=False, default="{}"),
    Column("lease_owner", Text, nullable=True),
    Column("lease_until", Float, nullable=True),
    UniqueConstraint("playbook", "fingerprint", "starts_at", name="uq_workflow_episode"),
    Index("ix_workflows_state", "state"),
    Index("ix_workflows_series", "playbook", "series_key", "created_at"),
)

steps = Table(
    "steps", metadata,
    Column("workflow_id", String(32), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("name", String(100), nullable=False),
    Column("type", String(20), nullable=False),
    Column("state", String(20), nullable=False, default="PENDING"),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("output", Text, nullable=False, default="{}"),
    Column("note", Text, nullable=True),
)

audit = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", String(60), nullable=False),
    Column("workflow_id", String(32), nullable=True),
    Column("detail", Text, nullable=False, default="{}"),
    Index("ix_audit_workflow", "workflow_id", "id"),
)

# Transactional outbox for the optional outbound webhooks on workflow state changes: written in the same
# transaction as the transition, delivered (and marked) afterwards, so a crash neither loses nor invents one.
notifications = Table(
    "notifications", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("workflow_id", String(32), nullable=False),
    Column("body", Text, nullable=False),
    Column("sent_at", Float, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
)

# One delivery of a notification to one outbound URL: retried with backoff until it succeeds, its attempts run
# out or its deadline passes (rules_engine.playbooks.notify). A row per URL, so one target that is down never holds
# back the others, and the queue never waits on a slow target.
notification_deliveries = Table(
    "notification_deliveries", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("notification_id", Integer, nullable=False),
    Column("url", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("next_at", Float, nullable=False),  # the next attempt is due then (also a claim: set ahead while sending)
    Column("attempts", Integer, nullable=False, default=0),
    Column("sent_at", Float, nullable=True),
    Column("gave_up_at", Float, nullable=True),
    Column("error", Text, nullable=True),
    Index("ix_notification_deliveries_due", "sent_at", "gave_up_at", "next_at"),
)

# Analysis jobs (POST /api/v1/analysis): queued -> running -> succeeded | failed. A running job's owner renews
# `lease_until`; a job whose owner stopped (restart, crash) is failed by whoever sees the lease expired, so a
# restart never loses a job nor leaves it running forever (rules_engine.playbooks.analysis).
analysis_jobs = Table(
    "analysis_jobs", metadata,
    Column("id", String(32), primary_key=True),
    Column("state", String(20), nullable=False),
    Column("request", Text, nullable=False),
    Column("requested_by", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("deadline", Float, nullable=True),  # a running job still running then has timed out
    Column("owner", Text, nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("estimate", Text, nullable=False, default="{}"),
    Column("error", Text, nullable=True),
    Column("result", Text, nullable=True),
    Column("report", Text, nullable=True),  # the HTML report (report/html.py), plotly.js left out: see PLOTLYJS_SLOT
    Index("ix_analysis_jobs_state", "state", "created_at"),
)

_SQLITE_APPEND_ONLY = [
    "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END",
]
_POSTGRES_APPEND_ONLY = [
    "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger AS $$ "
    "BEGIN RAISE EXCEPTION 'audit log is append-only'; END; $$ LANGUAGE plpgsql",
    "DROP TRIGGER IF EXISTS audit_append_only ON audit",
    "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
    "FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
]
INTAKE_LOCK_KEY = 7_300_511  # PostgreSQL advisory lock serializing intake across receiver processes
SCHEMA_LOCK_KEY = 7_300_512  # and the one serializing schema creation when several open the store at once


@dataclass
class Store:
    """Engines for one database. `write()` gives a serialized transaction, `read()` a plain one."""

    url: str
    engine: Engine
    read_engine: Engine
    dialect: str
    # SQLite lets one writer in at a time and makes the others poll with sleeps of up to 100 ms; queueing this
    # process's writers (webhook threads, intake, executors) on a mutex first keeps an ack from sleeping behind
    # them. Other processes still meet at the database lock.
    write_lock: threading.RLock = field(default_factory=threading.RLock)
    # Across processes (several WSGI workers, `workflows approve` from the CLI), an flock on a file beside the
    # database queues writers in the kernel, which wakes the next one as soon as the lock is released, where
    # SQLite's busy handler would sleep and retry. None for an in-memory database or another dialect.
    lock_path: str | None = None
    # SQLite connections that commit without waiting for fsync (synchronous=NORMAL), for writes that can be
    # redone: the intake's, which are derived from durable events and idempotent. WAL is append-only, so the
    # next durable commit makes them durable too, and a power loss can only make the intake redo work.
    relaxed_engine: Engine | None = None
    _lock_fd: int | None = None
    _intake_fd: int | None = None
    _lock_depth: int = 0
    # Acknowledgements waiting to write. Background work (intake, executors) steps aside for them: Python locks
    # are not fair, and a busy intake loop would otherwise re-take the lock ahead of a waiting webhook.
    acks_waiting: int = 0
    # How long a writer waits for a lock held elsewhere before the write fails (and the webhook answers 503).
    lock_timeout: float = 30.0

    def yield_to_acks(self, limit: float = 0.05) -> None:
        deadline = time.monotonic() + limit
        while self.acks_waiting and time.monotonic() < deadline:
            time.sleep(0.0005)

    @contextlib.contextmanager
    def write(self, durable: bool = True) -> Iterator[Connection]:
        if self.dialect != "sqlite":
            with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    conn.execute(text(f"SET LOCAL lock_timeout = '{int(self.lock_timeout * 1000)}ms'"))
                yield conn
            return
        engine = self.engine if durable or self.relaxed_engine is None else self.relaxed_engine
        with self.write_lock, self._process_lock(), engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _process_lock(self) -> Iterator[None]:
        if self.lock_path is None:
            yield
            return
        if self._lock_fd is None:
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        self._lock_depth += 1
        if self._lock_depth == 1:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def intake_turn(self) -> Iterator[bool]:
        """Whether this process's intake may drain the events now: with SQLite's one writer, several receiver
        processes draining at once only take turns at the write lock and split the backlog into small rounds, each
        paying a round's fixed cost while acknowledgements queue behind it. So one drains (a non-blocking flock
        beside the database) and the others skip; what they skipped is drained by the one holding the turn, which
        loops until no event is left, or by their own next poll. Always True without a lock file."""
        if self.lock_path is None:
            yield True
            return
        if self._intake_fd is None:
            self._intake_fd = os.open(self.lock_path.removesuffix("writer.lock") + "intake.lock",
                                      os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._intake_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(self._intake_fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with self.read_engine.connect() as conn:
            yield conn

    def dispose(self) -> None:
        for name in ("_lock_fd", "_intake_fd"):
            if getattr(self, name) is not None:
                os.close(getattr(self, name))
                setattr(self, name, None)
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()
        if self.relaxed_engine is not None:
            self.relaxed_engine.dispose()


def open_store(url: str, synchronous: str = "FULL", lock_timeout: float = 30.0) -> Store:
    """Open (and create the schema of) the store at a SQLAlchemy URL. `synchronous` is SQLite's fsync policy:
    FULL makes a commit durable against power loss before the webhook answers 2xx; NORMAL only against a
    crash of the process (WAL), which is cheaper. `lock_timeout`: seconds a write waits for another's lock."""
    if url.startswith("sqlite"):
        engine = _sqlite_engine(url, "BEGIN IMMEDIATE", synchronous, lock_timeout)
        read_engine = _sqlite_engine(url, "BEGIN", synchronous, lock_timeout)
        relaxed_engine = (_sqlite_engine(url, "BEGIN IMMEDIATE", "NORMAL", lock_timeout)
                          if synchronous != "NORMAL" else None)
        dialect = "sqlite"
        database = engine.url.database
        if database and engine.url.query.get("uri") == "true":  # sqlite:///file:PATH?mode=ro&uri=true
            database = database.removeprefix("file:")
        lock_path = f"{database}-writer.lock" if database and database != ":memory:" else None
    else:
        if url.startswith(("postgresql://", "postgres://")):
            # SQLAlchemy's default PostgreSQL driver is psycopg2; the engine depends on psycopg (3).
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        engine = create_engine(url, pool_pre_ping=True, future=True)
        read_engine = engine
        dialect = engine.dialect.name
        lock_path = None
        relaxed_engine = None
    with engine.begin() as conn:
        if dialect == "postgresql":
            # Receivers open the store at the same moment (gunicorn boots its workers together), and PostgreSQL's
            # DDL is not safe against itself: two CREATE TABLE of one name, or two CREATE OR REPLACE FUNCTION,
            # fail one transaction, and a worker that fails to boot stops the whole server. One at a time.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        metadata.create_all(conn)
        for statement in (_SQLITE_APPEND_ONLY if dialect == "sqlite" else
                          _POSTGRES_APPEND_ONLY if dialect == "postgresql" else []):
            conn.exec_driver_sql(statement)
    return Store(url=url, engine=engine, read_engine=read_engine, dialect=dialect, lock_path=lock_path,
                 relaxed_engine=relaxed_engine, lock_timeout=lock_timeout)


def _sqlite_engine(url: str, begin: str, synchronous: str, lock_timeout: float) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": lock_timeout}, future=True)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        # Let SQLAlchemy's begin event below issue BEGIN, instead of pysqlite's implicit, deferred one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={int(lock_timeout * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql(begin)

    return engine


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def loads(value: str | None) -> Any:
    return json.loads(value) if value else {}


def record_audit(conn: Connection, actor: str, action: str, workflow_id: str | None = None, **detail: Any) -> None:
    conn.execute(insert(audit).values(**audit_row(actor, action, workflow_id, **detail)))


def audit_row(actor: str, action: str, workflow_id: str | None = None, **detail: Any) -> dict:
    """An audit entry's values (record_audit writes one; callers writing many insert a list of them at once)."""
    return {"at": time.time(), "actor": actor, "action": action, "workflow_id": workflow_id, "detail": dumps(detail)}


def insert_event(store: Store, body: str, remote_addr: str = "", external_url: str = "", group_key: str = "",
                 status: str = "", alert_count: int = 0) -> int:
    """Persist one webhook delivery as received and commit. Returns the event id."""
    with store.write() as conn:
        result = conn.execute(insert(events).values(
            received_at=time.time(), remote_addr=remote_addr, external_url=external_url, group_key=group_key,
            status=status, alert_count=alert_count, body=body))
        return int(result.inserted_primary_key[0])


@dataclass
class _PendingEvent:
    values: dict
    done: threading.Event = field(default_factory=threading.Event)
    event_id: int | None = None
    error: BaseException | None = None
    taken: bool = False  # in the committer's transaction: its outcome, not the requester's patience, decides


class EventCommitter:
    """Group commit for webhook events: concurrent requests hand their event to one committer thread, which
    inserts everything queued in one transaction and commits once (one fsync), then releases each request
    with its id. Every request still returns only after its own event is durable; under load a commit
    serves many requests instead of each waiting its turn for the write lock."""

    def __init__(self, store: Store, max_batch: int = 256):
        self.store = store
        self.max_batch = max_batch
        self.queue: list[_PendingEvent] = []
        self.condition = threading.Condition()
        self.stopped = False
        self._conn: Connection | None = None  # the committer's own (see _connection)
        self._pool: Any = None  # the pool it came from
        self.thread = threading.Thread(target=self._run, name="event-committer", daemon=True)
        self.thread.start()

    def append(self, timeout: float = 10.0, **values: Any) -> int:
        """Commit one event; raises when it was not stored. An event still queued after `timeout` is withdrawn,
        so a request that answers 503 never leaves its event to be committed afterwards; one already in a
        transaction waits for its outcome, which the store's lock timeout bounds."""
        pending = _PendingEvent(values)
        with self.condition:
            if self.stopped:
                raise RuntimeError("event committer stopped")
            self.queue.append(pending)
            self.condition.notify()
        if not pending.done.wait(timeout):
            with self.condition:
                if not pending.taken:
                    self.queue.remove(pending)
                    raise TimeoutError(f"the store did not take the event within {timeout:.0f}s")
            if not pending.done.wait(timeout + self.store.lock_timeout):
                raise TimeoutError(f"the store did not commit within {2 * timeout + self.store.lock_timeout:.0f}s")
        if pending.error is not None:
            raise pending.error
        return pending.event_id  # type: ignore[return-value]

    def stop(self) -> None:
        with self.condition:
            self.stopped = True
            self.condition.notify()
        self.thread.join(10)
        if not self.thread.is_alive():
            self._drop_connection(broken=False)

    def _run(self) -> None:
        while True:
            with self.condition:
                while not self.queue and not self.stopped:
                    self.condition.wait()
                if not self.queue:
                    return
                batch, self.queue = self.queue[:self.max_batch], self.queue[self.max_batch:]
                for pending in batch:
                    pending.taken = True
            self.store.acks_waiting += 1  # only this thread changes it; readers tolerate a stale value
            try:
                rows = [{"received_at": time.time(), "progress": 0, "attempts": 0, **pending.values}
                        for pending in batch]
                for pending, event_id in zip(batch, self._insert(rows)):
                    pending.event_id = int(event_id)
            except Exception as error:  # every request of the batch answers 503, and Alertmanager retries
                for pending in batch:
                    pending.error, pending.event_id = error, None
            finally:
                self.store.acks_waiting -= 1
            for pending in batch:
                pending.done.set()


    def _insert(self, rows: list[dict]) -> list[int]:
        """Insert the batch in one transaction and commit; the ids in the batch's order. On the committer's own
        connection, with one multi-row INSERT: BEGIN, INSERT, COMMIT are the only calls into the driver (each
        releases the GIL and, with the request threads busy, may wait a switch interval to get it back)."""
        if self.store.dialect not in ("sqlite", "postgresql"):  # SQLAlchemy's multi-row INSERT ... RETURNING
            with self.store.write() as conn:
                return list(conn.execute(insert(events).returning(events.c.id, sort_by_parameter_order=True),
                                         rows).scalars().all())
        params = [row[column] for row in rows for column in _EVENT_COLUMNS]
        dbapi_error = self.store.engine.dialect.loaded_dbapi.Error
        with self.store.write_lock, self.store._process_lock():  # the same queue as every other writer
            conn = self._connection()
            try:
                with conn.begin():  # SQLAlchemy's transaction, its events included (BEGIN IMMEDIATE on SQLite)
                    cursor = conn.connection.dbapi_connection.cursor()
                    try:
                        if self.store.dialect == "sqlite":
                            # The transaction holds the write lock and rowids are allocated max+1 in VALUES
                            # order, so the batch's ids are the last one and the n-1 before it (RETURNING would
                            # cost a driver call per row to read).
                            cursor.execute(_events_insert(len(rows), "?"), params)
                            if cursor.rowcount != len(rows):
                                raise RuntimeError(f"inserted {cursor.rowcount} of {len(rows)} events")
                            return list(range(cursor.lastrowid - len(rows) + 1, cursor.lastrowid + 1))
                        # PostgreSQL: ids come from a sequence, so they ascend in VALUES order.
                        cursor.execute(_events_insert(len(rows), "%s") + " RETURNING id", params)
                        return sorted(row[0] for row in cursor.fetchall())
                    finally:
                        cursor.close()
            except dbapi_error as error:
                self._drop_connection()  # whatever state it is in, the next batch starts on a fresh one
                raise DBAPIError.instance(None, None, error, dbapi_error) from error
            except BaseException:
                self._drop_connection()
                raise

    def _connection(self) -> Connection:
        """The committer's own connection, kept between batches (no pool round trip per commit). A store whose
        engine was disposed (its pool replaced) gets a connection of the new pool, with its connect-time settings."""
        if self._conn is not None and self._pool is not self.store.engine.pool:
            self._drop_connection(broken=False)
        if self._conn is None:
            self._pool = self.store.engine.pool
            self._conn = self.store.engine.connect()
            if self.store.dialect == "postgresql":  # what write() sets per transaction, here once per session
                self._conn.exec_driver_sql(f"SET lock_timeout = '{int(self.store.lock_timeout * 1000)}ms'")
                self._conn.commit()
        return self._conn

    def _drop_connection(self, broken: bool = True) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.invalidate() if broken else self._conn.close()
        self._conn = self._pool = None


_EVENT_COLUMNS = ("received_at", "progress", "attempts", "remote_addr", "external_url", "group_key", "status",
                  "alert_count", "body")


@functools.lru_cache(maxsize=64)
def _events_insert(count: int, mark: str) -> str:
    """INSERT INTO events with `count` rows of placeholders `mark` (? for sqlite3, %s for psycopg)."""
    row = f"({', '.join([mark] * len(_EVENT_COLUMNS))})"
    return f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) VALUES {', '.join([row] * count)}"


def has_unprocessed_events(conn: Connection) -> bool:
    return conn.execute(select(events.c.id).where(events.c.processed_at.is_(None)).limit(1)).first() is not None


def unprocessed_event_count(conn: Connection) -> int:
    return conn.execute(select(func.count()).select_from(events).where(events.c.processed_at.is_(None))).scalar_one()


@dataclass(frozen=True)
class Backlog:
    """The events waiting for the intake: how many, and the oldest (None when there are none)."""

    count: int
    oldest_id: int | None
    oldest_received_at: float | None
    oldest_attempts: int
    oldest_error: str | None


def event_backlog(conn: Connection) -> Backlog:
    waiting = events.c.processed_at.is_(None)
    count = conn.execute(select(func.count()).select_from(events).where(waiting)).scalar_one()
    oldest = conn.execute(select(events.c.id, events.c.received_at, events.c.attempts, events.c.error)
                          .where(waiting).order_by(events.c.id).limit(1)).first()
    if oldest is None:
        return Backlog(0, None, None, 0, None)
    return Backlog(count, oldest.id, oldest.received_at, oldest.attempts, oldest.error)


# SQLite result codes (low byte of the extended code) and PostgreSQL SQLSTATE classes that say "try again later"
# (busy or locked, read-only, full, I/O, connection, resources, operator intervention) rather than "this value".
_SQLITE_TRANSIENT = {5, 6, 8, 10, 13, 14}  # BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN
_POSTGRES_TRANSIENT_CLASSES = {"08", "40", "53", "57", "58"}


def is_transient(error: DBAPIError) -> bool:
    """Whether a store error is about the store's condition, so the same write can succeed later."""
    if error.connection_invalidated:
        return True
    code = getattr(error.orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _SQLITE_TRANSIENT
    state = getattr(error.orig, "sqlstate", None) or ""
    return state[:2] in _POSTGRES_TRANSIENT_CLASSES or state == "55P03"  # 55P03: lock_not_available


def describe_error(error: BaseException, limit: int = 500) -> str:
    """One line naming an error, fit to be stored and shown: the driver's own message without SQLAlchemy's echo of
    the statement and its parameters (which may hold the very value the store refused, NUL characters included)."""
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    lines = str(cause).strip().splitlines() or [""]
    line = f"{type(cause).__name__}: {lines[0]}".replace("\x00", "\\u0000")
    return line.encode("utf-8", "backslashreplace").decode("utf-8")[:limit]


@dataclass
class StepRecord:
    idx: int
    name: str
    type: str
    state: str
    started_at: float | None
    finished_at: float | None
    attempts: int
    output: dict
    note: str | None

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@dataclass
class Workflow:
    id: str
    playbook: str
    state: str
    phase: str
    dry_run: bool
    optimization_level: str
    fingerprint: str
    starts_at: str
    alertname: str
    instance: str
    series_key: str
    labels: dict[str, str]
    annotations: dict[str, str]
    origin: str
    created_at: float
    updated_at: float
    decided_by: str | None
    reason: str | None
    context: dict
    lease_owner: str | None = None
    lease_until: float | None = None
    steps: list[StepRecord] = field(default_factory=list)

    def to_json(self, with_steps: bool = True) -> dict:
        body = {
            "id": self.id, "playbook": self.playbook, "state": self.state, "phase": self.phase,
            "dry_run": self.dry_run, "optimization_level": self.optimization_level,
            "fingerprint": self.fingerprint, "starts_at": self.starts_at, "alertname": self.alertname,
            "instance": self.instance, "series_key": self.series_key, "labels": self.labels,
            "annotations": self.annotations, "origin": self.origin, "created_at": rfc3339(self.created_at, "us"),
            "updated_at": rfc3339(self.updated_at, "us"), "decided_by": self.decided_by, "reason": self.reason,
            "context": self.context,
        }
        if with_steps:
            body["steps"] = [{
                "idx": s.idx, "name": s.name, "type": s.type, "state": s.state,
                "started_at": rfc3339(s.started_at, "us"), "finished_at": rfc3339(s.finished_at, "us"),
                "duration_seconds": s.duration, "attempts": s.attempts, "output": s.output, "note": s.note,
            } for s in self.steps]
        return body


def _workflow_from_row(row) -> Workflow:
    m = row._mapping
    return Workflow(id=m["id"], playbook=m["playbook"], state=m["state"], phase=m["phase"], dry_run=bool(m["dry_run"]),
                    optimization_level=m["optimization_level"], fingerprint=m["fingerprint"],
                    starts_at=m["starts_at"], alertname=m["alertname"], instance=m["instance"],
                    series_key=m["series_key"], labels=loads(m["labels"]), annotations=loads(m["annotations"]),
                    origin=m["origin"], created_at=m["created_at"], updated_at=m["updated_at"],
                    decided_by=m["decided_by"], reason=m["reason"], context=loads(m["context"]),
                    lease_owner=m["lease_owner"], lease_until=m["lease_until"])


def load_steps(conn: Connection, workflow_id: str) -> list[StepRecord]:
    rows = conn.execute(select(steps).where(steps.c.workflow_id == workflow_id).order_by(steps.c.idx)).all()
    return [StepRecord(idx=r.idx, name=r.name, type=r.type, state=r.state, started_at=r.started_at,
                       finished_at=r.finished_at, attempts=r.attempts, output=loads(r.output), note=r.note)
            for r in rows]


def get_workflow(conn: Connection, workflow_id: str, with_steps: bool = True) -> Workflow | None:
    row = conn.execute(select(workflows).where(workflows.c.id == workflow_id)).first()
    if row is None:
        return None
    found = _workflow_from_row(row)
    if with_steps:
        found.steps = load_steps(conn, workflow_id)
    return found


def list_workflows(conn: Connection, state: str | None = None, instance: str | None = None,
                   alertname: str | None = None, playbook: str | None = None, limit: int = 100,
                   with_steps: bool = False) -> list[Workflow]:
    query = select(workflows).order_by(workflows.c.created_at.desc()).limit(limit)
    if state:
        query = query.where(workflows.c.state == state)
    if instance:
        query = query.where(workflows.c.instance == instance)
    if alertname:
        query = query.where(workflows.c.alertname == alertname)
    if playbook:
        query = query.where(workflows.c.playbook == playbook)
    found = [_workflow_from_row(row) for row in conn.execute(query).all()]
    if with_steps:
        for item in found:
            item.steps = load_steps(conn, item.id)
    return found


def audit_entries(conn: Connection, workflow_id: str | None = None, limit: int = 1000) -> list[dict]:
    query = select(audit).order_by(audit.c.id).limit(limit)
    if workflow_id:
        query = query.where(audit.c.workflow_id == workflow_id)
    return [{"id": r.id, "at": rfc3339(r.at, "us"), "actor": r.actor, "action": r.action,
             "workflow_id": r.workflow_id,
             "detail": loads(r.detail)} for r in conn.execute(query).all()]


def workflow_state_counts(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(workflows.c.state, func.count()).group_by(workflows.c.state)).all()
    return {state: count for state, count in rows}


def update_step(conn: Connection, workflow_id: str, idx: int, **values: Any) -> None:
    if "output" in values:
        values["output"] = dumps(values["output"])
    conn.execute(update(steps).where(steps.c.workflow_id == workflow_id, steps.c.idx == idx).values(**values))
