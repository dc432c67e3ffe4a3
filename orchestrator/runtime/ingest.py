"""Bytes in: the one path from bytes to an Artifact row (store -> recognise -> row).

Two ways in, one row: bytes already spooled and inspected against the limits (an upload, a trainer's output:
``checked_upload`` then ``store_checked``), or a stream stored as it arrives and recognised afterwards from the
stored object's head (a ComfyUI output, a built dataset: ``store_stream``). Both store first and return the
row built from the stored object (``artifact``), never added: the caller owns the transaction and its dedup
rule (by origin), and nothing here touches the database.
"""

from __future__ import annotations

import io
import mimetypes
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, UnidentifiedImageError

from orchestrator.db.tables import Artifact
from orchestrator.runtime import media
from orchestrator.settings import Settings, get_settings
from storage import ObjectStore, Pending, StoredObject

SNIFF_HEAD = 1 << 20  # bytes read to recognise an image by its header


VERIFY_MAX = 64 << 20  # an image up to this size is verified whole; a bigger one on its header alone


def sniff(f: BinaryIO, filename: str) -> tuple[str, int | None, int | None]:
    """(content type, width, height): images by decoding them, anything else by its name.

    Reads a bounded head first: an object store's stream cannot seek, and PIL would read all of a
    non-seekable file into memory (a 2 GB video) just to find it is not an image."""
    try:
        head = f.read(SNIFF_HEAD)
        with Image.open(io.BytesIO(head)) as im:
            fmt, (w, h) = im.format or "octet-stream", im.size
        data = head + (f.read(VERIFY_MAX - len(head)) if len(head) == SNIFF_HEAD else b"")
        if len(data) < VERIFY_MAX:
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
        return f"image/{fmt.lower()}", w, h
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        pass
    guessed = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if guessed.startswith("image/"):  # a name is no proof: only bytes that decode are an image
        return "application/octet-stream", None, None
    return guessed, None, None


@contextmanager
def checked_upload(data: bytes | Iterable[bytes] | BinaryIO | Path, filename: str, settings: Settings | None = None,
                   ) -> Iterator[tuple[media.Spooled, media.MediaInfo]]:
    """An upload spooled to a local file while it is hashed, then inspected against the limits (``media``):
    refused (413 over a limit, 422 for an image that does not decode) before anything is stored. Every path
    that stores uploaded bytes (inputs, a trainer's outputs) goes through here, then ``store_checked``.
    Spooled under ``<home>/spool`` (without ``settings``: the system's temporary folder, default limits)."""
    caps = media.MediaLimits.of(settings or get_settings())
    with media.spooled(data, caps, settings.home / "spool" if settings else None) as spool:
        yield spool, media.inspect(spool.path, filename, caps)


def artifact(obj: StoredObject, info: media.MediaInfo, *, origin: str | Callable[[StoredObject], str], role: str,
             filename: str, **fields: Any) -> Artifact:
    """The row that names a stored object: what the store answered (key, sha256, size) and what was recognised
    in the bytes (content type, width, height; a video's frame count, frame rate and duration), with what the
    caller sets: ``origin`` (or how it follows from the object, for an origin named by its hash), ``role``,
    ``filename`` and the lineage ``fields`` (job, attempt, output name, template, params, input artifacts,
    server...; they win over what was recognised). Built, not added to a session."""
    video = {"frames": info.frames, "fps": info.fps, "duration_s": info.duration_s}  # a video's (None otherwise)
    return Artifact(origin=origin(obj) if callable(origin) else origin, key=obj.key, sha256=obj.sha256,
                    size=obj.size, content_type=info.content_type, filename=filename, role=role, width=info.width,
                    height=info.height, **{**video, **fields})


def store_checked(store: ObjectStore, spool: media.Spooled, info: media.MediaInfo, *,
                  origin: str | Callable[[StoredObject], str], role: str, filename: str, **fields: Any) -> Artifact:
    """Bytes already spooled and inspected (``checked_upload``): stored from the spool under the hash it was
    spooled with, then the row (``artifact``). No database connection is used: the bytes may be gigabytes."""
    return artifact(store.put_file(spool.path, spool.sha256, move=spool.owned), info, origin=origin, role=role,
                    filename=filename,
                    **fields)


def store_stream(store: ObjectStore, chunks: Iterable[bytes], *, origin: str | Callable[[StoredObject], str],
                 role: str, filename: str, content_type: str | None = None, **fields: Any) -> Artifact:
    """Bytes stored as they arrive (never whole in memory), then recognised by their stored head (``sniff``,
    with ``filename`` for what is not an image) unless the caller names the ``content_type``; then the row
    (``artifact``). The object is stored before the row that names it exists: the same bytes stored again
    (a retried ingest) land on the same content-addressed object."""
    art, pending = stage_stream(store, chunks, origin=origin, role=role, filename=filename, content_type=content_type,
                                **fields)
    pending.commit()
    return art


def stage_stream(store: ObjectStore, chunks: Iterable[bytes], *, origin: str | Callable[[StoredObject], str],
                 role: str, filename: str, content_type: str | None = None,
                 **fields: Any) -> tuple[Artifact, Pending]:
    """``store_stream`` with the object's durability left to the caller: the row, and the ``Pending`` whose
    ``commit`` must return before any transaction naming the row commits (it may run while the rows are written)."""
    pending = store.stage_stream(chunks)
    try:
        if content_type is None:
            with pending.open() as f:
                info = media.MediaInfo(*sniff(f, filename))
        else:
            info = media.MediaInfo(content_type)
    except BaseException:
        pending.abort()
        raise
    return artifact(pending.obj, info, origin=origin, role=role, filename=filename, **fields), pending
