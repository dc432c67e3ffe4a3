"""Bytes in: an upload spooled, inspected and sniffed before it is stored."""

from __future__ import annotations

import io
import mimetypes
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from PIL import Image, UnidentifiedImageError

from orchestrator.runtime import media
from orchestrator.settings import Settings, get_settings

if TYPE_CHECKING:
    pass


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
    that stores uploaded bytes (inputs, a trainer's outputs) goes through here, then ``store.put_file``.
    Spooled under ``<home>/spool`` (without ``settings``: the system's temporary folder, default limits)."""
    caps = media.MediaLimits.of(settings or get_settings())
    with media.spooled(data, caps, settings.home / "spool" if settings else None) as spool:
        yield spool, media.inspect(spool.path, filename, caps)
