"""Attempt rows: claims, leases, adoption (never commits: the caller owns the transaction)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, update
from sqlmodel import Session, col, select

from orchestrator.core.burst import Spend
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
                  comfy_version: str | None = None, reason: str = "dispatched", *, tier: int = 0, rate: float = 0.0,
                  estimate: float = 0.0) -> Attempt | None:
    """Claim a QUEUED job for a server: RUNNING + a new attempt owned by ``owner``. The caller commits.
    None when another dispatcher got it first. ``tier``, ``rate``: the server's when dispatched; ``estimate``:
    the attempt's expected cost, held against the burst budgets until it ends."""
    number = session.exec(select(func.count()).where(Attempt.job_id == job.id)).one() + 1
    attempt = Attempt(job_id=job.id, number=number, server=server, owner=owner, comfy_version=comfy_version,
                      lease_until=now() + timedelta(seconds=lease_s), tier=tier, rate=rate, cost=estimate)
    if not transition(session, job.id, JobState.QUEUED, JobState.RUNNING, reason,
                      {"attempt": attempt.id, "number": number, "server": server}, cancel_requested=False):
        return None
    session.add(attempt)
    return attempt


def finish_attempt(session: Session, attempt_id: str, owner: str | None, state: JobState,
                   error: dict[str, Any] | None, *, counts: bool = True, abandoned: bool = False,
                   gpu_s: float | None = None, cost: float | None = None) -> bool:
    """End an attempt this owner still holds (the caller commits); False when it lost the lease.
    ``counts=False``: a dependency of ours failed, not the job (not counted against its max attempts);
    ``abandoned``: its server did not answer, so its prompt may still be there (removed once it answers);
    ``gpu_s``, ``cost``: what it used and cost (a priced server's)."""
    values: dict[str, Any] = {"state": state, "error": error, "finished_at": now(), "counts": counts,
                              "abandoned": abandoned}
    if gpu_s is not None:
        values |= {"gpu_s": gpu_s, "cost": cost or 0.0}
    res = session.execute(update(Attempt).where(col(Attempt.id) == attempt_id, col(Attempt.state) == JobState.RUNNING,
                                                col(Attempt.owner) == owner).values(**values))
    return res.rowcount == 1


def set_remote_id(session: Session, attempt_id: str, remote_id: str) -> None:
    """The provider's job id of a burst attempt, recorded before anything else happens to it. The caller commits."""
    session.execute(update(Attempt).where(col(Attempt.id) == attempt_id).values(remote_id=remote_id))


def burst_spend(session: Session, day_start: datetime, month_start: datetime) -> Spend:
    """What burst attempts (tier 1 and up) started in the month cost: ended ones what they cost, running ones
    their estimate; by day, month and the API key of their job."""
    q = (select(Attempt.started_at, Attempt.cost, Job.api_key_id).join(Job, col(Job.id) == col(Attempt.job_id))
         .where(col(Attempt.tier) > 0, col(Attempt.started_at) >= month_start))
    spend = Spend()
    day = day_start.replace(tzinfo=None)
    for started, cost, key in session.exec(q).all():
        spend.month += cost
        if started.replace(tzinfo=None) >= day:
            spend.day += cost
            spend.key_day[key] = spend.key_day.get(key, 0.0) + cost
    return spend


def mean_run_s(session: Session, templates: Iterable[str], recent: int = 20) -> dict[str, float]:
    """Per template name, the mean seconds of its ``recent`` latest successful attempts on local servers (the
    wait and cost estimates of ``core/burst.py``); templates that never ran are left out."""
    out: dict[str, float] = {}
    for name in set(templates):
        q = (select(Attempt.started_at, Attempt.finished_at).join(Job, col(Job.id) == col(Attempt.job_id))
             .where(Job.template == name, Attempt.state == JobState.SUCCEEDED, col(Attempt.tier) == 0,
                    col(Attempt.finished_at).is_not(None))
             .order_by(col(Attempt.finished_at).desc()).limit(recent))
        runs = [(f - s).total_seconds() for s, f in session.exec(q).all()]
        if runs:
            out[name] = sum(runs) / len(runs)
    return out


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


def job_costs(session: Session, job_ids: Iterable[str]) -> dict[str, float]:
    """Per job, what its attempts cost (ended ones what they cost, running ones their estimate); jobs without a
    priced attempt are left out."""
    ids = list(set(job_ids))
    if not ids:
        return {}
    q = (select(Attempt.job_id, func.sum(Attempt.cost)).where(col(Attempt.job_id).in_(ids), col(Attempt.cost) != 0)
         .group_by(Attempt.job_id))
    return {job_id: float(total or 0.0) for job_id, total in session.exec(q).all()}


def burst_by_server(session: Session, since: datetime | None = None) -> dict[str, tuple[float, int]]:
    """Server URL -> (cost, number) of its burst attempts (tier 1 and up) started since ``since`` (None: ever)."""
    q = select(Attempt.server, func.sum(Attempt.cost), func.count()).where(col(Attempt.tier) > 0)
    if since is not None:
        q = q.where(col(Attempt.started_at) >= since)
    return {server: (float(cost or 0.0), int(n)) for server, cost, n in session.exec(q.group_by(Attempt.server)).all()}
