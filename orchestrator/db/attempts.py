"""Attempt rows: claims, leases, adoption (never commits: the caller owns the transaction)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, update
from sqlmodel import Session, col, select

from orchestrator.core.states import JobState
from orchestrator.db.jobs import transition
from orchestrator.db.tables import (
    Attempt,
    Job,
    JobEvent,
    now,
)

if TYPE_CHECKING:
    pass


def job_attempts(session: Session, job_id: str) -> list[Attempt]:
    return list(session.exec(select(Attempt).where(Attempt.job_id == job_id).order_by(col(Attempt.number))))


def inflight_by_server(session: Session) -> dict[str, int]:
    q = select(Attempt.server, func.count()).where(Attempt.state == JobState.RUNNING).group_by(Attempt.server)
    return dict(session.exec(q).all())


def start_attempt(session: Session, job: Job, server: str, owner: str | None, lease_s: float,
                  comfy_version: str | None = None, reason: str = "dispatched") -> Attempt | None:
    """Claim a QUEUED job for a server: RUNNING + a new attempt owned by ``owner``. The caller commits.
    None when another dispatcher got it first."""
    number = session.exec(select(func.count()).where(Attempt.job_id == job.id)).one() + 1
    attempt = Attempt(job_id=job.id, number=number, server=server, owner=owner, comfy_version=comfy_version,
                      lease_until=now() + timedelta(seconds=lease_s))
    if not transition(session, job.id, JobState.QUEUED, JobState.RUNNING, reason,
                      {"attempt": attempt.id, "number": number, "server": server}, cancel_requested=False):
        return None
    session.add(attempt)
    return attempt


def finish_attempt(session: Session, attempt_id: str, owner: str | None, state: JobState,
                   error: dict[str, Any] | None, *, counts: bool = True, abandoned: bool = False) -> bool:
    """End an attempt this owner still holds (the caller commits); False when it lost the lease.
    ``counts=False``: a dependency of ours failed, not the job (not counted against its max attempts);
    ``abandoned``: its server did not answer, so its prompt may still be there (removed once it answers)."""
    res = session.execute(update(Attempt).where(col(Attempt.id) == attempt_id, col(Attempt.state) == JobState.RUNNING,
                                                col(Attempt.owner) == owner)
                          .values(state=state, error=error, finished_at=now(), counts=counts, abandoned=abandoned))
    return res.rowcount == 1


def counted_attempts(session: Session, job_id: str) -> int:
    """The job's attempts that count against its max attempts (all but those a dependency of ours ended)."""
    return session.exec(select(func.count()).where(Attempt.job_id == job_id, col(Attempt.counts).is_(True))).one()


def waits_in_a_row(session: Session, job_id: str, before: int) -> int:
    """How many of the job's attempts just before number ``before`` ended in a row waiting for a dependency
    (counts=False): the backoff of the next wait grows with it."""
    flags = session.exec(select(Attempt.counts).where(Attempt.job_id == job_id, Attempt.number < before)
                         .order_by(col(Attempt.number).desc()).limit(64)).all()
    return next((i for i, counts in enumerate(flags) if counts), len(flags))


def heartbeat(session: Session, owner: str, lease_s: float, attempt_ids: Iterable[str] | None = None) -> int:
    """Renew the leases of this process's RUNNING attempts; with ``attempt_ids`` only of those (the ones a
    runner of this process is following: an attempt whose runner ended without ending it lapses and is
    adopted and reconciled like a crashed process's). The caller commits."""
    q = update(Attempt).where(col(Attempt.owner) == owner, col(Attempt.state) == JobState.RUNNING)
    if attempt_ids is not None:
        ids = list(attempt_ids)
        if not ids:
            return 0
        q = q.where(col(Attempt.id).in_(ids))
    res = session.execute(q.values(lease_until=now() + timedelta(seconds=lease_s)))
    return res.rowcount


def abandoned_attempts(session: Session, server: str) -> list[Attempt]:
    """Ended attempts whose prompt may still sit on ``server`` (it did not answer when they ended)."""
    return list(session.exec(select(Attempt).where(Attempt.server == server, col(Attempt.abandoned).is_(True),
                                                   Attempt.state != JobState.RUNNING)))


def clear_abandoned(session: Session, attempt_ids: Iterable[str]) -> None:
    """The prompts of these attempts are gone from their server: nothing left to clean up. The caller commits."""
    ids = list(attempt_ids)
    if ids:
        session.execute(update(Attempt).where(col(Attempt.id).in_(ids)).values(abandoned=False))


def adopt_orphans(session: Session, owner: str, lease_s: float) -> list[Attempt]:
    """RUNNING attempts whose owner stopped renewing its lease (crashed), taken over by ``owner``.
    Training claims (server ``trainer:<name>``) are not adopted: the training lease loop takes them back.
    The caller commits (before it follows them: until then they are not its own)."""
    adopted = []
    stale = session.exec(select(Attempt).where(Attempt.state == JobState.RUNNING,
                                               ~col(Attempt.server).startswith("trainer:"),
                                               or_(col(Attempt.lease_until).is_(None),
                                                   col(Attempt.lease_until) < now()))).all()
    for a in stale:
        res = session.execute(update(Attempt).where(col(Attempt.id) == a.id, col(Attempt.state) == JobState.RUNNING,
                                                    col(Attempt.lease_until) == a.lease_until)
                              .values(owner=owner, lease_until=now() + timedelta(seconds=lease_s)))
        if res.rowcount == 1:
            session.add(JobEvent(job_id=a.job_id, kind="info", reason=f"attempt {a.number} adopted after its "
                                 f"orchestrator stopped", data={"attempt": a.id, "previous_owner": a.owner}))
            adopted.append(a)
    return adopted


def current_jobs(session: Session) -> dict[str, list[str]]:
    """Server URL -> ids of the jobs running there."""
    out: dict[str, list[str]] = {}
    for a in session.exec(select(Attempt).where(Attempt.state == JobState.RUNNING)):
        out.setdefault(a.server, []).append(a.job_id)
    return out
