"""Pipeline run use cases: start, advance, cancel, resume (the rule is ``core.pipeline_runs.plan``).

A run is rows (``pipeline_runs``, ``pipeline_run_steps``); each step that runs is an ordinary job. ``advance``
is called whenever a step's job ends (the executor's ``on_final`` hook, wired in ``bootstrap``) and by the
dispatcher's lease-loop sweep (``sweep``: a crash between a job's end and its run's advance, or a job that
ended outside a runner). It is idempotent: it locks the run, takes the ended jobs into account, and submits
the steps ``plan`` names; a step is linked to its job by a conditional WAITING -> QUEUED update in the
transaction that writes the job, so no step is ever submitted twice.

Reuse: before a step is submitted, its ``reuse_key`` (template content hash, validated parameters, input
artifacts' sha256) is looked up among steps whose job succeeded; a match makes the step REUSED with that
job's outputs and no job of its own (off with ``reuse=False`` on the run).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from orchestrator.app.admission import check_job_fields, validate_values
from orchestrator.core import pipeline_runs as pr
from orchestrator.core import templates as tpl
from orchestrator.core.errors import Conflict, MediaLabError
from orchestrator.core.pipeline_runs import RunState, StepState
from orchestrator.core.states import JobState
from orchestrator.db import audit
from orchestrator.db import pipeline_runs as run_db
from orchestrator.db.jobs import add_event, transition
from orchestrator.db.pipelines import checked_from_row, get_pipeline
from orchestrator.db.tables import (
    Artifact,
    Job,
    JobEvent,
    JobInput,
    PipelineRun,
    PipelineStep,
    PipelineVersionRow,
    now,
)
from orchestrator.db.templates import get_template
from orchestrator.settings import Settings, get_settings

if TYPE_CHECKING:
    from orchestrator.db.engine import Database
    from orchestrator.runtime.pool import Pool

log = logging.getLogger(__name__)


class _Raced(Exception):
    """Another advancer moved a step first: this transaction is rolled back (the other one did the work)."""


def start_run(session: Session, pool: Pool | None, name: str, inputs: dict[str, Any], *,
              version: int | None = None, params: dict[str, Any] | None = None, reuse: bool = True,
              priority: int = 0, api_key_id: str | None = None, settings: Settings | None = None) -> PipelineRun:
    """Validate the inputs (and overrides) against the pipeline version, then write the run, its steps and the
    first ready steps' jobs in one transaction. Refused (422, every problem named) before anything is written;
    a first step that its template or the pool refuses is refused too (``errors`` under ``steps.<id>``)."""
    settings = settings or get_settings()
    check_job_fields(priority, None, settings)
    row = get_pipeline(session, name, version)
    overrides = params or {}
    pr.refuse(check_run(session, row, inputs, overrides))
    try:
        run = write_run(session, pool, row, inputs, overrides, reuse=reuse, priority=priority,
                        api_key_id=api_key_id, settings=settings)
    except BaseException:
        session.rollback()
        raise
    audit.record(session, "pipeline.run", run.id, {"pipeline": f"{row.name}@v{row.version}", "reuse": reuse})
    session.commit()
    return run


def check_run(session: Session, row: PipelineVersionRow, inputs: Any, overrides: Any) -> list[dict[str, str]]:
    """The problems of a run's inputs and overrides against the pipeline version (reads only; empty: valid)."""
    c = checked_from_row(row)
    given = [v for v in (inputs.values() if isinstance(inputs, dict) else []) if isinstance(v, str)]
    types = {v: (a.content_type if (a := session.get(Artifact, v)) is not None else None) for v in given}
    errors = pr.check_inputs(c, inputs, types) + pr.check_overrides(c, overrides)
    for sid, values in overrides.items() if isinstance(overrides, dict) else []:
        pin = c.templates.get(sid)
        if pin is None or not isinstance(values, dict):
            continue
        _, t = get_template(session, pin.template, pin.version)
        known = {p.name for p in t.manifest.parameters}
        errors += [{"param": f"params.{sid}.{k}", "message": f"template {t.ref} has no parameter {k!r}"}
                   for k in values if k not in known]
    return errors


