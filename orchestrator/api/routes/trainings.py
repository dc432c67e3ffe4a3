"""Training jobs (``/v1/trainings``), datasets (``/v1/datasets``) and the trainer protocol (``/v1/trainer``).

A trainer (``medialab trainer``, role ``train``) asks for work with ``POST /v1/trainer/claim``, downloads the
dataset and, if it lacks it, the base checkpoint, renews its claim with heartbeats that carry progress
events (the reply says when the job is to be cancelled), uploads samples, checkpoints and the final LoRA,
and ends the claim with ``finish``. A claim not renewed for ``MEDIALAB_TRAINER_LEASE_S`` is taken back.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, UploadFile
from fastapi.responses import FileResponse, Response, StreamingResponse

from orchestrator.api.deps import AnyKey, CtxDep, RunKey, SessionDep, TrainKey
from orchestrator.api.routes.artifacts import artifact_out, bytes_response
from orchestrator.api.routes.jobs import job_out, jobs_out
from orchestrator.api.schemas import (
    ArtifactOut,
    DatasetBuild,
    JobOut,
    QueryText,
    TrainerClaim,
    TrainerFinish,
    TrainerHeartbeat,
    TrainerHello,
    TrainingSubmit,
)
from orchestrator.core.limits import INT64_MAX, MAX_QUERY_LENGTH
from orchestrator.core.states import JobState
from orchestrator.db import artifacts as artifact_db
from orchestrator.db import jobs as job_db
from orchestrator.training.app import datasets as dataset_store
from orchestrator.training.app import trainings as tj
from orchestrator.training.runtime import checkpoint_files

router = APIRouter(tags=["training"])


# -- datasets --------------------------------------------------------------------------------------
@router.post("/datasets", status_code=201, response_model=ArtifactOut)
def build_dataset(body: DatasetBuild, ctx: CtxDep, session: SessionDep, _: RunKey) -> ArtifactOut:
    """Build a dataset from image artifacts and/or frames of a video artifact, check it, store it."""
    art = dataset_store.build(session, ctx.store, **body.model_dump(), settings=ctx.settings)
    return artifact_out(session, art)


@router.get("/datasets", response_model=list[ArtifactOut])
def list_datasets(session: SessionDep, _: AnyKey, name: QueryText = None) -> list[ArtifactOut]:
    return [artifact_out(session, a) for a in dataset_store.list_datasets(session, name)]


# -- training jobs ---------------------------------------------------------------------------------
@router.post("/trainings", status_code=201, response_model=JobOut)
def submit(body: TrainingSubmit, ctx: CtxDep, session: SessionDep, key: RunKey) -> JobOut:
    """Queue a LoRA training (every option validated first); follow it like any job (/v1/jobs/{id})."""
    job = tj.submit_training(session, ctx.store, ctx.settings, dataset=body.dataset, base=body.base,
                             preset=body.preset, trigger=body.trigger, name=body.name, overrides=body.set,
                             api_key_id=key.id, priority=body.priority, timeout_s=body.timeout_s)
    local = getattr(ctx, "local_trainer", None)
    if local is not None:
        local.wake()
    return job_out(session, job)


@router.get("/trainings", response_model=list[JobOut])
def list_trainings(session: SessionDep, _: AnyKey, state: JobState | None = None,
                   limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[JobOut]:
    return jobs_out(session, job_db.list_jobs(session, state, tj.TEMPLATE, limit))


# -- the trainer protocol --------------------------------------------------------------------------
@router.post("/trainer/claim", response_model=TrainerClaim)
def claim(body: TrainerHello, ctx: CtxDep, session: SessionDep, key: TrainKey) -> TrainerClaim:
    """The next training job, claimed for this key: only this key may act on the claim."""
    lease_s = ctx.settings.trainer_lease_s
    got = tj.claim(session, body.trainer, lease_s, body.gpu_server, body.info, ctx.executor.policy, key.id)
    out = TrainerClaim(lease_s=lease_s, heartbeat_s=max(min(lease_s / 6, 5.0), 0.2))
    if isinstance(got, str):
        out.wait = got
    elif got is not None:
        job, attempt = got
        out.job, out.attempt_id = job_out(session, job), attempt.id
    return out


@router.get("/trainer/attempts/{attempt_id}/dataset", response_class=StreamingResponse)
def dataset(attempt_id: str, trainer: Annotated[str, Query(max_length=MAX_QUERY_LENGTH)], ctx: CtxDep,  # noqa: ANN201
            session: SessionDep, key: TrainKey):
    """The dataset tar of the claimed job."""
    _attempt, job = tj.held_attempt(session, attempt_id, trainer, key.id)
    return bytes_response(ctx, artifact_db.get_artifact(session, job.params["dataset"]), attachment=False)


@router.get("/trainer/checkpoints/{name:path}", response_class=FileResponse)
def checkpoint(name: str, ctx: CtxDep, _: TrainKey) -> Response:
    """A base checkpoint this orchestrator has (its models folder or the shared models path): a file as it is,
    a diffusers folder as a tar (header ``X-MediaLab-Checkpoint: folder``; files and folders only, no link out
    of it). A name that leaves the checkpoints folder is refused by the sandbox's path rule, whether or not it
    exists."""
    path, members = tj.served_checkpoint(ctx.settings, name)
    if members is None:
        return FileResponse(path, media_type="application/octet-stream", filename=path.name)
    return StreamingResponse(checkpoint_files.tar_stream(members), media_type=checkpoint_files.MEDIA_TYPE,
                             headers={checkpoint_files.KIND_HEADER: "folder",
                                      "Content-Length": str(checkpoint_files.tar_size(members)),
                                      "Content-Disposition": f'attachment; filename="{quote(path.name)}.tar"'})


@router.post("/trainer/attempts/{attempt_id}/heartbeat")
def heartbeat(attempt_id: str, body: TrainerHeartbeat, ctx: CtxDep, session: SessionDep,
              key: TrainKey) -> dict[str, object]:
    """Renew the claim and record progress events; ``cancel: true`` tells the trainer to stop."""
    return tj.heartbeat(session, attempt_id, body.trainer, ctx.settings.trainer_lease_s, body.events, key.id,
                        settings=ctx.settings)


@router.post("/trainer/attempts/{attempt_id}/outputs", status_code=201, response_model=ArtifactOut)
def upload_output(attempt_id: str, file: UploadFile, trainer: Annotated[str, Form(max_length=MAX_QUERY_LENGTH)],
                  kind: Annotated[str, Form(max_length=32, description="sample | checkpoint | lora")], ctx: CtxDep,
                  session: SessionDep, key: TrainKey,
                  step: Annotated[int | None, Form(ge=0, le=INT64_MAX)] = None) -> ArtifactOut:
    """Checked as an upload is (max_upload_bytes, max_image_pixels, ...) before it is stored."""
    art = tj.store_output(session, ctx.store, attempt_id, trainer, kind, file.file, file.filename or kind, step,
                          key.id, settings=ctx.settings)
    return artifact_out(session, art)


@router.post("/trainer/attempts/{attempt_id}/finish", response_model=JobOut)
def finish(attempt_id: str, body: TrainerFinish, ctx: CtxDep, session: SessionDep, key: TrainKey) -> JobOut:
    """End the claim; a success registers the LoRA and puts it on the pool servers before it returns."""
    job = tj.finish(session, ctx.store, ctx.settings, attempt_id, body.trainer, body.state, body.error,
                    body.lora_artifact, key.id)
    if job.state == JobState.SUCCEEDED:
        tj.distribute_result(session, ctx.store, ctx.settings, ctx.pool, job.id)
    return job_out(session, job)
