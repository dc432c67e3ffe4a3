"""Batch rows and the jobs of a batch: reads (never commits: the caller owns the transaction)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, insert
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, SQLModel, col, select

from orchestrator.core.errors import InvalidInput
from orchestrator.core.pipeline_runs import RunState
from orchestrator.core.states import JobState
from orchestrator.db.ids import get_by_id
from orchestrator.db.notify import QUEUED
from orchestrator.db.tables import Artifact, Batch, Job, JobEvent, PipelineRun

BULK_ROWS = 2000  # rows per INSERT statement of insert_rows


def get_batch(session: Session, batch_id: str) -> Batch:
    """The batch of that id, or of a unique prefix of it (``db.ids``: the CLI prints short ids)."""
    return get_by_id(session, Batch, batch_id, "batch")


def idempotent_batch(session: Session, api_key_id: str | None, idempotency_key: str,
                     request_hash: str | None) -> Batch | None:
    """The batch an earlier create with this key's ``Idempotency-Key`` made, if any; the same key with another
    body is refused (as ``db.jobs.idempotent_job``)."""
    batch = session.exec(select(Batch).where(Batch.api_key_id == api_key_id,
                                             Batch.idempotency_key == idempotency_key)).first()
    if batch is not None and batch.request_hash != request_hash:
        raise InvalidInput(f"Idempotency-Key {idempotency_key!r} was used for batch {batch.id} with another "
                           "request body; use a new key for a new request",
                           errors=[{"param": "Idempotency-Key", "message": f"used for batch {batch.id}"}])
    return batch


def list_batches(session: Session, api_key_id: str | None = None, every_key: bool = False, limit: int = 50,
                 offset: int = 0) -> list[Batch]:
    """Newest first: the batches of ``api_key_id``, or of every key with ``every_key``."""
    q = select(Batch).order_by(col(Batch.created_at).desc()).limit(limit).offset(offset)
    if not every_key:
        q = q.where(Batch.api_key_id == api_key_id)
    return list(session.exec(q))


def counts_by_state(session: Session, batch_id: str) -> dict[JobState, int]:
    """How many of the batch's jobs are in each state (one GROUP BY query)."""
    q = select(Job.state, func.count()).where(Job.batch_id == batch_id).group_by(Job.state)
    return {JobState(s): n for s, n in session.exec(q).all()}


def run_counts_by_state(session: Session, batch_id: str) -> dict[RunState, int]:
    """How many of the batch's pipeline runs are in each state."""
    q = select(PipelineRun.state, func.count()).where(PipelineRun.batch_id == batch_id).group_by(PipelineRun.state)
    return {RunState(s): n for s, n in session.exec(q).all()}


def run_finished_times(session: Session, batch_id: str, limit: int) -> list[datetime]:
    """The finish times of the batch's last ``limit`` finished pipeline runs."""
    q = (select(PipelineRun.finished_at).where(PipelineRun.batch_id == batch_id,
                                               col(PipelineRun.finished_at).is_not(None))
         .order_by(col(PipelineRun.finished_at).desc()).limit(limit))
    return [t for t in session.exec(q).all() if t is not None]


def active_run_ids(session: Session, batch_id: str) -> list[str]:
    """The batch's RUNNING pipeline runs, by item."""
    q = (select(PipelineRun.id).where(PipelineRun.batch_id == batch_id, PipelineRun.state == RunState.RUNNING)
         .order_by(col(PipelineRun.batch_item)))
    return list(session.exec(q).all())


def batch_runs(session: Session, batch_id: str) -> list[PipelineRun]:
    """The batch's pipeline runs, by item."""
    return list(session.exec(select(PipelineRun).where(PipelineRun.batch_id == batch_id)
                             .order_by(col(PipelineRun.batch_item))))


def run_outputs(session: Session, batch_id: str, limit: int | None = None) -> list[Artifact]:
    """The final outputs of the batch's pipeline runs (their ``outputs``), by item."""
    ids = [a for run in batch_runs(session, batch_id) for _, a in sorted((run.outputs or {}).items())
           if isinstance(a, str)]
    ids = ids[:limit] if limit is not None else ids
    found = {a.id: a for a in session.exec(select(Artifact).where(col(Artifact.id).in_(ids)))} if ids else {}
    return [found[a] for a in ids if a in found]


def finished_times(session: Session, batch_id: str, limit: int) -> list[datetime]:
    """The finish times of the batch's last ``limit`` finished jobs."""
    q = (select(Job.finished_at).where(Job.batch_id == batch_id, col(Job.finished_at).is_not(None))
         .order_by(col(Job.finished_at).desc()).limit(limit))
    return [t for t in session.exec(q).all() if t is not None]


