"""Database tables (SQLModel). The database is the system of record for state. Never commits."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from orchestrator.core.states import JobState


def now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class TemplateVersionRow(SQLModel, table=True):
    __tablename__ = "template_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    version: int
    content_hash: str
    title: str
    kind: str
    manifest: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    graph: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    source: str = "library"  # library (comfy_workflows/ in the repository) | published (API or CLI)
    published_by: str | None = None  # API key id
    deprecated: bool = False
    created_at: datetime = Field(default_factory=now)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(default_factory=new_id, primary_key=True)
    name: str
    key_hash: str = Field(unique=True, index=True)
    roles: list[str] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=now)
    revoked_at: datetime | None = None
    expires_at: datetime | None = Field(default=None, description="Refused from then on (None: never).")
    last_used_at: datetime | None = Field(default=None, description="Last authenticated request (to the minute).")
    created_by: str | None = Field(default=None, description="Id of the admin key that made it (None: the CLI).")


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("api_key_id", "idempotency_key", name="uq_jobs_api_key_idempotency"),)

    id: str = Field(default_factory=new_id, primary_key=True)
    kind: str = Field(default="comfy", index=True, description="comfy (a template on ComfyUI) | training (a LoRA).")
    template_version_id: int | None = Field(default=None, foreign_key="template_versions.id", index=True)
    template: str = Field(index=True)
    version: int
    params: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    state: JobState = Field(default=JobState.QUEUED, index=True)
    priority: int = 0
    timeout_s: float | None = None
    api_key_id: str | None = Field(default=None, foreign_key="api_keys.id")
    idempotency_key: str | None = Field(default=None, description="The submit's Idempotency-Key header (a "
                                        "batch's items: the batch's key and the item's index).")
    request_hash: str | None = Field(default=None, description="sha256 of the submitted body (idempotency).")
    cancel_requested: bool = False
    batch_id: str | None = Field(default=None, foreign_key="batches.id", index=True)
    batch_item: int | None = Field(default=None, description="The item's index in its batch's request.")
    progress: float = 0.0
    run_after: datetime | None = Field(default=None, description="Not dispatched before (retry backoff).")
    queued_at: datetime = Field(default_factory=now, description="Last time it entered QUEUED.")
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=now, index=True)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    local_only: bool = Field(default=False, description="A burst provider failed it: it runs locally from now on.")


class Batch(SQLModel, table=True):
    """Many jobs submitted as one request; its jobs carry ``batch_id`` (and their key, for fair share)."""

    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("api_key_id", "idempotency_key", name="uq_batches_api_key_idempotency"),)

    id: str = Field(default_factory=new_id, primary_key=True)
    api_key_id: str | None = Field(default=None, foreign_key="api_keys.id", index=True)
    idempotency_key: str | None = Field(default=None, description="The create's Idempotency-Key header.")
    request_hash: str | None = Field(default=None, description="sha256 of the created body (idempotency).")
    label: str | None = None
    template: str | None = Field(default=None, description="The template of a grid request (None: mixed items).")
    items: int = 0
    request: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON),
                                           description="The request's shape (template, grid, fixed values).")
    cancel_requested: bool = False
    created_at: datetime = Field(default_factory=now, index=True)


class Attempt(SQLModel, table=True):
    """One dispatch of a job to a server; its id is ComfyUI's prompt_id."""

    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("job_id", "number"), Index("ix_attempts_tier_started", "tier", "started_at"))

    id: str = Field(default_factory=lambda: str(uuid.uuid4()), primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", index=True)
    number: int
    server: str
    state: JobState = Field(default=JobState.RUNNING, index=True)
    owner: str | None = Field(default=None, description="The orchestrator process following it.")
    lease_until: datetime | None = Field(default=None, description="Owner's heartbeat; expired = orphaned.")
    comfy_version: str | None = None
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    started_at: datetime = Field(default_factory=now)
    finished_at: datetime | None = None
    api_key_id: str | None = Field(default=None, description="Training claims: the key that claimed it; only that "
                                   "key may act on the claim.")
    abandoned: bool = Field(default=False, description="Ended while its server did not answer: the prompt may "
                            "still be there, to be removed or interrupted once the server answers again.")
    counts: bool = Field(default=True, description="False: ended because a dependency of ours (the object store) "
                         "was down before the job ran; not counted against its max attempts. (A database error "
                         "ends no attempt: crash recovery adopts it.)")
    tier: int = Field(default=0, description="The server's tier when it was dispatched (0 local, 1+ burst).")
    rate: float = Field(default=0.0, description="The server's cost per GPU-second when it was dispatched.")
    cost: float = Field(default=0.0, description="Running: the estimate (held against the budgets); ended: "
                        "rate x gpu_s.")
    gpu_s: float | None = Field(default=None, description="GPU seconds billed: the provider's figure where it "
                                "reports one, else from start to end.")
    remote_id: str | None = Field(default=None, description="The provider's job id, recorded as soon as the "
                                  "submit answers (a burst attempt; on ComfyUI itself the prompt_id is the id).")


class ServerRow(SQLModel, table=True):
    """A ComfyUI server of the pool, with the last known health and capabilities."""

    __tablename__ = "servers"

    id: str = Field(default_factory=new_id, primary_key=True)
    name: str = Field(unique=True)
    url: str = Field(unique=True)
    state: str = "active"  # active | draining
    source: str = "api"  # config | api | local
    healthy: bool = False
    last_seen: datetime | None = None
    last_error: str | None = None
    capabilities: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    refreshed_at: datetime | None = None
    created_at: datetime = Field(default_factory=now)
    kind: str = Field(default="comfyui", description="comfyui (driven natively) | comfy_api_v2 | runpod.")
    tier: int = Field(default=0, description="0: local, filled first; 1 and up: burst tiers, in that order.")
    cost_per_gpu_s: float = Field(default=0.0, description="What a GPU-second costs there (budgets' unit).")
    cold_start_s: float = Field(default=0.0, description="Expected start-up seconds of a burst job, in estimates.")
    max_inflight: int | None = Field(default=None, description="Jobs at once (None: MEDIALAB_MAX_INFLIGHT).")


class JobEvent(SQLModel, table=True):
    """Append-only: every state change (and progress) of a job, with time and reason."""

    __tablename__ = "job_events"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", index=True)
    at: datetime = Field(default_factory=now)
    kind: str  # state | progress | info
    state: JobState | None = None
    reason: str = ""
    data: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class Artifact(SQLModel, table=True):
    """Bytes in the object store plus their lineage."""

    __tablename__ = "artifacts"

    id: str = Field(default_factory=new_id, primary_key=True)
    # what made it, unique: "input:<sha256>" for uploads, "output:<job>:<node>:<n>" for results, so a job
    # has exactly one set of outputs whatever server or attempt made them
    origin: str = Field(unique=True)
    key: str
    sha256: str = Field(index=True)
    size: int
    content_type: str
    filename: str
    role: str  # input | output
    job_id: str | None = Field(default=None, foreign_key="jobs.id", index=True)
    attempt_id: str | None = None
    output_name: str | None = None
    template: str | None = None
    template_version: int | None = None
    template_hash: str | None = None
    params: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    input_artifacts: list[str] | None = Field(default=None, sa_column=Column(JSON))
    server: str | None = None
    provider: str | None = Field(default=None, description="The burst server's name, when a provider made it.")
    remote_job_id: str | None = Field(default=None, description="The provider's job id that made it.")
    comfy_version: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = Field(default=None, description="A video's frame count.")
    fps: float | None = Field(default=None, description="A video's frame rate.")
    duration_s: float | None = Field(default=None, description="A video's duration in seconds.")
    frame_index: int | None = Field(default=None, description="A frame taken from a video: its index there.")
    time_s: float | None = Field(default=None, description="A frame taken from a video: its time code (s).")
    created_at: datetime = Field(default_factory=now)


class JobInput(SQLModel, table=True):
    """Which artifacts a job reads; an artifact a job reads cannot be deleted."""

    __tablename__ = "job_inputs"

    job_id: str = Field(foreign_key="jobs.id", primary_key=True)
    artifact_id: str = Field(foreign_key="artifacts.id", primary_key=True, index=True)


class ArtifactTag(SQLModel, table=True):
    __tablename__ = "artifact_tags"

    artifact_id: str = Field(foreign_key="artifacts.id", primary_key=True)
    tag: str = Field(primary_key=True, index=True)


class LoraModel(SQLModel, table=True):
    """The model registry: a trained LoRA, by sha256, with what made it and whether jobs may use it."""

    __tablename__ = "lora_models"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: str = Field(default_factory=new_id, primary_key=True)
    sha256: str = Field(unique=True, index=True)
    name: str = Field(index=True)
    version: int
    filename: str = Field(unique=True, description="File name in the servers' loras folder.")
    state: str = "approved"  # candidate | approved | withdrawn
    base_model: str | None = None
    trigger_words: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    training: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    ss_metadata: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    artifact_id: str = Field(foreign_key="artifacts.id")
    dataset_artifact_id: str | None = Field(default=None, foreign_key="artifacts.id")
    job_id: str | None = Field(default=None, foreign_key="jobs.id", index=True)
    size: int = 0
    distribution: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=now)
    state_changed_at: datetime = Field(default_factory=now)


