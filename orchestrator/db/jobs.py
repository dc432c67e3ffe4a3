"""Job rows and their events: reads and conditional updates (never commits: the caller owns the transaction)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, or_, update
from sqlalchemy.orm import make_transient_to_detached
from sqlmodel import Session, SQLModel, col, select
from sqlmodel.sql.expression import SelectOfScalar

from orchestrator.core.errors import InvalidInput
from orchestrator.core.states import JobState, check_transition
from orchestrator.db.ids import get_by_id
from orchestrator.db.notify import QUEUED
from orchestrator.db.tables import (
    Job,
    JobEvent,
    now,
)

if TYPE_CHECKING:
    pass


def idempotent_job(session: Session, api_key_id: str | None, idempotency_key: str, request_hash: str) -> Job | None:
    """The job an earlier submit with this key's ``Idempotency-Key`` made, if any; the same key with another
    body is refused (as Comfy API v2 does)."""
    job = session.exec(select(Job).where(Job.api_key_id == api_key_id, Job.idempotency_key == idempotency_key)).first()
    if job is not None and job.request_hash != request_hash:
        raise InvalidInput(f"Idempotency-Key {idempotency_key!r} was used for job {job.id} with another request "
                           "body; use a new key for a new request")
    return job


def write_new(session: Session, rows: Sequence[SQLModel]) -> None:
    """Write new ``rows`` (a job, its inputs, first event, audit row: any tables) in one round trip on
    PostgreSQL, else add them to the session; the caller commits, as always.

    On PostgreSQL the rows go as one statement: each an INSERT of a data-modifying WITH, with every column value
    the ORM would send (foreign keys are checked at the statement's end, so their order is free). What the
    database makes (an event's serial id) is not read back: the rows other than jobs stay out of the session,
    and a ``Job`` among them is attached as persistent (no reload). A job event among them rings its job's bell
    (and QUEUED's) after the commit, as a flushed one would (``db/engine.py``)."""
    if session.get_bind().dialect.name != "postgresql" or len(rows) < 2:
        session.add_all(rows)
        return
    session.flush()  # what the session holds already goes first (an artifact the job's inputs name)
    inserts = [insert(type(r).__table__).values(  # type: ignore[attr-defined]
        {c.name: getattr(r, c.name) for c in r.__table__.columns  # type: ignore[attr-defined]
         if not (c.primary_key and getattr(r, c.name) is None)}) for r in rows]
    statement = inserts[-1]
    for i, row_insert in enumerate(inserts[:-1]):
        statement = statement.add_cte(row_insert.cte(f"row_{i}"))
    session.execute(statement)
    ring = session.info.setdefault("ring", set()) if "bell" in session.info else set()
    for r in rows:
        if isinstance(r, Job):
            make_transient_to_detached(r)
            session.add(r)  # persistent as written, never reloaded
        elif isinstance(r, JobEvent):
            ring.add(r.job_id)
            if r.state == JobState.QUEUED:
                ring.add(QUEUED)


def get_job(session: Session, job_id: str) -> Job:
    """A job by its id or a unique prefix of it (``db/ids.py``); NotFound (404), or Conflict (409) naming the
    candidates of an ambiguous prefix. Callers go on with ``job.id``, never the prefix they were given."""
    return get_by_id(session, Job, job_id, "job")


def list_jobs(session: Session, state: JobState | None = None, template: str | None = None,
              limit: int = 50, offset: int = 0) -> list[Job]:
    q = select(Job).order_by(col(Job.created_at).desc()).limit(limit).offset(offset)
    if state:
        q = q.where(Job.state == state)
    if template:
        q = q.where(Job.template == template)
    return list(session.exec(q))


def transition(session: Session, job_id: str, current: JobState, new: JobState, reason: str,
               data: dict[str, Any] | None = None, **fields: Any) -> bool:
    """Move a job from ``current`` to ``new`` if nobody else moved it first, with its event; True when the
    conditional UPDATE matched.

    The conditional UPDATE makes this safe between threads and between orchestrator replicas. The caller
    commits (or, on False, rolls back what else its transaction holds, where that matters).
    """
    check_transition(current, new)
    values: dict[str, Any] = {"state": new, **fields}
    if new == JobState.RUNNING:
        values.setdefault("started_at", now())
    if new.terminal:
        values.setdefault("finished_at", now())
    res = session.execute(update(Job).where(col(Job.id) == job_id, col(Job.state) == current).values(**values))
    if res.rowcount != 1:
        return False
    session.add(JobEvent(job_id=job_id, kind="state", state=new, reason=reason, data=data))
    return True


def add_event(session: Session, job_id: str, kind: str, reason: str = "", data: dict[str, Any] | None = None,
              **job_fields: Any) -> None:
    """Add an event to the job (and set ``job_fields`` on its row); the caller commits."""
    if job_fields:
        session.execute(update(Job).where(col(Job.id) == job_id).values(**job_fields))
    session.add(JobEvent(job_id=job_id, kind=kind, reason=reason, data=data))


def events_after(session: Session, job_id: str, after_id: int = 0) -> list[JobEvent]:
    return list(session.exec(select(JobEvent).where(JobEvent.job_id == job_id, col(JobEvent.id) > after_id)
                             .order_by(col(JobEvent.id))))


def ready(kind: str) -> SelectOfScalar[Job]:
    """The one query of "queued and ready": the QUEUED jobs of ``kind`` (comfy, training) whose ``run_after``
    (a retry's backoff) has passed, highest priority first, then in queue order. The caller adds its limit
    and, to take one, the lock (FOR UPDATE SKIP LOCKED)."""
    return (select(Job).where(Job.kind == kind, Job.state == JobState.QUEUED,
                              or_(col(Job.run_after).is_(None), col(Job.run_after) <= now()))
            .order_by(col(Job.priority).desc(), col(Job.queued_at)))


def any_ready(session: Session, kind: str) -> bool:
    """Whether some job of ``kind`` is ready (a cheap check: no order, no lock)."""
    return session.exec(ready(kind).order_by(None).limit(1)).first() is not None


def queued_candidates(session: Session, limit: int = 100) -> list[Job]:
    """QUEUED jobs that may be dispatched now, locked for this transaction (PostgreSQL: FOR UPDATE SKIP
    LOCKED, so replicas never consider the same job; SQLite has one writer and ignores the clause).

    Up to ``limit`` of each API key that has any (its first in ``ready`` order), so the many queued jobs of one
    key (a batch of thousands) never push another key's jobs out of a round's window; ``fair_order`` then
    shares the round between the keys."""
    keys = session.exec(ready("comfy").with_only_columns(col(Job.api_key_id)).order_by(None).distinct()).all()
    out: list[Job] = []
    for key in sorted(keys, key=lambda k: (k is None, k or "")):
        mine = col(Job.api_key_id).is_(None) if key is None else col(Job.api_key_id) == key
        out.extend(session.exec(ready("comfy").where(mine).limit(limit).with_for_update(skip_locked=True)))
    return out


def running_by_key(session: Session) -> dict[str | None, int]:
    q = select(Job.api_key_id, func.count()).where(Job.state == JobState.RUNNING).group_by(Job.api_key_id)
    return dict(session.exec(q).all())


def requeue(session: Session, job_id: str, reason: str, delay_s: float, local_only: bool = False) -> bool:
    """A RUNNING job back to QUEUED after a transient failure, not dispatched before ``delay_s``; ``local_only``:
    a burst provider failed it, so only the local tier takes it from now on."""
    extra: dict[str, Any] = {"local_only": True} if local_only else {}
    return transition(session, job_id, JobState.RUNNING, JobState.QUEUED, reason, {"retry_in_s": delay_s},
                      run_after=now() + timedelta(seconds=delay_s), queued_at=now(), progress=0.0, **extra)
