from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel
from sqlmodel import Session

from orchestrator import service
from orchestrator.api.deps import AdminKey, AnyKey, CtxDep, ExportKey, RunKey, SessionDep
from orchestrator.api.schemas import ArtifactOut
from orchestrator.context import Context
from orchestrator.models import Artifact

router = APIRouter(prefix="/artifacts", tags=["artifacts"])


class DownloadUrl(BaseModel):
    url: str
    expires_at: datetime | None
    presigned: bool  # False: an API URL that needs an API key


def artifact_out(session: Session, art: Artifact) -> ArtifactOut:
    out = ArtifactOut.model_validate(art)
    out.tags = service.artifact_tags(session, art.id)
    return out


@router.post("", status_code=201, response_model=ArtifactOut)
def upload(file: UploadFile, ctx: CtxDep, session: SessionDep, _: RunKey,
           tags: Annotated[str | None, Form(description="Comma-separated tags.")] = None) -> ArtifactOut:
    """Upload an input (image, video, ...). The same bytes uploaded twice give the same artifact."""
    chunks = iter(lambda: file.file.read(1 << 20), b"")
    art = service.store_input(session, ctx.store, chunks, file.filename or "upload", (tags or "").split(","))
    return artifact_out(session, art)


@router.get("", response_model=list[ArtifactOut])
def list_artifacts(session: SessionDep, _: AnyKey, job: str | None = None, template: str | None = None,
                   tag: str | None = None, role: str | None = None,
                   limit: Annotated[int, Query(ge=1, le=500)] = 50,
                   offset: Annotated[int, Query(ge=0)] = 0) -> list[ArtifactOut]:
    return [artifact_out(session, a) for a in service.list_artifacts(session, job, template, tag, role, limit, offset)]


@router.get("/{artifact_id}", response_model=ArtifactOut)
def get(artifact_id: str, session: SessionDep, _: AnyKey) -> ArtifactOut:
    return artifact_out(session, service.get_artifact(session, artifact_id))


@router.get("/{artifact_id}/url", response_model=DownloadUrl)
def download_url(artifact_id: str, request: Request, ctx: CtxDep, session: SessionDep, _: ExportKey,
                 expires_s: Annotated[int, Query(ge=60, le=7 * 86400)] = 3600) -> DownloadUrl:
    """A URL the frontend can download from: presigned by the object store (no key needed) when it has
    such URLs, else this API's content URL."""
    art = service.get_artifact(session, artifact_id)
    url = ctx.store.presigned_get(art.key, expires_s, art.filename)
    if url:
        return DownloadUrl(url=url, expires_at=datetime.now(UTC) + timedelta(seconds=expires_s), presigned=True)
    return DownloadUrl(url=str(request.url_for("content", artifact_id=art.id)), expires_at=None, presigned=False)


def bytes_response(ctx: Context, art: Artifact, attachment: bool = True) -> Response:
    """The artifact's bytes: the file itself on local disk, else streamed from the store in 1 MiB reads."""
    path = ctx.store.local_path(art.key)
    if path is not None:
        return FileResponse(path, media_type=art.content_type, filename=art.filename)
    f = ctx.store.open(art.key)

    def chunks():  # noqa: ANN202
        try:
            yield from iter(lambda: f.read(1 << 20), b"")
        finally:
            f.close()

    headers = {"Content-Length": str(art.size)}
    if attachment:
        headers["Content-Disposition"] = f'attachment; filename="{art.filename}"'
    return StreamingResponse(chunks(), media_type=art.content_type, headers=headers)


@router.get("/{artifact_id}/content", response_class=StreamingResponse)
def content(artifact_id: str, ctx: CtxDep, session: SessionDep, _: ExportKey):  # noqa: ANN201
    return bytes_response(ctx, service.get_artifact(session, artifact_id))


@router.delete("/{artifact_id}", response_model=ArtifactOut)
def delete(artifact_id: str, ctx: CtxDep, session: SessionDep, _: AdminKey) -> ArtifactOut:
    """Delete an artifact; refused (409) while a job reads it."""
    out = artifact_out(session, service.get_artifact(session, artifact_id))
    service.delete_artifact(session, ctx.store, artifact_id)
    return out