def write_run(session: Session, pool: Pool | None, row: PipelineVersionRow, inputs: dict[str, Any],
              overrides: dict[str, Any], *, reuse: bool, priority: int, api_key_id: str | None,
              settings: Settings, batch_id: str | None = None, batch_item: int | None = None) -> PipelineRun:
    """Add a run checked by ``check_run``, its steps and its first ready steps' jobs to the session (no commit);
    a first step its template or the pool refuses raises (``errors`` under ``steps.<id>``), the caller then
    rolls back."""
    c = checked_from_row(row)
    run = PipelineRun(pipeline_version_id=row.id, pipeline=row.name, version=row.version,
                      content_hash=row.content_hash, inputs=dict(inputs), params=overrides, reuse=reuse,
                      priority=priority, api_key_id=api_key_id, batch_id=batch_id, batch_item=batch_item)
    session.add(run)
    session.add_all(PipelineStep(run_id=run.id, step=sid, position=i, template=c.templates[sid].template,
                                 version=c.templates[sid].version) for i, sid in enumerate(c.order))
    session.flush()
    _advance(session, run, row, pool, settings, strict=True)
    return run


def advance(session: Session, run_id: str, pool: Pool | None = None,
            settings: Settings | None = None) -> PipelineRun | None:
    """Take the run's ended step jobs into account and submit what is ready now; commits. Idempotent."""
    run = run_db.lock_run(session, run_id)
    if run is None or RunState(run.state).final:
        session.rollback()
        return run
    try:
        _advance(session, run, session.get(PipelineVersionRow, run.pipeline_version_id), pool,
                 settings or get_settings())
    except _Raced:
        session.rollback()
        return run_db.get_run(session, run_id)
    session.commit()
    return run


def cancel_run(session: Session, run_id: str, pool: Pool | None = None,
               settings: Settings | None = None) -> PipelineRun:
    """Waiting steps become CANCELLED, the active steps' jobs are cancelled (a running one is interrupted by
    its dispatcher) and nothing starts after; the run is CANCELLED once no step's job is active."""
    run = run_db.get_run(session, run_id)
    run = run_db.lock_run(session, run.id) or run
    if RunState(run.state).final:
        raise Conflict(f"pipeline run {run.id} is already {run.state}")
    request_cancel(session, run, pool, settings)
    audit.record(session, "pipeline.cancel", run.id, {"pipeline": f"{run.pipeline}@v{run.version}"})
    session.commit()
    return run


def request_cancel(session: Session, run: PipelineRun, pool: Pool | None = None,
                   settings: Settings | None = None) -> None:
    """``cancel_run``'s work on a locked, not final run, in the caller's transaction (no commit)."""
    run.cancel_requested = True
    session.add(run)
    session.flush()
    _advance(session, run, session.get(PipelineVersionRow, run.pipeline_version_id), pool,
             settings or get_settings())


def resume_run(session: Session, run_id: str, pool: Pool | None = None,
               settings: Settings | None = None) -> PipelineRun:
    """A FAILED or CANCELLED run again: its failed and cancelled steps wait again (their jobs kept in
    ``past_jobs``), the succeeded and reused ones are kept, and what is ready is submitted now."""
    run = run_db.get_run(session, run_id)
    run = run_db.lock_run(session, run.id) or run
    if run.state not in (RunState.FAILED, RunState.CANCELLED):
        raise Conflict(f"pipeline run {run.id} is {run.state}; only a FAILED or CANCELLED run resumes")
    for st in run_db.run_steps(session, run.id):
        if st.state in pr.ENDED:
            st.past_jobs = [*st.past_jobs, st.job_id] if st.job_id else list(st.past_jobs)
            st.state, st.job_id, st.error, st.params, st.reuse_key = StepState.WAITING, None, None, None, None
            st.updated_at = now()
            session.add(st)
    run.state, run.cancel_requested, run.error, run.finished_at = RunState.RUNNING, False, None, None
    session.add(run)
    session.flush()
    _advance(session, run, session.get(PipelineVersionRow, run.pipeline_version_id), pool,
             settings or get_settings())
    audit.record(session, "pipeline.resume", run.id, {"pipeline": f"{run.pipeline}@v{run.version}"})
    session.commit()
    return run


