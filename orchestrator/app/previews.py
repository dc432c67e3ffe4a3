"""The preview use case: a picture's downscaled WebP, made once per (sha256, size) and kept in the store.

A preview is an artifact row of role ``preview`` whose unique origin is ``preview:<sha256>:<size>``
(``core/previews.py``), so the cache lookup is one indexed read and two requests racing to make the same
preview store one row (the loser reads the winner's). Nothing is held open while the picture is decoded."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from orchestrator.core.previews import PREVIEW_ROLE, preview_origin
from orchestrator.db import artifacts as artifact_db
from orchestrator.db.tables import Artifact
from orchestrator.runtime import ingest, media, preview
from orchestrator.settings import Settings
from storage import ObjectStore


def get_preview(session: Session, store: ObjectStore, art: Artifact, size: int,
                settings: Settings) -> tuple[Artifact, bytes]:
    """The preview of ``art`` at ``size`` (its row and its bytes): read from the store when it was made
    before, else rendered (``runtime/preview.py``), stored and recorded. InvalidInput (422) for an artifact
    without a picture, TooLarge (413) over the input limits, NotFound (404) when the source's bytes are lost."""
    origin = preview_origin(art.sha256, size)
    what = f"artifact {art.id} ({art.filename})"
    cached = artifact_db.preview_of(session, origin)
    session.commit()  # the reads end here: no connection is held while the picture is decoded
    if cached is not None:
        try:
            with store.open(cached.key) as f:
                return cached, f.read()
        except FileNotFoundError:
            pass  # its object was lost: made again below (the same bytes land on the same key)
    try:
        with preview.local_copy(store, art.key) as path:
            data = preview.render(path, art.content_type, size, media.MediaLimits.of(settings), what)
    except FileNotFoundError as exc:
        raise artifact_db.object_lost(art) from exc
    made = ingest.store_stream(store, [data], origin=origin, role=PREVIEW_ROLE,  # sniffed: its width, height
                               filename=f"{Path(art.filename).stem}.{size}.webp")
    if cached is not None:  # the row stays; it names the object stored again (a newer encoder: other bytes)
        cached.key, cached.sha256, cached.size = made.key, made.sha256, made.size
        session.commit()
        return cached, data
    session.add(made)
    try:
        session.commit()
    except IntegrityError:  # the same preview recorded by another request just now: theirs is the row
        session.rollback()
        other = artifact_db.preview_of(session, origin)
        session.commit()
        if other is None:
            raise
        return other, data
    return made, data