class Trainer(SQLModel, table=True):
    """A trainer process seen by the orchestrator; ``gpu_server`` is the pool server it shares a GPU with."""

    __tablename__ = "trainers"

    name: str = Field(primary_key=True)
    gpu_server: str | None = Field(default=None, description="URL of the pool server on the same GPU.")
    last_seen: datetime = Field(default_factory=now)
    waiting_since: datetime | None = Field(default=None, description="Wants its GPU: work waits, inference "
                                           "still runs there.")
    info: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class AuditEvent(SQLModel, table=True):
    """Append-only: which key did what (submit, cancel, publish, deprecate, approve, withdraw, delete, server
    and key changes). Written in the transaction of the change it records."""

    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=now, index=True)
    api_key_id: str | None = Field(default=None, index=True, description="None: the CLI on the host.")
    key_name: str | None = None
    action: str = Field(index=True)  # e.g. job.submit, template.publish, server.add, key.revoke
    target: str = Field(default="", index=True)  # the id or name acted on
    data: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class PipelineVersionRow(SQLModel, table=True):
    """One immutable pipeline version (``core.pipelines``): from the library folder or published. A run
    (later) records the row id and content hash; ``templates`` pins each step's template version."""

    __tablename__ = "pipeline_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    version: int
    content_hash: str
    description: str = ""
    definition: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))  # pipeline.json, as parsed
    step_order: list[str] = Field(sa_column=Column(JSON, nullable=False))  # step ids, topologically
    templates: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))  # step id -> template, version, hash
    source: str = "library"  # library (comfy_pipelines/ in the repository) | published (API or CLI)
    published_by: str | None = None  # API key id
    deprecated: bool = False
    created_at: datetime = Field(default_factory=now)


