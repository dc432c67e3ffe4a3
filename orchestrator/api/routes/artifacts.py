from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel
from sqlmodel import Session

from orchestrator.api.deps import AdminKey, AnyKey, CtxDep, ExportKey, RunKey, SessionDep
from orchestrator.api.schemas import ArtifactOut, QueryText
from orchestrator.app import artifacts as artifact_app
from orchestrator.app import previews as preview_app
from orchestrator.bootstrap import Context
from orchestrator.core.limits import MAX_OFFSET
from orchestrator.core.previews import PREVIEW_TYPE, PreviewSize, preview_etag
from orchestrator.core.states import JobState
from orchestrator.db import artifacts as artifact_db
from orchestrator.db.tables import Artifact

router = APIRouter(prefix="/artifacts", tags=["artifacts"])


class DownloadUrl(BaseModel):
    url: str
    expires_at: datetime | None
    presigned: bool  # False: an API URL that needs an API key


def artifact_out(session: Session, art: Artifact) -> ArtifactOut:
    out = ArtifactOut.model_validate(art)
    out.tags = artifact_db.artifact_tags(session, art.id)
    return out


@router.post("", status_code=201, response_model=ArtifactOut)
def upload(file: UploadFile, ctx: CtxDep, session: SessionDep, _: RunKey,
           tags: Annotated[str | None, Form(description="Comma-separated tags.")] = None) -> ArtifactOut:
    """Upload an input (image, video, ...). The same bytes uploaded twice give the same artifact. Checked
    before it is stored: max_upload_bytes, max_image_pixels, max_video_seconds|frames|pixels (413), an image
    that does not decode (422), max_tags and max_name_length for the tags (422)."""
    art = artifact_app.store_input(session, ctx.store, file.file, file.filename or "upload", (tags or "").split(","),
                              settings=ctx.settings)
    ctx.input_stored(art)
    return artifact_out(session, art)


@router.get("", response_model=list[ArtifactOut],
            responses={404: {"description": "An artifact or dataset named by made_from or dataset does not exist"},
                       409: {"description": "An id prefix in made_from matches several artifacts"}})
def list_artifacts(session: SessionDep, _: AnyKey, job: QueryText = None, template: QueryText = None,
                   tag: QueryText = None, role: QueryText = None,
                   state: Annotated[JobState | None, Query(description="The state of the artifact's job.")] = None,
                   dataset: Annotated[QueryText, Query(description="A dataset's id or name (its newest "
                                                       "version): the pictures it was built from.")] = None,
                   created_after: Annotated[datetime | None, Query(description="Created at or after.")] = None,
                   created_before: Annotated[datetime | None, Query(description="Created before.")] = None,
                   content_type: Annotated[QueryText, Query(description="A content type prefix: image/, "
                                                            "video/, image/png.")] = None,
                   made_from: Annotated[QueryText, Query(description="An artifact's id (or a unique prefix): "
                                                         "the outputs of the jobs that took it as an input. "
                                                         "404 for an unknown artifact.")] = None,
                   limit: Annotated[int, Query(ge=1, le=500)] = 50,
                   offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> list[ArtifactOut]:
    """Newest first, one page (at most 500). Previews are left out unless ``role=preview``. ``made_from``:
    lineage down the chain (the outputs of jobs that read that artifact); an unknown id is 404, not an empty
    list, so a typo is not mistaken for "nothing made from it"."""
    source = artifact_db.get_dataset(session, dataset) if dataset else None
    parent = artifact_db.get_artifact(session, made_from) if made_from else None
    rows = artifact_db.list_artifacts(session, job, template, tag, role, limit, offset, state=state,
                                      dataset=source, created_after=created_after, created_before=created_before,
                                      content_type=content_type, made_from=parent)
    return [artifact_out(session, a) for a in rows]


PREVIEW_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The preview (WebP), cacheable for good: its ETag is the source's sha256 and the size.",
          "content": {PREVIEW_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
    304: {"description": "Not modified (If-None-Match matched the ETag)."},
}


@router.get("/{artifact_id}/preview", response_class=Response, responses=PREVIEW_RESPONSES)
def preview(artifact_id: str, request: Request, ctx: CtxDep, session: SessionDep, _: AnyKey,
            size: Annotated[PreviewSize, Query(description="The longer side, in pixels.")] = PreviewSize.small,
            ) -> Response:
    """A downscaled picture of an image artifact, or of a video's first frame, for any valid key (a preview
    is not a download: ``/content`` and ``/url`` stay export-only). Made once per (bytes, size) and kept in the
    store. 422 for an artifact without a picture (or one that does not decode), 413 over the input limits."""
    art = artifact_db.get_artifact(session, artifact_id)
    headers = {"ETag": preview_etag(art.sha256, size), "Cache-Control": "private, max-age=31536000, immutable"}
    if headers["ETag"] in {t.strip() for t in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers=headers)
    _row, data = preview_app.get_preview(session, ctx.store, art, int(size), ctx.settings)
    return Response(data, media_type=PREVIEW_TYPE, headers=headers)


@router.get("/{artifact_id}", response_model=ArtifactOut)
def get(artifact_id: str, session: SessionDep, _: AnyKey) -> ArtifactOut:
    return artifact_out(session, artifact_db.get_artifact(session, artifact_id))


@router.get("/{artifact_id}/url", response_model=DownloadUrl)
def download_url(artifact_id: str, request: Request, ctx: CtxDep, session: SessionDep, _: ExportKey,
                 expires_s: Annotated[int, Query(ge=60, le=7 * 86400)] = 3600) -> DownloadUrl:
    """A URL the frontend can download from: presigned by the object store (no key needed) when it has
    such URLs, else this API's content URL."""
    art = artifact_db.get_artifact(session, artifact_id)
    if not ctx.store.exists(art.key):
        raise artifact_db.object_lost(art)
    url = ctx.store.presigned_get(art.key, expires_s, art.filename)
    if url:
        return DownloadUrl(url=url, expires_at=datetime.now(UTC) + timedelta(seconds=expires_s), presigned=True)
    return DownloadUrl(url=str(request.url_for("content", artifact_id=art.id)), expires_at=None, presigned=False)


def bytes_response(ctx: Context, art: Artifact, attachment: bool = True) -> Response:
    """The artifact's bytes: the file itself on local disk, else streamed from the store in 1 MiB reads.
    An artifact whose object the store has lost is 404, naming it."""
    path = ctx.store.local_path(art.key)
    if path is not None:
        if not path.is_file():
            raise artifact_db.object_lost(art)
        return FileResponse(path, media_type=art.content_type, filename=art.filename)
    f = artifact_db.open_artifact(ctx.store, art)

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
    return bytes_response(ctx, artifact_db.get_artifact(session, artifact_id))


@router.delete("/{artifact_id}", response_model=ArtifactOut)
def delete(artifact_id: str, ctx: CtxDep, session: SessionDep, _: AdminKey) -> ArtifactOut:
    """Delete an artifact (its tags with it); refused (409, naming them) while a job, a dataset, a registered
    LoRA or another artifact's lineage refers to it."""
    out = artifact_out(session, artifact_db.get_artifact(session, artifact_id))
    artifact_app.delete_artifact(session, ctx.store, artifact_id)
    return out
