"""Batches: many jobs in one request (``app/batches.py``), their progress, jobs, outputs and events."""

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, NoReturn

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from sqlmodel import Session
from sse_starlette.sse import EventSourceResponse

from orchestrator.api.deps import AnyKey, CtxDep, RunKey, SessionDep
from orchestrator.api.routes.jobs import jobs_out, stream_read
from orchestrator.api.routing import event_stream_responses
from orchestrator.api.schemas import ArtifactOut, BatchEventOut, BatchOut, BatchSubmit, EventOut, JobOut
from orchestrator.app import batches as batch_app
from orchestrator.app import frames as frame_app
from orchestrator.bootstrap import Context
from orchestrator.core import batches as rules
from orchestrator.core.errors import InvalidInput
from orchestrator.core.keys import is_admin
from orchestrator.core.limits import INT64_MAX, MAX_OFFSET
from orchestrator.core.states import JobState
from orchestrator.db import batches as batch_db
from orchestrator.db.notify import ANY_EVENT, AsyncWaiter
from orchestrator.db.tables import Batch

router = APIRouter(prefix="/batches", tags=["batches"])

MAX_OUTPUTS_SHOWN = 1000  # outputs in a batch's answer (GET .../jobs pages through all of them)
DRY_RUN_PREVIEW = 5  # items shown in a dry run's answer
BATCH_SAFETY_S = 1.0  # a batch's stream reads at least this often (commits of other processes ring nothing here)
BATCH_SPACING_S = 0.2  # and at most this often: a batch of thousands of jobs may ring many times a second


def batch_out(session: Session, batch: Batch, outputs: bool = False) -> BatchOut:
    out = BatchOut.model_validate(batch)
    p = batch_app.batch_progress(session, batch)
    out.total, out.counts, out.done, out.progress, out.eta_s, out.finished = (
        p.total, p.counts, p.done, p.fraction, p.eta_s, p.finished)
    if outputs:
        arts = batch_db.run_outputs(session, batch.id, MAX_OUTPUTS_SHOWN) if batch_app.is_pipeline_batch(batch) \
            else batch_db.batch_outputs(session, batch.id, MAX_OUTPUTS_SHOWN)
        out.outputs = [ArtifactOut.model_validate(a) for a in arts]
    return out


@router.post("", status_code=201, response_model=BatchOut)
def create(body: BatchSubmit, ctx: CtxDep, session: SessionDep, key: RunKey, response: Response,
           idempotency_key: Annotated[str | None, Header(max_length=255, description=(
               "The same key and body return the same batch (a retried request never submits twice); the "
               "same key with another body is 422."))] = None) -> BatchOut:
    """Every item validated first: one bad item refuses the whole batch (422, ``errors`` naming each bad item
    by index); else the batch and all its jobs are written QUEUED in one transaction. ``dry_run``: validated
    the same way, nothing written (200: the count and the first items). Every item skipped (their keys
    done): nothing written, 200 with ``skipped`` and the batch of those jobs (id '' if not all of one)."""
    limit = ctx.settings.max_batch_items
    request_hash = hashlib.sha256(json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()).hexdigest() \
        if idempotency_key and not body.dry_run else None
    keys: list[str | None] | None = None
    if body.pipeline is not None:
        if body.items is not None or body.template or body.grid or body.version or body.dry_run or body.frames:
            raise_shape("a pipeline batch takes inputs, input_param, params and pipeline_version (no items, "
                        "template, version, grid or dry_run)")
        g = rules.PipelineGrid(pipeline=body.pipeline, version=body.pipeline_version, inputs=body.inputs,
                               input_param=body.input_param, params=body.params)
        shape = {"kind": "pipeline", "input_param": body.input_param, "inputs": len(body.inputs),
                 "params": body.params}
        batch = batch_app.create_pipeline_batch(session, ctx.pool, g, api_key_id=key.id, label=body.label,
                                                priority=body.priority, request=shape, settings=ctx.settings)
        if ctx.dispatcher:
            ctx.dispatcher.wake()
        return batch_out(session, batch)
    if body.items is not None:
        if body.template or body.inputs or body.grid or body.params or body.input_param or body.frames:
            raise_shape("give either items, or template with inputs/frames/grid/params, not both")
        items = rules.explicit([i.model_dump() for i in body.items], limit)
        keys = [i.key for i in body.items]
        shape = {"kind": "items"}
    elif body.template:
        inputs = body.inputs
        if body.frames is not None:  # a video's frames are the inputs: extracted first (a dry run: selected)
            if body.inputs:
                raise_shape("give either inputs or frames, not both")
            f = body.frames
            inputs = batch_app.frame_inputs(session, ctx.store, f.video, frame_app.spec_of(
                ctx.settings, f.every_n, f.at, f.scenes, f.sharpest, f.scene_threshold), dry_run=body.dry_run,
                settings=ctx.settings)
        grid = rules.Grid(template=body.template, version=body.version, inputs=inputs,
                          input_param=body.input_param, grid=body.grid, params=body.params)
        items = rules.expand(grid, limit)
        shape = {"kind": "grid", "template": body.template, "version": body.version, "input_param": body.input_param,
                 "inputs": len(inputs), "grid": body.grid, "params": body.params}
        if body.frames is not None:
            shape["frames"] = body.frames.model_dump(mode="json", exclude_none=True)
    else:
        raise_shape("a batch needs items, or a template (with inputs and/or a grid)")
    created = batch_app.create_batch(session, ctx.pool, items, api_key_id=key.id, label=body.label,
                                     priority=body.priority, timeout_s=body.timeout_s, keys=keys, request=shape,
                                     settings=ctx.settings, dry_run=body.dry_run,
                                     idempotency_key=None if body.dry_run else idempotency_key,
                                     request_hash=request_hash)
    if created.dry_run:
        response.status_code = 200
        return BatchOut(id="", label=body.label, template=body.template, items=len(items), request=shape,
                        cancel_requested=False, created_at=datetime.now(UTC), total=len(created.planned),
                        skipped=created.skipped, dry_run=True,
                        preview=[{"item": i.index, "template": i.template, "version": i.version, "params": i.params}
                                 for i in created.planned[:DRY_RUN_PREVIEW]])
    if not created.written and not created.replayed:
        response.status_code = 200  # every item skipped: nothing new
    if created.batch is None:
        return BatchOut(id="", label=body.label, template=body.template, items=len(items), request=shape,
                        cancel_requested=False, created_at=datetime.now(UTC), skipped=created.skipped)
    if ctx.dispatcher and created.written:
        ctx.dispatcher.wake()
    out = batch_out(session, created.batch)
    out.skipped = created.skipped
    return out


