from fastapi import APIRouter, UploadFile
from fastapi.responses import FileResponse, StreamingResponse

from orchestrator import service
from orchestrator.api.deps import AnyKey, CtxDep, ExportKey, RunKey, SessionDep
from orchestrator.api.schemas import ArtifactOut

router = APIRouter(prefix="/artifacts", tags=["artifacts"])


@router.post("", status_code=201, response_model=ArtifactOut)
def upload(file: UploadFile, ctx: CtxDep, session: SessionDep, _: RunKey) -> ArtifactOut:
    """Upload an input (image, video, ...). The same bytes uploaded twice give the same artifact."""
    chunks = iter(lambda: file.file.read(1 << 20), b"")
    return service.store_input(session, ctx.store, chunks, file.filename or "upload")


@router.get("/{artifact_id}", response_model=ArtifactOut)
def get(artifact_id: str, session: SessionDep, _: AnyKey) -> ArtifactOut:
    return service.get_artifact(session, artifact_id)


@router.get("/{artifact_id}/content", response_class=StreamingResponse)
def content(artifact_id: str, ctx: CtxDep, session: SessionDep, _: ExportKey):  # noqa: ANN201
    art = service.get_artifact(session, artifact_id)
    path = ctx.store.local_path(art.key)
    if path is not None:
        return FileResponse(path, media_type=art.content_type, filename=art.filename)
    f = ctx.store.open(art.key)
    return StreamingResponse(iter(lambda: f.read(1 << 20), b""), media_type=art.content_type,
                             headers={"Content-Disposition": f'attachment; filename="{art.filename}"'})
