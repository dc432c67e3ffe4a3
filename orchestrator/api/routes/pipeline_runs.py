"""Pipeline runs: start, show, list, cancel, resume (``app.pipeline_runs``; the shapes in docs/pipelines.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from orchestrator.api.deps import AnyKey, CtxDep, RunKey, SessionDep
from orchestrator.api.schemas import QueryText
from orchestrator.app import pipeline_runs as run_app
from orchestrator.core.limits import MAX_OFFSET
from orchestrator.core.pipeline_runs import StepState
from orchestrator.db import pipeline_runs as run_db
from orchestrator.db.tables import Job, PipelineRun, PipelineStep

start_router = APIRouter(prefix="/pipelines", tags=["pipelines"])
router = APIRouter(prefix="/pipeline-runs", tags=["pipelines"])


class RunStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(None, ge=1, description="Default: the newest version not deprecated.")
    inputs: dict[str, Any] = Field(default_factory=dict, description="Input name -> value (an artifact id for "
                                                                     "image and video inputs).")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Step id -> parameter -> "
                                              "constant: overrides of the steps' constants.")
    reuse: bool = Field(True, description="A step whose template version, parameters and input content match a "
                                          "succeeded job takes that job's outputs instead of running.")
    priority: int = 0


class StepOut(BaseModel):
    step: str
    template: str
    version: int
    state: str = Field(description="WAITING | QUEUED | RUNNING | SUCCEEDED | REUSED | FAILED | CANCELLED")
    job_id: str | None
    reused_from_job: str | None
    params: dict[str, Any] | None
    outputs: dict[str, Any]
    error: dict[str, Any] | None
    past_jobs: list[str]


class RunOut(BaseModel):
    id: str
    pipeline: str
    version: int
    content_hash: str
    state: str = Field(description="RUNNING | SUCCEEDED | FAILED | CANCELLED")
    reuse: bool
    inputs: dict[str, Any]
    params: dict[str, Any]
    outputs: dict[str, Any]
    error: dict[str, Any] | None
    cancel_requested: bool
    created_at: datetime
    finished_at: datetime | None
    steps: list[StepOut]


def runs_out(session: Session, runs: list[PipelineRun]) -> list[RunOut]:
    """The runs with their steps; an active step shows its job's state (QUEUED or RUNNING)."""
    steps = run_db.steps_of_runs(session, [r.id for r in runs])
    active = [st.job_id for sts in steps.values() for st in sts if st.state == StepState.QUEUED and st.job_id]
    job_states = dict(session.exec(select(Job.id, Job.state).where(col(Job.id).in_(active))).all()) if active else {}

    def step_out(st: PipelineStep) -> StepOut:
        state = st.state
        if state == StepState.QUEUED and st.job_id in job_states:
            state = "RUNNING" if job_states[st.job_id] == "RUNNING" else "QUEUED"
        return StepOut(step=st.step, template=st.template, version=st.version, state=state, job_id=st.job_id,
                       reused_from_job=st.reused_from_job, params=st.params, outputs=st.outputs or {},
                       error=st.error, past_jobs=list(st.past_jobs or []))

    return [RunOut(id=r.id, pipeline=r.pipeline, version=r.version, content_hash=r.content_hash, state=r.state,
                   reuse=r.reuse, inputs=r.inputs, params=r.params or {}, outputs=r.outputs or {}, error=r.error,
                   cancel_requested=r.cancel_requested, created_at=r.created_at, finished_at=r.finished_at,
                   steps=[step_out(st) for st in steps[r.id]]) for r in runs]


def run_out(session: Session, run_id: str) -> RunOut:
    session.expire_all()
    return runs_out(session, [run_db.get_run(session, run_id)])[0]


@start_router.post("/{name}/runs", status_code=201, response_model=RunOut)
def start(name: str, body: RunStart, ctx: CtxDep, session: SessionDep, key: RunKey) -> RunOut:
    """Start a run: 201 with its steps (the first ones submitted as jobs, or reused); 422 naming every bad
    input (``errors``: ``inputs.<name>``, ``params.<step>.<param>``, ``steps.<step>.<param>``)."""
    run = run_app.start_run(session, ctx.pool, name, body.inputs, version=body.version, params=body.params,
                            reuse=body.reuse, priority=body.priority, api_key_id=key.id, settings=ctx.settings)
    if ctx.dispatcher:
        ctx.dispatcher.wake()
    return run_out(session, run.id)


@router.get("", response_model=list[RunOut])
def list_runs(session: SessionDep, _: AnyKey, state: QueryText = None, pipeline: QueryText = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50,
              offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> list[RunOut]:
    return runs_out(session, run_db.list_runs(session, state, pipeline, limit, offset))


@router.get("/{ref}", response_model=RunOut)
def get(ref: str, session: SessionDep, _: AnyKey) -> RunOut:
    return run_out(session, ref)


@router.post("/{ref}/cancel", response_model=RunOut)
def cancel(ref: str, ctx: CtxDep, session: SessionDep, _: RunKey) -> RunOut:
    """Cancel: waiting steps CANCELLED, the active step's job cancelled, nothing starts after; 409 when final."""
    run = run_app.cancel_run(session, ref, ctx.pool, ctx.settings)
    return run_out(session, run.id)


@router.post("/{ref}/resume", response_model=RunOut)
def resume(ref: str, ctx: CtxDep, session: SessionDep, _: RunKey) -> RunOut:
    """Run a FAILED or CANCELLED run again from its failed or cancelled steps; 409 otherwise."""
    run = run_app.resume_run(session, ref, ctx.pool, ctx.settings)
    if ctx.dispatcher:
        ctx.dispatcher.wake()
    return run_out(session, run.id)
