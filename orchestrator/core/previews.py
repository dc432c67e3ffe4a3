"""Previews: the sizes a preview comes in and the rule naming one (pure).

A preview is a downscaled picture of an artifact's bytes, so it is named by their sha256 and the size: the
same bytes uploaded twice, or made by two jobs, share one preview, generated once."""

from __future__ import annotations

from enum import IntEnum

from orchestrator.core.errors import InvalidInput


class PreviewSize(IntEnum):
    """The longer side of a preview, in pixels: a gallery thumbnail or a large view."""

    small = 256
    large = 1024


PREVIEW_SIZES: tuple[int, ...] = tuple(int(s) for s in PreviewSize)
PREVIEW_ROLE = "preview"  # the role of a preview's artifact row
PREVIEW_TYPE = "image/webp"


def is_picture(content_type: str) -> bool:
    """An artifact of this content type has a picture to preview: an image, or a video's first frame."""
    return content_type.startswith(("image/", "video/"))


def preview_origin(sha256: str, size: int) -> str:
    """The unique origin of the preview of these bytes at this size (the cache key)."""
    if size not in PREVIEW_SIZES:
        raise InvalidInput(f"preview size {size} is not one of {PREVIEW_SIZES}")
    return f"preview:{sha256}:{int(size)}"


def preview_etag(sha256: str, size: int) -> str:
    """The preview's ETag (quoted, strong): its bytes change only with the source bytes or the size."""
    return f'"{sha256}-{int(size)}"'
