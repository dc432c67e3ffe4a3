import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from sqlmodel import Session
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from orchestrator import service
from orchestrator.api.deps import AnyKey, CtxDep, RunKey, SessionDep
from orchestrator.api.schemas import EventOut, JobOut, JobSubmit
from orchestrator.context import Context
from orchestrator.jobs import JobState
from orchestrator.models import Job
from orchestrator.notify import AsyncWaiter

router = APIRouter(prefix="/jobs", tags=["jobs"])


def job_out(session: Session, job: Job) -> JobOut:
    out = JobOut.model_validate(job)
    out.outputs = service.job_outputs(session, job.id)
    out.attempts = service.job_attempts(session, job.id)
    return out


@router.post("", status_code=201, response_model=JobOut)
def submit(body: JobSubmit, ctx: CtxDep, session: SessionDep, key: RunKey) -> JobOut:
    job = service.submit_job(session, ctx.pool, body.template, body.params, body.version,
                             api_key_id=key.id, priority=body.priority, timeout_s=body.timeout_s)
    if ctx.dispatcher:
        ctx.dispatcher.wake()
    return job_out(session, job)


@router.get("", response_model=list[JobOut])
def list_jobs(session: SessionDep, _: AnyKey, state: JobState | None = None, template: str | None = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50,
              offset: Annotated[int, Query(ge=0)] = 0) -> list[JobOut]:
    return [JobOut.model_validate(j) for j in service.list_jobs(session, state, template, limit, offset)]


@router.get("/{job_id}", response_model=JobOut)
def get(job_id: str, session: SessionDep, _: AnyKey) -> JobOut:
    return job_out(session, service.get_job(session, job_id))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel(job_id: str, session: SessionDep, _: RunKey) -> JobOut:
    """Queued: CANCELLED at once. Running: interrupted by its prompt_id, CANCELLED once confirmed."""
    return job_out(session, service.cancel_job(session, job_id))


def _poll(ctx: Context, job_id: str, after: int) -> tuple[list[EventOut], JobState]:
    with ctx.db.session() as s:
        events = [EventOut.model_validate(e) for e in service.events_after(s, job_id, after)]
        return events, service.get_job(s, job_id).state


@router.get("/{job_id}/events", response_model=None)
async def events(job_id: str, ctx: CtxDep, _: AnyKey, last_event_id: Annotated[int | None, Header()] = None,
                 follow: bool = True) -> EventSourceResponse | list[EventOut]:
    """Server-Sent Events: every event of the job (state, progress, info); ends after the final state.
    With ``follow=false``: the events so far, as a JSON list."""
    so_far, _state = await run_in_threadpool(_poll, ctx, job_id, last_event_id or 0)  # 404 before streaming
    if not follow:
        return so_far

    async def stream() -> AsyncIterator[dict]:
        """Woken by the job's bell when this process commits an event of it; polls every 0.2 s anyway
        (another replica may run the job). After the final state it looks once more (an event may follow it,
        e.g. a trained LoRA's distribution) and ends when nothing new came."""
        after = last_event_id or 0
        with AsyncWaiter(ctx.db.bell, job_id) as bell:
            while True:
                bell.clear()
                batch, state = await run_in_threadpool(_poll, ctx, job_id, after)
                for e in batch:
                    after = e.id
                    yield {"id": str(e.id), "event": e.kind, "data": json.dumps(e.model_dump(mode="json"))}
                if state.terminal and not batch:
                    return
                await bell.wait(0.2)

    return EventSourceResponse(stream(), ping=15)