class PipelineRun(SQLModel, table=True):
    """One run of a pipeline version (``app.pipeline_runs``); its steps are ``PipelineStep`` rows. Durable:
    everything a restarted service needs to go on (``core.pipeline_runs.plan``) is in these rows."""

    __tablename__ = "pipeline_runs"

    id: str = Field(default_factory=new_id, primary_key=True)
    pipeline_version_id: int = Field(foreign_key="pipeline_versions.id", index=True)
    pipeline: str = Field(index=True)
    version: int
    content_hash: str
    state: str = Field(default="RUNNING", index=True)  # core.pipeline_runs.RunState
    inputs: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))  # input name -> value (artifact id)
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # overrides
    outputs: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    reuse: bool = True
    priority: int = 0
    cancel_requested: bool = False
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    api_key_id: str | None = Field(default=None, foreign_key="api_keys.id", index=True)
    created_at: datetime = Field(default_factory=now, index=True)
    finished_at: datetime | None = None
    batch_id: str | None = Field(default=None, foreign_key="batches.id", index=True)  # a batch of pipeline runs
    batch_item: int | None = Field(default=None, description="The run's index in its batch's request.")


class PipelineStep(SQLModel, table=True):
    """One step of a run: WAITING, then QUEUED (its job is queued or running), then SUCCEEDED, REUSED (a
    succeeded job's outputs taken, no job of its own), FAILED or CANCELLED. The conditional WAITING -> QUEUED
    update that links ``job_id`` is what keeps a step from being submitted twice."""

    __tablename__ = "pipeline_run_steps"
    __table_args__ = (UniqueConstraint("run_id", "step"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="pipeline_runs.id", index=True)
    step: str
    position: int = 0  # in the pipeline's step order
    template: str
    version: int
    state: str = Field(default="WAITING", index=True)  # core.pipeline_runs.StepState
    job_id: str | None = Field(default=None, foreign_key="jobs.id", unique=True)
    reused_from_job: str | None = Field(default=None, foreign_key="jobs.id")
    reuse_key: str | None = Field(default=None, index=True, description="core.pipeline_runs.reuse_key")
    params: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))  # resolved, as submitted
    outputs: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    past_jobs: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # before resumes
    updated_at: datetime = Field(default_factory=now)
