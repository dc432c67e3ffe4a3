"""Batch rows and the jobs of a batch: reads (never commits: the caller owns the transaction)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, insert
from sqlmodel import Session, SQLModel, col, select

from orchestrator.core.states import JobState
from orchestrator.db.ids import get_by_id
from orchestrator.db.notify import QUEUED
from orchestrator.db.tables import Artifact, Batch, Job, JobEvent

BULK_ROWS = 2000  # rows per INSERT statement of insert_rows


def get_batch(session: Session, batch_id: str) -> Batch:
    """The batch of that id, or of a unique prefix of it (``db.ids``: the CLI prints short ids)."""
    return get_by_id(session, Batch, batch_id, "batch")


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
    """Many rows of ``model`` in a few statements (an ORM bulk INSERT: no object per row), in the caller's
    transaction. The jobs of ``JobEvent`` rows get their bells rung at commit, as for events added one by one
    (``engine._note_job_events``)."""
    for i in range(0, len(rows), BULK_ROWS):
        session.execute(insert(model), rows[i:i + BULK_ROWS])
    if model is JobEvent and "bell" in session.info:
        keys = session.info.setdefault("ring", set())
        keys.update(r["job_id"] for r in rows)
        if any(r.get("state") == JobState.QUEUED for r in rows):
            keys.add(QUEUED)
