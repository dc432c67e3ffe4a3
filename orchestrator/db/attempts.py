"""Attempt rows: claims, leases, adoption (never commits: the caller owns the transaction)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, or_, text, update
from sqlmodel import Session, col, select

from orchestrator.core.burst import Spend
from orchestrator.core.states import JobState, check_transition
from orchestrator.db.tables import (
    Attempt,
    Job,
    JobEvent,
    new_id,
    now,
)

if TYPE_CHECKING:
    pass


def job_attempts(session: Session, job_id: str) -> list[Attempt]:
    return list(session.exec(select(Attempt).where(Attempt.job_id == job_id).order_by(col(Attempt.number))))


ROUND_LOCK = 0x6D6C_726F  # "mlro": the advisory lock a dispatch round holds on PostgreSQL


def lock_round(session: Session) -> None:
    """Hold the dispatch-round lock for the rest of the transaction (PostgreSQL: ``pg_advisory_xact_lock``), so
    replicas place one round at a time on the in-flight counts and warm models as they are then: two replicas
    never both fill the same free slot. SQLite has one writer: nothing to do."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ROUND_LOCK})


def inflight_by_server(session: Session) -> dict[str, int]:
    q = select(Attempt.server, func.count()).where(Attempt.state == JobState.RUNNING).group_by(Attempt.server)
    return dict(session.exec(q).all())


def latest_running_jobs(session: Session) -> dict[str, tuple[int | None, dict[str, Any]]]:
    """Server URL -> (template version id, params) of the job started there last among those running on it:
    what the server has loaded or is about to load, whichever dispatcher (replica) sent it."""
    q = (select(Attempt.server, Attempt.started_at, Job.template_version_id, Job.params)
         .join(Job, col(Job.id) == col(Attempt.job_id)).where(Attempt.state == JobState.RUNNING))
    best: dict[str, tuple[datetime, int | None, dict[str, Any]]] = {}
    for server, started, version_id, params in session.exec(q).all():
        if server not in best or started > best[server][0]:
            best[server] = (started, version_id, params)
    return {server: (version_id, params) for server, (_at, version_id, params) in best.items()}


@dataclass(frozen=True)
class Claim:
    """One job to start on a server (``start_attempts``): ``tier``, ``rate``: the server's when dispatched;
    ``estimate``: the attempt's expected cost, held against the burst budgets until it ends."""

    job_id: str
    server: str
    owner: str | None
    lease_s: float
    comfy_version: str | None = None
    reason: str = "dispatched"
    tier: int = 0
    rate: float = 0.0
    estimate: float = 0.0


CLAIM_CHUNK = 500  # claims per statement (SQLite allows 32766 bound values, PostgreSQL 65535)


def start_attempt(session: Session, job: Job, server: str, owner: str | None, lease_s: float,
                  comfy_version: str | None = None, reason: str = "dispatched", *, tier: int = 0, rate: float = 0.0,
                  estimate: float = 0.0) -> Attempt | None:
    """Claim a QUEUED job for a server: RUNNING + a new attempt owned by ``owner``. The caller commits.
    None when another dispatcher got it first. ``tier``, ``rate``: the server's when dispatched; ``estimate``:
    the attempt's expected cost, held against the burst budgets until it ends. The attempt is in the session
    (the caller may set more of it); a dispatch round claims its many jobs with ``start_attempts``."""
    won = start_attempts(session, [Claim(job.id, server, owner, lease_s, comfy_version, reason, tier, rate, estimate)])
    return session.get(Attempt, won[job.id]) if job.id in won else None


def start_attempts(session: Session, claims: Sequence[Claim]) -> dict[str, str]:
    """Claim many QUEUED jobs at once (a dispatch round's placements): per chunk of claims one conditional
    UPDATE of their jobs (QUEUED -> RUNNING, guarded on the state, so a job another dispatcher or a cancel took
    first is skipped), one multi-row INSERT of the attempts of the jobs it won and one of their state events.
    The same guarantees as one ``start_attempt`` each: attempt numbers follow the job's earlier ones, leases
    start now, each job's ``cancel_requested`` is cleared, the jobs' bells ring after the commit. Returns job id
    -> the id of its new attempt, for the jobs won; the caller commits. A job claimed twice keeps its first claim."""
    check_transition(JobState.QUEUED, JobState.RUNNING)
    first: dict[str, Claim] = {}
    for c in claims:
        first.setdefault(c.job_id, c)
    todo = list(first.values())
    won: dict[str, str] = {}
    for i in range(0, len(todo), CLAIM_CHUNK):
        won |= _claim_chunk(session, todo[i:i + CLAIM_CHUNK])
    return won


def _claim_chunk(session: Session, claims: list[Claim]) -> dict[str, str]:
    ids = [c.job_id for c in claims]
    taken = dict(session.exec(select(Attempt.job_id, func.count()).where(col(Attempt.job_id).in_(ids))
                              .group_by(Attempt.job_id)).all())
    at = now()
    res = session.execute(update(Job).where(col(Job.id).in_(ids), col(Job.state) == JobState.QUEUED)
                          .values(state=JobState.RUNNING, started_at=at, cancel_requested=False)
                          .returning(col(Job.id)))
    got = set(res.scalars().all())
    mine = [c for c in claims if c.job_id in got]
    if not mine:
        return {}
    rows = [{"id": new_id(), "job_id": c.job_id, "number": taken.get(c.job_id, 0) + 1, "server": c.server,
             "state": JobState.RUNNING, "owner": c.owner, "comfy_version": c.comfy_version,
             "lease_until": at + timedelta(seconds=c.lease_s), "started_at": at, "abandoned": False, "counts": True,
             "tier": c.tier, "rate": c.rate, "cost": c.estimate} for c in mine]
    # executemany of one INSERT: SQLAlchemy sends it as multi-row INSERT ... VALUES statements (insertmanyvalues)
    session.execute(insert(Attempt).returning(col(Attempt.id)), rows)
    events = [{"job_id": c.job_id, "at": at, "kind": "state", "state": JobState.RUNNING, "reason": c.reason,
               "data": {"attempt": r["id"], "number": r["number"], "server": c.server}}
              for c, r in zip(mine, rows, strict=True)]
    session.execute(insert(JobEvent).returning(col(JobEvent.id)), events)
    if "bell" in session.info:  # rows written without ORM objects: ring their jobs' bells after the commit, as
        session.info.setdefault("ring", set()).update(got)  # engine._note_job_events does for added events
    return {r["job_id"]: r["id"] for r in rows}


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
