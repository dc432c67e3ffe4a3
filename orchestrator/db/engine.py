"""Engine and sessions. SQLite is the embedded default; PostgreSQL for production and replicas.

Never commits: a session opened here is committed by whoever owns its transaction (a use case in
``orchestrator.app``, a loop in ``orchestrator.runtime``, the composition root); only the schema migration
(``init_db``) commits, its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, PendingRollbackError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session, col, create_engine, func, select

from orchestrator.core.states import JobState
from orchestrator.db import tables as models  # noqa: F401  (registers the tables)
from orchestrator.db.notify import ANY_EVENT, QUEUED, Bell, EventWatcher
from orchestrator.db.tables import JobEvent

# What the database being unavailable looks like to the code using it: the driver's errors (DBAPIError:
# OperationalError, InterfaceError for a connection refused or lost, ...), a full pool (sqlalchemy's
# TimeoutError, not a DBAPIError) and a session broken by an earlier error (PendingRollbackError). None of
# them is a job's own failure: work that meets one is retried or left to crash recovery, never failed.
DB_ERRORS: tuple[type[Exception], ...] = (DBAPIError, PoolTimeout, PendingRollbackError)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # WAL: safe against a crash of the process
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def init_db(engine: Engine) -> None:
    """Bring the schema to the newest migration (creates it on an empty database).

    On SQLite a migration that alters a table copies it into a new one and drops the old (alembic's batch
    mode); with foreign keys enforced, dropping a table that other rows reference fails. So, as SQLite's own
    ALTER TABLE procedure says, foreign keys are off while the migrations run, checked in full
    (``PRAGMA foreign_key_check``) before the commit, and on again after."""
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection  # the PRAGMA outside any transaction, where SQLite takes it
        if sqlite:
            raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                cfg = alembic_config(engine)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"the migration left rows naming missing rows: {broken[:5]}")
        finally:
            if sqlite:
                raw.execute("PRAGMA foreign_keys=ON")


@event.listens_for(Session, "after_flush")
def _note_job_events(session: Session, _flush_context: object) -> None:
    """Remember the jobs that got an event in this transaction; their bells ring once it commits."""
    if "bell" not in session.info:
        return
    keys = session.info.setdefault("ring", set())
    for obj in session.new:
        if isinstance(obj, JobEvent):
            keys.add(obj.job_id)
            if obj.state == JobState.QUEUED:
                keys.add(QUEUED)


@event.listens_for(Session, "after_commit")
def _ring(session: Session) -> None:
    keys = session.info.pop("ring", None)
    if keys:
        session.info["bell"].ring([*keys, ANY_EVENT])


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    session.info.pop("ring", None)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.bell = Bell()  # rung after each commit that added job events (see orchestrator.notify)
        self.watcher = EventWatcher(self.bell, self.latest_events)  # ...and for events committed elsewhere
        init_db(self.engine)

    def latest_events(self, high: int | None, lag: int) -> dict[str, int]:
        """{job id: newest event id} over the events with id > (high, or the newest id when None) - lag, in a
        session of its own (the primary key bounds the scan; see ``EventWatcher``)."""
        with Session(self.engine) as s:
            if high is None:
                high = s.exec(select(func.max(JobEvent.id))).one() or 0
            rows = s.exec(select(JobEvent.job_id, func.max(JobEvent.id)).where(col(JobEvent.id) > high - lag)
                          .group_by(JobEvent.job_id))
            return {job_id: newest for job_id, newest in rows}

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False, info={"bell": self.bell}) as s:
            yield s