def raise_shape(message: str) -> NoReturn:
    raise InvalidInput(message, errors=[{"param": "items", "message": message}])


@router.get("", response_model=list[BatchOut])
def list_batches(session: SessionDep, key: AnyKey, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                 offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> list[BatchOut]:
    """Newest first: the caller's batches (an admin key: every key's)."""
    return [batch_out(session, b) for b in batch_db.list_batches(session, key.id, is_admin(key), limit, offset)]


@router.get("/{batch_id}", response_model=BatchOut)
def get(batch_id: str, session: SessionDep, _: AnyKey, outputs: bool = True) -> BatchOut:
    """Counts by state, progress, ETA and the outputs (the first ``MAX_OUTPUTS_SHOWN``; ``outputs=false``:
    none, for a client that polls the counts)."""
    return batch_out(session, batch_db.get_batch(session, batch_id), outputs=outputs)


@router.get("/{batch_id}/jobs", response_model=list[JobOut])
def jobs(batch_id: str, session: SessionDep, _: AnyKey, state: JobState | None = None,
         limit: Annotated[int, Query(ge=1, le=1000)] = 100,
         offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> list[JobOut]:
    """The batch's jobs by item (a retried item: each of its jobs)."""
    batch = batch_db.get_batch(session, batch_id)
    return jobs_out(session, batch_db.batch_jobs(session, batch.id, state, limit, offset))


@router.post("/{batch_id}/cancel", response_model=BatchOut)
def cancel(batch_id: str, session: SessionDep, _: RunKey) -> BatchOut:
    """Queued jobs CANCELLED at once; running ones interrupted by their dispatcher."""
    return batch_out(session, batch_app.cancel_batch(session, batch_id))


@router.post("/{batch_id}/retry", response_model=BatchOut)
def retry(batch_id: str, ctx: CtxDep, session: SessionDep, _: RunKey) -> BatchOut:
    """A new job for each FAILED or CANCELLED item, same parameters, in the same batch."""
    batch, _jobs = batch_app.retry_failed(session, batch_id)
    if ctx.dispatcher:
        ctx.dispatcher.wake()
    return batch_out(session, batch)


def _poll(ctx: Context, batch_id: str, after: int) -> tuple[str, list[BatchEventOut], bool]:
    with ctx.db.session() as s:
        batch = batch_db.get_batch(s, batch_id)
        counts = {st.value: n for st, n in batch_db.counts_by_state(s, batch.id).items()}
        events = [BatchEventOut(event=EventOut.model_validate(e), batch_item=i, counts=counts)
                  for e, i in batch_db.state_events_after(s, batch.id, after)]
        finished = all(JobState(st).terminal for st in counts)
        if finished and batch_app.is_pipeline_batch(batch):  # a waiting step has no job yet
            finished = batch_app.batch_progress(s, batch).finished
        return batch.id, events, finished


async def _read(request: Request, ctx: Context, batch_id: str, after: int) -> tuple[str, list[BatchEventOut], bool]:
    return await stream_read(request, _poll, ctx, batch_id, after)


@router.get("/{batch_id}/events", response_model=None,
            responses=event_stream_responses(BatchEventOut, "Server-Sent Events (follow=false: a JSON list)"))
async def events(request: Request, batch_id: str, ctx: CtxDep, _: AnyKey,
                 last_event_id: Annotated[int | None, Header(ge=0, le=INT64_MAX)] = None,
                 follow: bool = True) -> EventSourceResponse | list[BatchEventOut]:
    """Server-Sent Events: the state events of the batch's jobs, each with its item and the batch's counts by
    state; ends once every job is in a final state. With ``follow=false``: the events so far, as a JSON list."""
    batch_id, so_far, _finished = await _read(request, ctx, batch_id, last_event_id or 0)  # 404 before streaming
    if not follow:
        return so_far

    async def stream() -> AsyncIterator[dict]:
        """Woken by any job event committed in this process (``ANY_EVENT``), read at most every
        ``BATCH_SPACING_S`` and at least every ``BATCH_SAFETY_S``; holds no connection while it waits."""
        after = last_event_id or 0
        with AsyncWaiter(ctx.db.bell, ANY_EVENT) as bell:
            while True:
                bell.clear()
                while True:  # every page of what is there now
                    _id, page, finished = await _read(request, ctx, batch_id, after)
                    if not page:
                        break
                    after = page[-1].event.id
                    for e in page:
                        yield {"id": str(e.event.id), "event": "state",
                               "data": json.dumps(e.model_dump(mode="json"))}
                if finished:
                    return
                await anyio.sleep(BATCH_SPACING_S)
                await bell.wait(BATCH_SAFETY_S - BATCH_SPACING_S)

    return EventSourceResponse(stream(), ping=15)
