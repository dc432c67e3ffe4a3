"""Request and response bodies of the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.jobs import JobState


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ArtifactOut(Out):
    id: str
    sha256: str
    size: int
    content_type: str
    filename: str
    role: str
    width: int | None
    height: int | None
    job_id: str | None
    attempt_id: str | None
    output_name: str | None
    template: str | None
    template_version: int | None
    template_hash: str | None
    params: dict[str, Any] | None
    input_artifacts: list[str] | None
    server: str | None
    comfy_version: str | None
    created_at: datetime
    tags: list[str] = []


class AttemptOut(Out):
    id: str = Field(description="Also the prompt_id on the ComfyUI server.")
    number: int
    server: str
    state: JobState
    comfy_version: str | None
    error: dict[str, Any] | None
    started_at: datetime
    finished_at: datetime | None


class JobOut(Out):
    id: str
    template: str
    version: int
    params: dict[str, Any]
    state: JobState
    priority: int
    progress: float
    cancel_requested: bool
    error: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    outputs: list[ArtifactOut] = []
    attempts: list[AttemptOut] = []


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str
    version: int | None = Field(None, description="Template version; default: the newest.")
    params: dict[str, Any] = {}
    priority: int = Field(0, ge=-100, le=100)
    timeout_s: float | None = Field(None, gt=0)


class EventOut(Out):
    id: int
    job_id: str
    at: datetime
    kind: str
    state: JobState | None
    reason: str
    data: dict[str, Any] | None


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

    graph: dict[str, Any] = Field(description="API-format graph (ComfyUI: Workflow > Export (API)).")
    manifest: dict[str, Any] | None = Field(None, description="Default: read from the parameter and save nodes.")
    title: str | None = None
    kind: str = "image"
    description: str = ""


class TemplateOut(BaseModel):
    name: str
    latest: TemplateVersionOut
    versions: list[int]
