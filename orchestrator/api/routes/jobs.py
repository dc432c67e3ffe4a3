import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request
from sqlmodel import Session
from sse_starlette.sse import EventSourceResponse

from orchestrator.api.deps import AnyKey, CtxDep, RunKey, SessionDep
from orchestrator.api.routing import event_stream_responses
from orchestrator.api.schemas import EventOut, JobOut, JobSubmit, QueryText
from orchestrator.app import jobs as job_app
from orchestrator.bootstrap import Context
from orchestrator.core.limits import INT64_MAX, MAX_OFFSET
from orchestrator.core.states import JobState
from orchestrator.db import artifacts as artifact_db
from orchestrator.db import attempts as attempt_db
from orchestrator.db import jobs as job_db
from orchestrator.db.notify import AsyncWaiter
from orchestrator.db.tables import Job

router = APIRouter(prefix="/jobs", tags=["jobs"])


def job_out(session: Session, job: Job) -> JobOut:
    out = jobs_out(session, [job])[0]
    out.outputs = artifact_db.job_outputs(session, job.id)
    out.attempts = attempt_db.job_attempts(session, job.id)
    return out


def jobs_out(session: Session, jobs: Iterable[Job]) -> list[JobOut]:
    """Jobs as a listing shows them (no attempts or outputs), each with its cost: the one place it is summed."""
    rows = list(jobs)
    costs = attempt_db.job_costs(session, (j.id for j in rows))
    return [JobOut.model_validate(j).model_copy(update={"cost": costs.get(j.id, 0.0)}) for j in rows]


@router.post("", status_code=201, response_model=JobOut)
def submit(body: JobSubmit, ctx: CtxDep, session: SessionDep, key: RunKey,
           idempotency_key: Annotated[str | None, Header(max_length=255, description=(
               "The same key and body return the same job (a retried request never submits twice); the same "
               "key with another body is 422."))] = None) -> JobOut:
    request_hash = hashlib.sha256(
        json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()).hexdigest() if idempotency_key else None
    job, created = job_app.submit(session, ctx.pool, body.template, body.params, body.version,
                                  api_key_id=key.id, priority=body.priority, timeout_s=body.timeout_s,
                                  idempotency_key=idempotency_key, request_hash=request_hash, settings=ctx.settings)
    if ctx.dispatcher:
        ctx.dispatcher.wake()
    if created:  # the job as written (QUEUED): no attempt, output or cost yet, so nothing to read back
        return JobOut.model_validate(job)
    return job_out(session, job)  # an earlier submit's job (Idempotency-Key): as it is now


@router.get("", response_model=list[JobOut])
def list_jobs(session: SessionDep, _: AnyKey, state: JobState | None = None, template: QueryText = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50,
              offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> list[JobOut]:
    return jobs_out(session, job_db.list_jobs(session, state, template, limit, offset))


@router.get("/{job_id}", response_model=JobOut)
def get(job_id: str, session: SessionDep, _: AnyKey) -> JobOut:
    return job_out(session, job_db.get_job(session, job_id))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel(job_id: str, session: SessionDep, _: RunKey) -> JobOut:
    """Queued: CANCELLED at once. Running: interrupted by its prompt_id, CANCELLED once confirmed."""
    return job_out(session, job_app.cancel_job(session, job_id))


T = TypeVar("T")
STREAM_READERS = 4  # stream reads of one process at once (threads, so database connections): never the pool
STREAM_SAFETY_S = 10.0  # a waiting stream reads at least this often, even when nothing rang its bell
STREAM_LINGER_S = 0.2  # after the final state: one more look this long after it


def _poll(ctx: Context, job_id: str, after: int) -> tuple[list[EventOut], JobState, str]:
    with ctx.db.session() as s:
        job = job_db.get_job(s, job_id)  # 404 first; the id given may be a prefix of the job's
        events = [EventOut.model_validate(e) for e in job_db.events_after(s, job.id, after)]
        return events, job.state, job.id


async def stream_read(request: Request, poll: Callable[..., T], *args: Any) -> T:
    """``poll(*args)`` in a thread, at most ``STREAM_READERS`` of them for all streams of this app together (job
    and batch streams), so a burst of streams waits its turn here instead of taking the threads and connections
    other requests need."""
    state = request.app.state
    if not hasattr(state, "stream_readers"):  # made lazily, in the app's own event loop
        state.stream_readers = anyio.CapacityLimiter(STREAM_READERS)
    return await anyio.to_thread.run_sync(poll, *args, limiter=state.stream_readers)


async def _read(request: Request, ctx: Context, job_id: str, after: int) -> tuple[list[EventOut], JobState, str]:
    return await stream_read(request, _poll, ctx, job_id, after)


@router.get("/{job_id}/events", response_model=None,
            responses=event_stream_responses(EventOut, "Server-Sent Events (follow=false: a JSON list)"))
async def events(request: Request, job_id: str, ctx: CtxDep, _: AnyKey,
                 last_event_id: Annotated[int | None, Header(ge=0, le=INT64_MAX)] = None,
                 follow: bool = True) -> EventSourceResponse | list[EventOut]:
    """Server-Sent Events: every event of the job (state, progress, info); ends after the final state.
    With ``follow=false``: the events so far, as a JSON list."""
    so_far, _state, job_id = await _read(request, ctx, job_id, last_event_id or 0)  # 404 before streaming
    if not follow:
        return so_far

    async def stream() -> AsyncIterator[dict]:
        """Holds no database connection while it waits: woken by the job's bell (rung by this process's
        commits, and by the process's event watcher for events committed elsewhere: a replica, the CLI), it
        reads with a session per read, and every ``STREAM_SAFETY_S`` anyway. After the final state it looks
        once more (an event may follow it, e.g. a trained LoRA's distribution) and ends when nothing new came."""
        after = last_event_id or 0
        with AsyncWaiter(ctx.db.bell, job_id, ctx.db.watcher) as bell:
            while True:
                bell.clear()
                batch, state, _id = await _read(request, ctx, job_id, after)
                bell.seen(batch[-1].id if batch else after)
                for e in batch:
                    after = e.id
                    yield {"id": str(e.id), "event": e.kind, "data": json.dumps(e.model_dump(mode="json"))}
                if state.terminal and not batch:
                    return
                await bell.wait(STREAM_LINGER_S if state.terminal else STREAM_SAFETY_S)

    return EventSourceResponse(stream(), ping=15)
