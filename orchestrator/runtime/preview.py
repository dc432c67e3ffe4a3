"""Previews: a downscaled WebP of an image, or of a video's first frame, decoded within the input limits.

The source is an artifact already stored (so it passed the upload checks once), but the limits are checked
again here before a pixel is decoded, as ``media.py`` checks an upload: an image's header size against
``max_image_pixels`` (Pillow's own bomb guard stays), a video's frame size, duration and frame count as its
container states them (``probe_video``), and only its first frame is decoded. JPEG sources are decoded
already reduced (``draft``), so a large photo costs a fraction of its full decode.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageOps

from orchestrator.core.errors import InvalidInput, TooLarge
from orchestrator.core.previews import is_picture
from orchestrator.runtime import media
from storage import ObjectStore

WEBP_QUALITY = 80


@contextmanager
def local_copy(store: ObjectStore, key: str) -> Iterator[Path]:
    """The object as a local file: the store's own path on local disk, else a temporary copy (removed after)."""
    path = store.local_path(key)
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(key)
        yield path
        return
    with tempfile.NamedTemporaryFile(prefix="medialab-preview-") as tmp, store.open(key) as f:
        shutil.copyfileobj(f, tmp, 1 << 20)
        tmp.flush()
        yield Path(tmp.name)


def render(path: Path, content_type: str, size: int, limits: media.MediaLimits, what: str = "the artifact") -> bytes:
    """The WebP preview (at most ``size`` px on its longer side, never enlarged) of the picture at ``path``.
    InvalidInput (422) when it has no picture or it does not decode; TooLarge (413) over a limit."""
    if not is_picture(content_type):
        raise InvalidInput(f"{what} is {content_type}: it has no picture to preview (only images and videos do)",
                           reason="no picture")
    picture = first_frame(path, limits, what) if content_type.startswith("video/") else image(path, size, limits, what)
    try:
        picture = ImageOps.exif_transpose(picture)
        picture.thumbnail((size, size), Image.Resampling.LANCZOS)
        if picture.mode not in ("RGB", "RGBA"):
            picture = picture.convert("RGBA" if "A" in picture.getbands() or "transparency" in picture.info
                                      else "RGB")
        out = io.BytesIO()
        picture.save(out, format="WEBP", quality=WEBP_QUALITY, method=4)
        return out.getvalue()
    finally:
        picture.close()


def image(path: Path, size: int, limits: media.MediaLimits, what: str) -> Image.Image:
    """An image's first frame, decoded (JPEG: at a reduced scale near ``size``) after its header size is checked."""
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise media.too_large(f"{what} is a decompression bomb ({exc})", limits.image_limit,
                              limits.image_pixels) from exc
    except Exception as exc:  # noqa: BLE001  (not an image after all)
        raise InvalidInput(f"{what} does not decode as an image: {exc}", reason="corrupt image") from exc
    try:
        w, h = im.size
        media.check_image(w, h, limits, what)  # the first frame only: the only one decoded
        im.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale, still >= size
        im.load()
        return im
    except TooLarge:
        im.close()
        raise
    except Exception as exc:  # noqa: BLE001
        im.close()
        raise InvalidInput(f"{what} claims to be a {im.format or 'image'} but does not decode: {exc}",
                           reason="corrupt image") from exc


def first_frame(path: Path, limits: media.MediaLimits, what: str) -> Image.Image:
    """A video's first frame, after its container's statements are checked against the video limits."""
    import av  # PyAV: imported on use (it loads ffmpeg's libraries)

    if media.probe_video(path, limits, what) is None:
        raise InvalidInput(f"{what} is not a video ffmpeg can read (no video stream)", reason="no picture")
    try:
        with av.open(str(path), mode="r") as container:
            for frame in container.decode(video=0):
                return frame.to_image()
    except Exception as exc:  # noqa: BLE001
        raise InvalidInput(f"{what}: its first video frame does not decode: {exc}", reason="corrupt video") from exc
    raise InvalidInput(f"{what} has a video stream without a single frame", reason="no picture")