def job_finished(db: Database, job_id: str, pool: Pool | None = None, settings: Settings | None = None) -> None:
    """The executor's hook: a job reached a final state; advance its run, if it is a step's job."""
    with db.session() as s:
        run_id = run_db.run_of_job(s, job_id)
        if run_id is not None:
            advance(s, run_id, pool, settings)


def sweep(session: Session, pool: Pool | None = None, settings: Settings | None = None) -> int:
    """Advance every running run with a step whose job has ended; how many were advanced."""
    ids = run_db.runs_to_advance(session)
    session.rollback()
    for run_id in ids:
        try:
            advance(session, run_id, pool, settings)
        except Exception:
            session.rollback()
            log.exception("pipeline run %s: advance failed", run_id)
    return len(ids)


# -- the advance ---------------------------------------------------------------------------------------
def _advance(session: Session, run: PipelineRun, row: PipelineVersionRow | None, pool: Pool | None,
             settings: Settings, strict: bool = False) -> None:
    if row is None:  # cannot happen through the API (versions are never deleted); the run cannot go on
        _finish(run, RunState.FAILED, {}, {"message": f"pipeline version {run.pipeline_version_id} is gone"})
        return
    c = checked_from_row(row)
    steps = {st.step: st for st in run_db.run_steps(session, run.id)}
    states = {sid: StepState(st.state) for sid, st in steps.items()}
    outputs = {sid: dict(st.outputs or {}) for sid, st in steps.items()}
    for sid, st in steps.items():  # the jobs that ended since the last look
        if states[sid] != StepState.QUEUED or st.job_id is None:
            continue
        job = session.get(Job, st.job_id)
        if job is None:
            continue
        if job.state == JobState.SUCCEEDED:
            outputs[sid] = run_db.job_output_ids(session, job.id)
            _move(session, st, StepState.QUEUED, StepState.SUCCEEDED, outputs=outputs[sid])
            states[sid] = StepState.SUCCEEDED
        elif job.state in (JobState.FAILED, JobState.CANCELLED):
            _move(session, st, StepState.QUEUED, StepState(job.state.value),
                  error=job.error or {"message": f"job {job.state.value}"})
            states[sid] = StepState(job.state.value)
        elif run.cancel_requested and _cancel_job(session, job):
            _move(session, st, StepState.QUEUED, StepState.CANCELLED, error={"message": "run cancelled"})
            states[sid] = StepState.CANCELLED
    while True:
        plan = pr.plan(c, states, outputs, run.cancel_requested)
        for sid in plan.cancel:
            _move(session, steps[sid], StepState.WAITING, StepState.CANCELLED, error={"message": "run cancelled"})
            states[sid] = StepState.CANCELLED
        if not plan.submit:
            break
        for sid in plan.submit:
            states[sid], produced = _submit(session, run, c, sid, steps[sid], outputs, pool, settings, strict)
            if produced is not None:
                outputs[sid] = produced
    if plan.state.final:
        error = None
        if plan.error:
            failed = steps[plan.error["step"]]
            session.refresh(failed)
            error = {"step": failed.step, "job_id": failed.job_id,
                     "message": (failed.error or {}).get("message", "step failed")}
        _finish(run, plan.state, plan.outputs, error)
    session.add(run)


def _finish(run: PipelineRun, state: RunState, outputs: dict[str, Any], error: dict[str, Any] | None) -> None:
    run.state, run.outputs, run.error, run.finished_at = state, outputs, error, now()