def batch_jobs(session: Session, batch_id: str, state: JobState | None = None, limit: int | None = None,
               offset: int = 0) -> list[Job]:
    """The batch's jobs by item (a retried item's newer job after its older one)."""
    q = select(Job).where(Job.batch_id == batch_id).order_by(col(Job.batch_item), col(Job.created_at)).offset(offset)
    if state is not None:
        q = q.where(Job.state == state)
    if limit is not None:
        q = q.limit(limit)
    return list(session.exec(q))


def batch_outputs(session: Session, batch_id: str, limit: int | None = None) -> list[Artifact]:
    """The output artifacts of the batch's jobs, by item."""
    q = (select(Artifact).join(Job, col(Job.id) == col(Artifact.job_id))
         .where(Job.batch_id == batch_id, Artifact.role == "output")
         .order_by(col(Job.batch_item), col(Artifact.output_name), col(Artifact.filename)))
    if limit is not None:
        q = q.limit(limit)
    return list(session.exec(q))


def state_events_after(session: Session, batch_id: str, after_id: int = 0,
                       limit: int = 500) -> list[tuple[JobEvent, int | None]]:
    """The state events of the batch's jobs after event ``after_id``, oldest first, each with its job's item."""
    q = (select(JobEvent, Job.batch_item).join(Job, col(Job.id) == col(JobEvent.job_id))
         .where(Job.batch_id == batch_id, JobEvent.kind == "state", col(JobEvent.id) > after_id)
         .order_by(col(JobEvent.id)).limit(limit))
    return [(e, i) for e, i in session.exec(q).all()]


def active_job_ids(session: Session, batch_id: str) -> tuple[list[str], list[str]]:
    """(QUEUED, RUNNING) job ids of the batch."""
    q = select(Job.id, Job.state).where(Job.batch_id == batch_id,
                                       col(Job.state).in_([JobState.QUEUED, JobState.RUNNING]))
    rows = session.exec(q).all()
    return [i for i, s in rows if s == JobState.QUEUED], [i for i, s in rows if s == JobState.RUNNING]


def retryable_jobs(session: Session, batch_id: str) -> list[Job]:
    """The newest job of each item whose newest job FAILED or was CANCELLED."""
    newest: dict[int | None, Job] = {}
    for job in batch_jobs(session, batch_id):
        newest[job.batch_item] = job  # by item, then created_at: the last one seen is the newest
    return [j for j in newest.values() if j.state in (JobState.FAILED, JobState.CANCELLED)]


def insert_rows(session: Session, model: type[SQLModel], rows: list[dict[str, Any]]) -> None:
    """Many rows of ``model`` in the caller's transaction: on PostgreSQL with psycopg one ``COPY`` (``_copy``),
    else a few statements (an ORM bulk INSERT: no object per row). The jobs of ``JobEvent`` rows get their
    bells rung at commit, as for events added one by one (``engine._note_job_events``)."""
    if rows and not _copy(session, model, rows):
        for i in range(0, len(rows), BULK_ROWS):
            session.execute(insert(model), rows[i:i + BULK_ROWS])
    if model is JobEvent and "bell" in session.info:
        keys = session.info.setdefault("ring", set())
        keys.update(r["job_id"] for r in rows)
        if any(r.get("state") == JobState.QUEUED for r in rows):
            keys.add(QUEUED)


def _copy(session: Session, model: type[SQLModel], rows: list[dict[str, Any]]) -> bool:
    """``rows`` (each with the same columns) by ``COPY ... FROM STDIN`` on the session's connection, so in its
    transaction and under every constraint of the table; each value goes through its column type's bind
    processor, as an INSERT would send it (JSON, enum names, UTC datetimes). A driver error is raised as
    SQLAlchemy's (``IntegrityError`` for a unique key, ...), as the INSERT would. False, nothing done: not
    psycopg on PostgreSQL, or a row leaves out a column with a client-side default (the INSERT fills those)."""
    conn = session.connection()
    dialect = conn.dialect
    if dialect.name != "postgresql" or dialect.driver != "psycopg":
        return False
    from psycopg import sql

    table = model.__table__  # type: ignore[attr-defined]
    names = list(rows[0])
    if any(c.default is not None and c.name not in names for c in table.c) or any(len(r) != len(names)
                                                                                   for r in rows):
        return False
    procs = [(n, table.c[n].type.dialect_impl(dialect).bind_processor(dialect)) for n in names]
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table.name),
                                                     sql.SQL(", ").join(map(sql.Identifier, names)))
    raw = conn.connection.driver_connection
    try:
        with raw.cursor() as cur, cur.copy(stmt) as copy:
            for r in rows:
                copy.write_row([r[n] if p is None else p(r[n]) for n, p in procs])
    except dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(stmt.as_string(raw), None, exc, dialect.loaded_dbapi.Error,
                                  dialect=dialect) from exc
    return True
