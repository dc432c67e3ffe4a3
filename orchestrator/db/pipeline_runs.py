"""Pipeline run and step rows: reads and the conditional step updates (never commits)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from orchestrator.core.pipeline_runs import ACTIVE, RunState, StepState
from orchestrator.core.states import TERMINAL, JobState
from orchestrator.db.ids import get_by_id
from orchestrator.db.tables import Artifact, Job, PipelineRun, PipelineStep, now


def get_run(session: Session, run_id: str) -> PipelineRun:
    """A run by its id or a unique prefix (``db/ids.py``)."""
    return get_by_id(session, PipelineRun, run_id, "pipeline run")


def lock_run(session: Session, run_id: str) -> PipelineRun | None:
    """The run, locked for this transaction (PostgreSQL: FOR UPDATE; SQLite has one writer)."""
    return session.exec(select(PipelineRun).where(PipelineRun.id == run_id).with_for_update()).first()


def run_steps(session: Session, run_id: str) -> list[PipelineStep]:
    return list(session.exec(select(PipelineStep).where(PipelineStep.run_id == run_id)
                             .order_by(col(PipelineStep.position))))


def steps_of_runs(session: Session, run_ids: list[str]) -> dict[str, list[PipelineStep]]:
    out: dict[str, list[PipelineStep]] = {r: [] for r in run_ids}
    if run_ids:
        for st in session.exec(select(PipelineStep).where(col(PipelineStep.run_id).in_(run_ids))
                               .order_by(col(PipelineStep.position))):
            out[st.run_id].append(st)
    return out


def list_runs(session: Session, state: str | None = None, pipeline: str | None = None,
              limit: int = 50, offset: int = 0) -> list[PipelineRun]:
    q = select(PipelineRun).order_by(col(PipelineRun.created_at).desc()).limit(limit).offset(offset)
    if state:
        q = q.where(PipelineRun.state == state)
    if pipeline:
        q = q.where(PipelineRun.pipeline == pipeline)
    return list(session.exec(q))


def run_of_job(session: Session, job_id: str) -> str | None:
    """The run whose active step's job this is (None: not a step's job, or already taken into account)."""
    return session.exec(select(PipelineStep.run_id).where(PipelineStep.job_id == job_id,
                                                          PipelineStep.state == StepState.QUEUED)).first()


def runs_to_advance(session: Session, limit: int = 100) -> list[str]:
    """RUNNING runs with an active step whose job has ended (the sweep after a crash, or a job that ended
    outside a runner: cancelled while queued, failed before dispatch)."""
    q = (select(PipelineStep.run_id).join(Job, col(Job.id) == col(PipelineStep.job_id))
         .join(PipelineRun, col(PipelineRun.id) == col(PipelineStep.run_id))
         .where(PipelineRun.state == RunState.RUNNING, col(PipelineStep.state).in_(list(ACTIVE)),
                col(Job.state).in_(list(TERMINAL)))
         .distinct().limit(limit))
    return list(session.exec(q))


def link_job(session: Session, step_id: int, job_id: str, params: dict[str, Any], reuse_key: str) -> bool:
    """WAITING -> QUEUED with its job, if nobody else moved the step first (then the caller rolls back)."""
    res = session.execute(update(PipelineStep).where(col(PipelineStep.id) == step_id,
                                                     col(PipelineStep.state) == StepState.WAITING)
                          .values(state=StepState.QUEUED, job_id=job_id, params=params, reuse_key=reuse_key,
                                  error=None, updated_at=now()))
    return res.rowcount == 1


def set_step(session: Session, step_id: int, current: StepState, **values: Any) -> bool:
    """Move a step from ``current`` (conditional UPDATE); True when it matched."""
    res = session.execute(update(PipelineStep).where(col(PipelineStep.id) == step_id,
                                                     col(PipelineStep.state) == current)
                          .values(updated_at=now(), **values))
    return res.rowcount == 1


def reusable(session: Session, key: str) -> PipelineStep | None:
    """A step that ran with this reuse key and whose job succeeded (the oldest: the one first reused)."""
    q = (select(PipelineStep).join(Job, col(Job.id) == col(PipelineStep.job_id))
         .where(PipelineStep.reuse_key == key, PipelineStep.state == StepState.SUCCEEDED,
                Job.state == JobState.SUCCEEDED)
         .order_by(col(PipelineStep.updated_at)).limit(1))
    return session.exec(q).first()


def job_output_ids(session: Session, job_id: str) -> dict[str, str]:
    """Output name -> the job's first artifact of that output (by file name)."""
    out: dict[str, str] = {}
    for art in session.exec(select(Artifact).where(Artifact.job_id == job_id, Artifact.role == "output")
                            .order_by(col(Artifact.output_name), col(Artifact.filename))):
        if art.output_name and art.output_name not in out:
            out[art.output_name] = art.id
    return out
