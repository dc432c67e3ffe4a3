"""Pipelines: list, show, publish (``core.pipelines`` is the format; ``app.pipelines`` the use cases)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api.deps import AnyKey, CtxDep, PublishKey, SessionDep
from orchestrator.app import pipelines as pipeline_app
from orchestrator.core.errors import NotFound
from orchestrator.db import pipelines as pipeline_db
from orchestrator.db.tables import PipelineVersionRow

router = APIRouter(prefix="/pipelines", tags=["pipelines"])


class PipelineVersionOut(BaseModel):
    name: str
    version: int
    description: str
    content_hash: str
    created_at: datetime
    source: str = "library"
    deprecated: bool = False
    inputs: list[dict[str, Any]] = Field(description="name, type (a template parameter type), description.")
    outputs: list[dict[str, Any]] = Field(description="name, step, output.")
    order: list[str] = Field(description="The step ids in the order a run starts them (upstream first).")
    steps: list[dict[str, Any]] | None = Field(None, description="id, template, version, params (shown in full).")
    templates: dict[str, Any] | None = Field(None, description="Step id -> the template version it runs "
                                                               "(template, version, content_hash).")


class PipelineOut(BaseModel):
    name: str
    latest: PipelineVersionOut
    versions: list[int]


class PipelinePublish(BaseModel):
    """A ``pipeline.json``; its parts are checked by ``core.pipelines`` (each problem named in ``errors``)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="Default (and the only value allowed): the name in the URL.")
    version: int | None = Field(None, description="Default: the next free version. The same content under a "
                                                  "recorded version answers that version (200); other content 409.")
    description: str = ""
    inputs: list[Any] = []
    steps: list[Any] = []
    outputs: list[Any] = []


def version_out(row: PipelineVersionRow, full: bool = False) -> PipelineVersionOut:
    d = row.definition
    out = PipelineVersionOut(name=row.name, version=row.version, description=row.description,
                             content_hash=row.content_hash, created_at=row.created_at, source=row.source,
                             deprecated=row.deprecated, inputs=d.get("inputs", []), outputs=d.get("outputs", []),
                             order=list(row.step_order))
    if full:
        out.steps, out.templates = d.get("steps", []), row.templates
    return out


@router.get("", response_model=list[PipelineOut])
def list_pipelines(session: SessionDep, _: AnyKey) -> list[PipelineOut]:
    by_name: dict[str, list[PipelineVersionRow]] = {}
    for row in pipeline_db.pipeline_rows(session):
        by_name.setdefault(row.name, []).append(row)
    return [PipelineOut(name=name, latest=version_out(next((r for r in reversed(rows) if not r.deprecated), rows[-1])),
                        versions=[r.version for r in rows])
            for name, rows in by_name.items()]


@router.get("/{name}", response_model=PipelineVersionOut)
def get_latest(name: str, session: SessionDep, _: AnyKey) -> PipelineVersionOut:
    """The newest version, with its steps."""
    return version_out(pipeline_db.get_pipeline(session, name), full=True)


@router.get("/{name}/versions/{version}", response_model=PipelineVersionOut)
def get_version(name: str, version: int, session: SessionDep, _: AnyKey) -> PipelineVersionOut:
    if version < 1:
        raise NotFound(f"pipeline '{name}' has no version {version}")
    return version_out(pipeline_db.get_pipeline(session, name, version), full=True)


@router.post("/{name}/versions", status_code=201, response_model=PipelineVersionOut)
def publish(name: str, body: PipelinePublish, response: Response, ctx: CtxDep, session: SessionDep,
            key: PublishKey) -> PipelineVersionOut:
    """Publish a version, checked against the recorded templates: 201 created; 200 when that version has this
    very content already; 409 when it has other content; 422 naming every problem (``errors``: a cycle, a
    type mismatch, a dangling reference, an unbound required parameter, ...)."""
    row, created = pipeline_app.publish_pipeline(session, name, body.model_dump(exclude_unset=True),
                                                 api_key_id=key.id, settings=ctx.settings)
    if not created:
        response.status_code = 200
    return version_out(row, full=True)
