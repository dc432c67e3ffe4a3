"""Request and response bodies of the API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from orchestrator.core.limits import CONTROL_CHARS, MAX_PATH_LENGTH, MAX_QUERY_LENGTH, PRIORITY_RANGE
from orchestrator.core.server_urls import MAX_SERVER_URL_LENGTH, redact, redact_value
from orchestrator.core.states import JobState
from orchestrator.training.core.dataset import MAX_IMAGES as MAX_DATASET_IMAGES

# What the API shows of a server URL, a message or an error: never the credentials of a URL in it.
Shown = Annotated[str, AfterValidator(redact)]
ShownJson = Annotated[dict[str, Any] | None, AfterValidator(redact_value)]
MAX_VERSION = 10**9  # template versions (integers in the database)
# Text without control characters (the one rule: limits.CONTROL), non-empty or possibly empty.
PRINTABLE, PRINTABLE_OR_EMPTY = rf"^[^{CONTROL_CHARS}]+$", rf"^[^{CONTROL_CHARS}]*$"
# An id, reference or label of a request: bounded and printable (names with a setting as their limit are
# checked by the service, which names that setting).
Label = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_LENGTH, pattern=PRINTABLE)]
# A free-text filter of a listing (?template=, ?tag=, ...): bounded and printable.
QueryText = Annotated[str | None, Query(max_length=MAX_QUERY_LENGTH, pattern=PRINTABLE_OR_EMPTY)]
FiniteSeconds = Annotated[float | None, Field(gt=0, allow_inf_nan=False, description="Seconds; at most the "
                                              "service's max_timeout_s (a setting).")]


class Out(BaseModel):
    # validate_assignment: a field filled in after model_validate (a job's attempts and outputs) is validated
    # too, so its own rules (the redaction of server URLs) apply; FastAPI does not validate a model again.
    model_config = ConfigDict(from_attributes=True, validate_assignment=True)


class ArtifactOut(Out):
    id: str
    sha256: str
    size: int
    content_type: str
    filename: str
    role: str
    width: int | None
    height: int | None
    frames: int | None = Field(None, description="A video's frame count.")
    fps: float | None = Field(None, description="A video's frame rate.")
    duration_s: float | None = Field(None, description="A video's duration in seconds.")
    frame_index: int | None = Field(None, description="A frame taken from a video (its input_artifacts[0]): "
                                    "its index there.")
    time_s: float | None = Field(None, description="A frame taken from a video: its time code in seconds.")
    job_id: str | None
    attempt_id: str | None
    output_name: str | None
    template: str | None
    template_version: int | None
    template_hash: str | None
    params: dict[str, Any] | None
    input_artifacts: list[str] | None
    server: Shown | None
    provider: str | None = Field(None, description="The burst server's name, when a provider made it.")
    remote_job_id: str | None = Field(None, description="The provider's job id that made it.")
    comfy_version: str | None
    created_at: datetime
    tags: list[str] = []


class AttemptOut(Out):
    id: str = Field(description="Also the prompt_id on the ComfyUI server.")
    number: int
    server: Shown
    state: JobState
    comfy_version: str | None
    error: ShownJson
    started_at: datetime
    finished_at: datetime | None
    tier: int = Field(0, description="The server's tier when it was dispatched (0: local, 1 and up: burst).")
    cost: float = Field(0.0, description="Ended: what it cost (rate x gpu_s); running: its estimate.")
    gpu_s: float | None = Field(None, description="GPU seconds billed (a priced server's).")
    remote_id: str | None = Field(None, description="The provider's job id (a burst attempt).")


class JobOut(Out):
    id: str
    kind: str = "comfy"  # comfy | training
    template: str
    version: int
    params: dict[str, Any]
    state: JobState
    priority: int
    progress: float
    cancel_requested: bool
    error: ShownJson
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    batch_id: str | None = Field(None, description="The batch the job belongs to (None: submitted alone).")
    batch_item: int | None = Field(None, description="The job's item in its batch's request.")
    local_only: bool = Field(False, description="A burst provider failed it: it runs locally from now on.")
    cost: float = Field(0.0, description="What its attempts cost (burst ones; a running one: its estimate).")
    outputs: list[ArtifactOut] = []
    attempts: list[AttemptOut] = []


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(description="Template name (at most max_name_length characters).")
    version: int | None = Field(None, ge=1, le=MAX_VERSION, description="Template version; default: the newest.")
    params: dict[str, Any] = Field({}, description="At most max_params; strings at most max_string_length.")
    priority: int = Field(0, ge=PRIORITY_RANGE[0], le=PRIORITY_RANGE[1])
    timeout_s: FiniteSeconds = None


class EventOut(Out):
    id: int
    job_id: str
    at: datetime
    kind: str
    state: JobState | None
    reason: Shown
    data: ShownJson


class TemplateVersionOut(BaseModel):
    name: str
    version: int
    title: str
    description: str
    kind: str
    content_hash: str
    created_at: datetime
    source: str = "library"
    deprecated: bool = False
    params_schema: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    graph: dict[str, Any] | None = None


class TemplatePublish(BaseModel):
    model_config = ConfigDict(extra="forbid")

    graph: dict[str, Any] = Field(description="The workflow as ComfyUI saves it (editor format: nodes, links), or "
                                              "its API format (Workflow > Export (API)).")
    manifest: dict[str, Any] | None = Field(None, description="Default: read from the parameter and save nodes.")
    title: str | None = None
    kind: str | None = Field(None, description="Default: the kind of the version the workflow was opened from, "
                                               "else image.")
    description: str = ""


class Change(BaseModel):
    from_: Any = Field(alias="from")
    to: Any


class TemplateDiff(BaseModel):
    added: list[str]
    removed: list[str]
    changed: list[str]
    details: dict[str, dict[str, Change]] = Field(description="For each changed one: its fields (a node's inputs, a "
                                                              "link written '<- source') with old and new value.")


class TemplatePreview(BaseModel):
    """What a publish would store, and what changed from the version it would follow."""

    name: str
    version: int = Field(description="The version number the publish would get.")
    title: str
    description: str
    kind: str
    content_hash: str
    manifest: dict[str, Any] = Field(description="As it would be stored: parameters read from the parameter nodes "
                                                 "(merged with those of the version the workflow was opened from).")
    params_schema: dict[str, Any]
    graph: dict[str, Any] = Field(description="The API-format graph it would store.")
    base_version: int | None = Field(description="The version the diff is against: the one the workflow was opened "
                                                 "from, else the newest; null for a new template.")
    fields: dict[str, Change] | None = Field(description="The manifest's own fields that changed (title, description, "
                                                         "kind, timeout_s), with old and new value.")
    parameters: TemplateDiff | None = Field(description="Parameters added, removed and changed (by name).")
    nodes: TemplateDiff | None = Field(description="Nodes added, removed and changed (by title, else id).")


class TemplateOut(BaseModel):
    name: str
    latest: TemplateVersionOut
    versions: list[int]


# -- training -------------------------------------------------------------------------------------------
class DatasetBuild(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Dataset name (lower-case letters, digits, '_' or '-').")
    trigger: str = Field(description="The trigger word put into the captions.")
    images: list[Label] = Field([], max_length=MAX_DATASET_IMAGES, description="Image artifact ids.")
    captions: dict[str, str] = Field({}, max_length=MAX_DATASET_IMAGES,
                                     description="Caption per image artifact id (overrides the template).")
    caption_template: str | None = Field(None, description="e.g. 'photo of {trigger}, {caption}'.")
    video: Label | None = Field(None, description="A video artifact to sample frames from.")
    frames: int | None = Field(None, ge=1, le=MAX_DATASET_IMAGES, description="Frames sampled evenly (default 20).")
    every_n: int | None = Field(None, ge=1, le=10**6, description="Or every n-th frame.")
    preset: Label | None = Field("sd15-character", description="Training preset the dataset is checked against.")
    resolution: int | None = Field(None, ge=64, le=4096, description="Default: the preset's.")
    face_centred: bool = False
    crop: Label = "centre"


class TrainingSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: Label = Field(description="Dataset artifact id.")
    base: str = Field(min_length=1, max_length=MAX_PATH_LENGTH, pattern=PRINTABLE,
                      description="Base checkpoint (file name in the checkpoints folder).")
    preset: Label | None = Field("sd15-character", description="Training preset; null: every option in `set`.")
    trigger: str | None = Field(None, description="Trigger word (default: the preset's).")
    name: str | None = Field(None, description="Registry name of the LoRA (default: the dataset's name).")
    set: dict[str, Any] = Field({}, description="Training options over the preset (see TrainingSpec); at most "
                                "max_params.")
    priority: int = Field(0, ge=PRIORITY_RANGE[0], le=PRIORITY_RANGE[1])
    timeout_s: FiniteSeconds = None


class LoraModelOut(Out):
    id: str
    sha256: str
    name: str
    version: int
    filename: str
    state: str
    base_model: str | None
    trigger_words: list[str]
    training: dict[str, Any] | None
    ss_metadata: dict[str, Any] | None
    artifact_id: str
    dataset_artifact_id: str | None
    job_id: str | None
    size: int
    distribution: dict[str, Any] | None
    created_at: datetime
    state_changed_at: datetime


class TrainerHello(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trainer: Label = Field(description="The trainer's name (unique per trainer process).")
    gpu_server: str | None = Field(None, max_length=MAX_SERVER_URL_LENGTH, pattern=PRINTABLE,
                                   description="The pool server it shares its GPU with (name, id or URL).")
    info: dict[str, Any] | None = None


class TrainerClaim(BaseModel):
    job: JobOut | None = None
    attempt_id: str | None = None
    wait: str | None = Field(None, description="Work is there, but the trainer must wait (its GPU is busy).")
    lease_s: float
    heartbeat_s: float


class TrainerHeartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trainer: Label
    events: list[dict[str, Any]] = Field([], description="At most max_heartbeat_events (a setting).")


class TrainerFinish(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trainer: Label
    state: JobState
    error: dict[str, Any] | None = None
    lora_artifact: Label | None = None


# -- API keys and the audit trail ---------------------------------------------------------------------
class KeyOut(Out):
    """An API key as admins see it: never its secret nor its hash."""

    id: str
    name: str
    roles: list[str]
    state: str = Field(description="active | revoking (usable until a rotation's grace period ends) | expired "
                                   "| revoked")
    created_at: datetime
    created_by: str | None = Field(description="Id of the admin key that made it (null: the CLI on the host).")
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="Last authenticated request (written at most once a minute).")
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="The plain key: shown this once, never again.")


class KeyRotated(KeyCreated):
    previous: KeyOut = Field(description="The old key, revoked now or at the end of the grace period.")


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Letters, digits and . _ @ + -; several keys may share a name.")
    roles: list[str] = Field(min_length=1, max_length=8, description="admin, run, publish, export, train.")
    expires: str | None = Field(None, max_length=64, description="30d, 12h, 90m, 2w, an ISO date or date-time; "
                                                                 "null or 'never': no expiry.")


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace: str | None = Field(None, max_length=64, description="The old key stays usable this long (e.g. 1h, at "
                                                               "most 7d); null: revoked at once.")
    expires: str | None = Field(None, max_length=64, description="The new key's expiry (as for create); null: the "
                                                                 "old key's expiry.")


class AuditEventOut(Out):
    id: int
    at: datetime
    api_key_id: str | None = Field(description="The key that acted (null: the CLI on the host).")
    key_name: str | None
    action: str = Field(description="e.g. job.submit, job.cancel, template.publish, server.add, key.rotate.")
    target: str = Field(description="The id or name acted on.")
    data: ShownJson


class BatchItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(description="Template name (at most max_name_length characters).")
    version: int | None = Field(None, ge=1, le=MAX_VERSION, description="Template version; default: the newest.")
    params: dict[str, Any] = Field({}, description="At most max_params; strings at most max_string_length.")
    key: Label | None = Field(None, description="The item's idempotency key: an item whose key this API key "
                              "already used is not submitted again (the batch's answer names its job).")


class FrameSelection(BaseModel):
    """Which frames of a video: exactly one of every_n, at, scenes or sharpest."""

    model_config = ConfigDict(extra="forbid")

    every_n: int | None = Field(None, description="Every Nth frame (0, N, 2N, ...); N >= 1.")
    at: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(
        None, description="Time codes in seconds (each >= 0, before the end): the nearest frame of each; at most "
        "max_frames_per_extract of them.")
    scenes: bool = Field(False, description="The first frame of each scene (frame 0 and every scene cut).")
    sharpest: bool = Field(False, description="The sharpest frame of each scene.")
    scene_threshold: float | None = Field(None, allow_inf_nan=False, description="scenes/sharpest: the mean colour "
                                          "difference (0..1] between two frames that starts a new scene "
                                          "(default 0.15).")


class FramesIn(FrameSelection):
    """A selection of frames to store as input artifacts (the same frame is stored once)."""

    tags: list[Annotated[str, Field(max_length=1024)]] = Field([], description="Tags for every frame (each also "
                                                               "gets frame-of:<video id>).")


class FramesOut(BaseModel):
    video: str = Field(description="The video's artifact id.")
    counts: dict[str, int] = Field(description="created (stored now) and existing (stored by an earlier "
                                   "extraction).")
    frames: list[ArtifactOut] = Field(description="The frame artifacts in time order (frame_index, time_s; "
                                      "input_artifacts is [the video]).")


class BatchFrames(FrameSelection):
    """A batch's inputs taken from a video: its selected frames (extracted and stored, as by POST
    /v1/artifacts/{id}/frames), one item each."""

    video: Label = Field(description="The video's artifact id.")


class BatchSubmit(BaseModel):
    """Either ``items`` (explicit), or ``template`` with ``inputs``/``input_param``, ``grid`` and ``params``."""

    model_config = ConfigDict(extra="forbid")

    label: Label | None = None
    items: list[BatchItemIn] | None = Field(None, description="Explicit items; at most max_batch_items.")
    template: str | None = Field(None, description="One template for every item (with inputs and a grid).")
    version: int | None = Field(None, ge=1, le=MAX_VERSION)
    pipeline: str | None = Field(None, description="A pipeline instead of a template: a run per input (bound to "
                                 "the pipeline input input_param, default its only image/video input), params "
                                 "its step overrides ({step: {param: value}}).")
    pipeline_version: int | None = Field(None, ge=1, le=MAX_VERSION)
    inputs: list[Label] = Field([], description="Artifact ids, one item each, bound to input_param.")
    frames: BatchFrames | None = Field(None, description="Instead of inputs: frames of a stored video, one item "
                                       "each (stored once; a dry run selects them and stores nothing).")
    input_param: str | None = Field(None, description="The image (or video) parameter the inputs are bound to.")
    grid: dict[str, list[Any]] = Field({}, description="{name: [values]}: every combination (cartesian product, "
                                       "the last name varying fastest) for every input.")
    params: dict[str, Any] = Field({}, description="Fixed values of every item.")
    priority: int = Field(0, ge=PRIORITY_RANGE[0], le=PRIORITY_RANGE[1])
    timeout_s: FiniteSeconds = None
    dry_run: bool = Field(False, description="Validate every item and write nothing: the answer (200) has the "
                          "number of jobs it would queue (total), skipped and the first items (preview).")


class BatchOut(Out):
    id: str
    label: str | None
    template: str | None
    items: int
    request: dict[str, Any] | None
    cancel_requested: bool
    created_at: datetime
    total: int = Field(0, description="Jobs of the batch (a retried item counts each of its jobs).")
    counts: dict[str, int] = Field({}, description="Jobs by state.")
    done: int = 0
    progress: float = Field(0.0, description="Share of the jobs in a final state.")
    eta_s: float | None = Field(None, description="Seconds left at the recent rate; null before the first finish.")
    finished: bool = False
    outputs: list[ArtifactOut] = []
    skipped: dict[int, str] = Field({}, description="On create: items not submitted again (item -> its job). "
                                    "Every item skipped: nothing is written, the answer (200) is the batch of "
                                    "those jobs, or id '' when they are not all of one batch.")
    dry_run: bool = Field(False, description="A dry run's answer: nothing was written (id is empty).")
    preview: list[dict[str, Any]] = Field([], description="A dry run: the first items it would queue "
                                          "(item, template, version, params).")


class BatchEventOut(BaseModel):
    event: EventOut
    batch_item: int | None
    counts: dict[str, int]
