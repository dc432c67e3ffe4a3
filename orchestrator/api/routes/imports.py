"""Bulk import of inputs (``app/imports.py``): a folder inside ``import_roots`` or URLs on allowlisted origins."""

from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.api.deps import CtxDep, RunKey, SessionDep
from orchestrator.app import imports as import_app
from orchestrator.db import artifacts as artifact_db

router = APIRouter(prefix="/imports", tags=["artifacts"])


class ImportIn(BaseModel):
    """Either ``folder`` (a path on the service's machine, inside import_roots) or ``urls``."""

    model_config = ConfigDict(extra="forbid")

    folder: Annotated[str, Field(max_length=4096)] | None = Field(
        None, description="An absolute path inside import_roots (MEDIALAB_IMPORT_ROOTS): a folder or one file.")
    recursive: bool = Field(True, description="Descend into subfolders (symlinked folders are not followed).")
    urls: list[Annotated[str, Field(max_length=8192)]] | None = Field(
        None, description="URLs on origins of url_allowlist (MEDIALAB_URL_ALLOWLIST); at most max_batch_items.")
    tags: list[Annotated[str, Field(max_length=1024)]] = Field([], description="Tags for every imported file.")

    @model_validator(mode="after")
    def one_source(self) -> "ImportIn":
        if (self.folder is None) == (self.urls is None):
            raise ValueError("give either folder or urls")
        return self


class ImportItemOut(BaseModel):
    source: str
    status: str = Field(description="stored, already stored (the same bytes were stored before), skipped (not "
                        "an image or video) or failed (error says why).")
    artifact_id: str | None = None
    error: str | None = None
    tags: list[str] = []


class ImportOut(BaseModel):
    counts: dict[str, int]
    items: list[ImportItemOut]


@router.post("", response_model=ImportOut,
             responses={403: {"description": "The folder is outside import_roots (symlinks followed), or a URL's "
                              "origin is not allowed; nothing is imported"},
                        422: {"description": "A bad request (no such folder, a bad tag, over max_batch_items)"}})
def import_inputs(body: ImportIn, ctx: CtxDep, session: SessionDep, _: RunKey) -> ImportOut:
    """Import inputs in bulk, each stored as an upload is (the same bytes once), tagged ``source:<path or
    URL>`` and, for a folder, with its sidecar JSON's scalar keys (``x.png.json`` or ``x.json``) as
    ``key:value`` tags. One file that fails does not stop the others."""
    if body.folder is not None:
        result = import_app.import_folder(session, ctx.store, body.folder, ctx.settings, body.recursive, body.tags)
    else:
        result = import_app.import_urls(session, ctx.store, body.urls or [], ctx.settings, body.tags)
    for item in result.items:
        if item.status == "stored" and item.artifact_id:
            ctx.input_stored(artifact_db.get_artifact(session, item.artifact_id))
    return ImportOut(counts=result.counts, items=[ImportItemOut.model_validate(i, from_attributes=True)
                                                  for i in result.items])
