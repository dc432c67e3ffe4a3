"""Artifact rows and their bytes: reads, and tags added (never commits)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, BinaryIO

from sqlmodel import Session, col, select

from orchestrator.core.errors import NotFound
from orchestrator.core.previews import PREVIEW_ROLE
from orchestrator.db.ids import get_by_id
from orchestrator.db.tables import (
    Artifact,
    ArtifactTag,
    Job,
    JobInput,
)
from storage import ObjectStore

if TYPE_CHECKING:
    pass


def artifact_tags(session: Session, artifact_id: str) -> list[str]:
    return sorted(session.exec(select(ArtifactTag.tag).where(ArtifactTag.artifact_id == artifact_id)))


def add_tags(session: Session, artifact_id: str, tags: Iterable[str]) -> None:
    """Tag the artifact with those of ``tags`` it lacks (stripped; blank ones skipped); the caller commits."""
    have = set(artifact_tags(session, artifact_id))
    for tag in {t.strip() for t in tags if t.strip()} - have:
        session.add(ArtifactTag(artifact_id=artifact_id, tag=tag))


def list_artifacts(session: Session, job: str | None = None, template: str | None = None, tag: str | None = None,
                   role: str | None = None, limit: int = 50, offset: int = 0, *, state: str | None = None,
                   dataset: Artifact | None = None, created_after: datetime | None = None,
                   created_before: datetime | None = None, content_type: str | None = None,
                   made_from: Artifact | None = None) -> list[Artifact]:
    """Newest first, one page. ``state``: of the artifact's job; ``dataset``: the pictures a dataset artifact
    was built from; ``content_type``: a prefix (``image/``, ``video``); ``created_after``/``created_before``:
    bounds (inclusive, exclusive); ``made_from``: the outputs of the jobs that read that artifact (lineage
    down the chain). Previews (role ``preview``) are listed only when ``role`` asks for them."""
    q = select(Artifact).order_by(col(Artifact.created_at).desc(), col(Artifact.id)).limit(limit).offset(offset)
    if job:
        q = q.where(Artifact.job_id == job)
    if template:
        q = q.where(Artifact.template == template)
    q = q.where(Artifact.role == role) if role else q.where(Artifact.role != PREVIEW_ROLE)
    if tag:
        q = q.where(col(Artifact.id).in_(select(ArtifactTag.artifact_id).where(ArtifactTag.tag == tag)))
    if state:
        q = q.where(col(Artifact.job_id).in_(select(Job.id).where(Job.state == state)))
    if dataset is not None:
        q = q.where(col(Artifact.id).in_(list(dataset.input_artifacts or [])))
    if made_from is not None:
        q = q.where(Artifact.role == "output", col(Artifact.job_id).in_(
            select(JobInput.job_id).where(JobInput.artifact_id == made_from.id)))
    if created_after is not None:
        q = q.where(col(Artifact.created_at) >= created_after)
    if created_before is not None:
        q = q.where(col(Artifact.created_at) < created_before)
    if content_type:
        q = q.where(col(Artifact.content_type).startswith(content_type, autoescape=True))
    return list(session.exec(q))


def get_dataset(session: Session, ref: str) -> Artifact:
    """A dataset artifact by its id (or a unique prefix), or by its name (the newest version)."""
    named = session.exec(select(Artifact).where(
        Artifact.role == "dataset",
        col(Artifact.id).in_(select(ArtifactTag.artifact_id).where(ArtifactTag.tag == f"dataset:{ref}")))
        .order_by(col(Artifact.created_at).desc()).limit(1)).first()
    if named is not None:
        return named
    art = get_artifact(session, ref)
    if art.role != "dataset":
        raise NotFound(f"no dataset named {ref!r}, and artifact {art.id} is not a dataset (role {art.role})")
    return art


def preview_of(session: Session, origin: str) -> Artifact | None:
    """The stored preview of that origin (``core.previews.preview_origin``), if one was made."""
    return session.exec(select(Artifact).where(Artifact.origin == origin)).first()


def get_artifact(session: Session, artifact_id: str) -> Artifact:
    """An artifact by its id or a unique prefix of it (``db/ids.py``): NotFound (404), or Conflict (409)."""
    return get_by_id(session, Artifact, artifact_id, "artifact")


def object_lost(art: Artifact) -> NotFound:
    """The error of an artifact whose object the store no longer has (deleted or lost behind our back)."""
    return NotFound(f"artifact {art.id} ({art.filename}): its bytes are missing from the object store "
                    f"(key {art.key})", artifact=art.id)


def open_artifact(store: ObjectStore, art: Artifact) -> BinaryIO:
    """The artifact's bytes for reading; NotFound (404, naming it) when the store has lost its object."""
    try:
        return store.open(art.key)
    except FileNotFoundError as exc:
        raise object_lost(art) from exc


def job_outputs(session: Session, job_id: str) -> list[Artifact]:
    return list(session.exec(select(Artifact).where(Artifact.job_id == job_id, Artifact.role == "output")
                             .order_by(Artifact.output_name, Artifact.filename)))
