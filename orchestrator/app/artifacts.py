"""Artifact use cases: store an uploaded input (with its tags), delete."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from sqlalchemy import String, cast, func, or_
from sqlalchemy import delete as sql_delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from orchestrator.core import limits
from orchestrator.core.errors import Conflict
from orchestrator.db import artifacts as artifact_db
from orchestrator.db import audit
from orchestrator.db.artifacts import get_artifact
from orchestrator.db.tables import (
    Artifact,
    ArtifactTag,
    JobInput,
    LoraModel,
)
from orchestrator.runtime import ingest, media
from orchestrator.settings import Settings, get_settings
from storage import ObjectStore

if TYPE_CHECKING:
    pass


def store_input(session: Session, store: ObjectStore, data: bytes | Iterable[bytes] | BinaryIO | Path,
                filename: str, tags: Iterable[str] = (), settings: Settings | None = None) -> Artifact:
    """Store an uploaded input; the same bytes uploaded twice give the same artifact (tags are added).

    Tags and file name are checked first, the bytes are inspected before they are stored (``checked_upload``):
    a refused upload leaves no object and no row. ``settings``: the limits (default: ``get_settings()``).
    No transaction is open while the bytes are spooled, inspected and stored (a multi-GB upload must not hold
    a pooled database connection): this use case commits what the session holds first, and its one read
    before the bytes are stored is a transaction of its own; the rows are written afterwards."""
    tags = limits.check_tags(tags, settings or get_settings())
    filename = media.check_filename(filename) or "upload"
    session.commit()  # the caller's reads end here: their connection goes back to the pool
    with ingest.checked_upload(data, filename, settings) as (spool, info):
        origin = f"input:{spool.sha256}"
        existing = session.exec(select(Artifact).where(Artifact.origin == origin)).first()
        session.commit()  # a short read: the same bytes are not stored twice, and no connection is held below
        if existing:
            artifact_db.add_tags(session, existing.id, tags)
            session.commit()
            return existing
        art = ingest.store_checked(store, spool, info, origin=origin, role="input", filename=filename)
    session.add(art)
    try:
        session.flush()
    except IntegrityError:  # the same bytes uploaded at the same moment: theirs is the artifact
        session.rollback()
        art = session.exec(select(Artifact).where(Artifact.origin == origin)).one()
    artifact_db.add_tags(session, art.id, tags)
    session.commit()
    return art


def delete_artifact(session: Session, store: ObjectStore, artifact_id: str) -> Artifact:
    """Delete an artifact (and its bytes when no other artifact has the same content). An artifact that a
    job reads is kept: its lineage would break."""
    art = get_artifact(session, artifact_id)
    artifact_id = art.id  # the full id (a prefix was given, maybe)
    readers = list(session.exec(select(JobInput.job_id).where(JobInput.artifact_id == artifact_id).limit(6)))
    if readers:
        raise Conflict(f"artifact {artifact_id} is an input of job(s) {', '.join(readers[:5])}"
                       f"{' and more' if len(readers) > 5 else ''}; it is kept for their lineage")
    models = list(session.exec(select(LoraModel.filename).where(or_(
        LoraModel.artifact_id == art.id, LoraModel.dataset_artifact_id == art.id)).limit(6)))
    if models:
        raise Conflict(f"artifact {artifact_id} is the file or the dataset of registered LoRA(s) "
                       f"{', '.join(models[:5])}; withdraw them instead", models=models[:5])
    derived = list(session.exec(select(Artifact.id, Artifact.role).where(
        cast(col(Artifact.input_artifacts), String).like(f'%"{art.id}"%')).limit(6)))
    if derived:
        raise Conflict(f"artifact {artifact_id} is in the lineage of {len(derived)} artifact(s) "
                       f"({', '.join(f'{r} {i}' for i, r in derived[:5])}); it is kept for them",
                       artifacts=[i for i, _r in derived[:5]])
    session.execute(sql_delete(ArtifactTag).where(col(ArtifactTag.artifact_id) == art.id))  # tags first: they
    session.execute(sql_delete(Artifact).where(col(Artifact.id) == art.id))  # refer to the artifact
    shared = session.exec(select(func.count()).where(Artifact.sha256 == art.sha256, Artifact.id != art.id)).one()
    audit.record(session, "artifact.delete", art.id, {"sha256": art.sha256, "filename": art.filename,
                                                     "role": art.role})
    try:
        session.commit()
    except IntegrityError as exc:  # something came to refer to it meanwhile
        session.rollback()
        raise Conflict(f"artifact {artifact_id} is referred to by a row written just now; it is kept") from exc
    if not shared:
        store.delete(art.key)
    return art