def _move(session: Session, st: PipelineStep, current: StepState, new: StepState, **values: Any) -> None:
    if not run_db.set_step(session, st.id or 0, current, state=new, **values):
        raise _Raced(f"step {st.step} of run {st.run_id} was moved by someone else")


def _cancel_job(session: Session, job: Job) -> bool:
    """Cancel a step's active job in this transaction; True when it is CANCELLED now (it was queued), False
    when its dispatcher was asked to interrupt it (it ends later, and the run with it)."""
    if job.state == JobState.QUEUED and transition(session, job.id, JobState.QUEUED, JobState.CANCELLED,
                                                   "cancelled with its pipeline run"):
        return True
    if not job.cancel_requested:
        add_event(session, job.id, "info", "cancel requested (pipeline run cancelled)", cancel_requested=True)
    return False


def _submit(session: Session, run: PipelineRun, c: Any, sid: str, st: PipelineStep,
            outputs: dict[str, dict[str, Any]], pool: Pool | None, settings: Settings,
            strict: bool) -> tuple[StepState, dict[str, Any] | None]:
    """Reuse or submit one ready step; its new state and, when REUSED, its outputs. A step its template or
    the pool refuses is FAILED with the reason (``strict``: refused to the caller instead)."""
    pin = c.templates[sid]
    try:
        params = pr.resolve(c, sid, run.inputs, outputs, run.params)
        trow, t = get_template(session, pin.template, pin.version)
        if t.content_hash != pin.content_hash:
            raise Conflict(f"template {t.ref} has changed since the pipeline was recorded")
        values = validate_values(session, pool, t, params, settings)
    except MediaLabError as exc:
        if strict:
            errors = [{**e, "param": f"steps.{sid}.{e.get('param', '')}".rstrip(".")}
                      for e in exc.extra.get("errors", [])] or [{"param": f"steps.{sid}", "message": exc.message}]
            raise type(exc)(f"step {sid}: {exc.message}", **{**exc.extra, "errors": errors}) from exc
        _move(session, st, StepState.WAITING, StepState.FAILED, error={"message": exc.message, **exc.extra})
        return StepState.FAILED, None
    arts = {p.name: values[p.name] for p in t.manifest.parameters
            if p.type in tpl.ARTIFACT_TYPES and values.get(p.name)}
    sha = {name: a.sha256 for name, aid in arts.items() if (a := session.get(Artifact, aid)) is not None}
    key = pr.reuse_key(t.content_hash, values, sha)
    if run.reuse:
        src = run_db.reusable(session, key)
        if src is not None and src.outputs and all(session.get(Artifact, a) is not None for a in src.outputs.values()):
            _move(session, st, StepState.WAITING, StepState.REUSED, reused_from_job=src.job_id,
                  outputs=dict(src.outputs), params=values, reuse_key=key)
            return StepState.REUSED, dict(src.outputs)
    job = Job(template_version_id=trow.id, template=t.name, version=t.version, params=values,
              priority=run.priority, timeout_s=t.manifest.timeout_s, api_key_id=run.api_key_id,
              batch_id=run.batch_id, batch_item=run.batch_item)
    session.add(job)
    session.flush()  # the job row exists before the step points at it
    session.add_all(JobInput(job_id=job.id, artifact_id=aid) for aid in set(arts.values()))
    session.add(JobEvent(job_id=job.id, kind="state", state=JobState.QUEUED,
                         reason=f"submitted by pipeline run {run.id} (step {sid})",
                         data={"template": t.ref, "hash": t.content_hash, "pipeline_run": run.id, "step": sid}))
    audit.record(session, "job.submit", job.id, {"kind": job.kind, "template": t.ref, "priority": run.priority,
                                                 "pipeline_run": run.id, "step": sid})
    if not run_db.link_job(session, st.id or 0, job.id, values, key):
        raise _Raced(f"step {sid} of run {run.id} was submitted by someone else")
    return StepState.QUEUED, None

