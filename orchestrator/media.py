"""What an uploaded file is, checked against the input limits before any of it is stored.

An upload is spooled to a local file while it is hashed (``spooled``), inspected there (``inspect``), and
only then put in the object store, so a refused file leaves nothing behind. Images are recognised by their
bytes with Pillow: the header gives the size, which is checked before a pixel is decoded (a PNG of a few
hundred bytes may claim 30000x30000 pixels); a file that claims to be an image but does not decode is
refused. Videos are recognised by their container with PyAV (ffmpeg's demuxer: no frame is decoded); their
resolution, duration and frame count are checked as the container states them. Anything else is typed by
its file name, as before.
"""

from __future__ import annotations

import hashlib
import math
import mimetypes
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from orchestrator.errors import InvalidInput, TooLarge
from orchestrator.settings import Settings
from storage.base import sha256_file

DECODE_MAX_PIXELS = 40_000_000  # images up to this size are decoded whole (truncated data is found)
MAX_FILENAME_LENGTH = 255
# Formats ffmpeg reads that are not video containers: single images and raw elementary streams.
NOT_CONTAINERS = {"image2", "mjpeg", "h264", "hevc", "mpeg1video", "mpegvideo", "m4v", "rawvideo", "gif",
                  "apng", "webp", "tiff", "bmp", "ico", "jpeg", "png", "svg", "dirac", "vc1", "av1", "obu", "ivf"}
CONTAINER_TYPES = {"mov": "video/mp4", "mp4": "video/mp4", "matroska": "video/x-matroska", "webm": "video/webm",
                   "avi": "video/x-msvideo", "flv": "video/x-flv", "mpegts": "video/mp2t", "mpeg": "video/mpeg",
                   "ogg": "video/ogg", "asf": "video/x-ms-asf"}


@dataclass(frozen=True)
class MediaLimits:
    image_pixels: int
    video_seconds: float
    video_frames: int
    video_pixels: int
    upload_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> MediaLimits:
        return cls(settings.max_image_pixels, settings.max_video_seconds, settings.max_video_frames,
                   settings.max_video_pixels, settings.max_upload_bytes)


@dataclass(frozen=True)
class MediaInfo:
    content_type: str
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    frames: int | None = None


@dataclass(frozen=True)
class Spooled:
    path: Path
    sha256: str
    size: int


# -- the rules (pure) -----------------------------------------------------------------------------------
def too_large(message: str, limit: str, value: int | float) -> TooLarge:
    return TooLarge(f"{message}, over the limit {limit}={value:g}" if isinstance(value, float)
                    else f"{message}, over the limit {limit}={value}", limit=limit, value=value)


def check_image(width: int, height: int, limits: MediaLimits, what: str = "the image") -> None:
    if width * height > limits.image_pixels:
        raise too_large(f"{what} is {width}x{height} = {width * height} pixels", "max_image_pixels",
                        limits.image_pixels)


def check_video(width: int, height: int, duration_s: float | None, frames: int | None, limits: MediaLimits,
                what: str = "the video") -> None:
    """A video's frame size, duration and frame count (None: the container does not say)."""
    if width * height > limits.video_pixels:
        raise too_large(f"{what} has {width}x{height} = {width * height} pixels a frame", "max_video_pixels",
                        limits.video_pixels)
    if duration_s is not None and duration_s > limits.video_seconds:
        raise too_large(f"{what} is {duration_s:g} s long", "max_video_seconds", limits.video_seconds)
    if frames is not None and frames > limits.video_frames:
        raise too_large(f"{what} has {frames} frames", "max_video_frames", limits.video_frames)


def check_filename(filename: str) -> str:
    """The stored name of an upload: its last path part, printable, at most 255 characters."""
    name = Path(filename.replace("\\", "/")).name
    if len(name) > MAX_FILENAME_LENGTH:
        raise InvalidInput(f"the file name is {len(name)} characters long, over the limit "
                           f"max_filename_length={MAX_FILENAME_LENGTH}", limit="max_filename_length",
                           value=MAX_FILENAME_LENGTH)
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        raise InvalidInput(f"the file name {name[:40]!r} holds a control character")
    return name


def container_type(format_names: str, filename: str) -> str:
    """The content type of a video container: the file name's when it names a video type, else the format's."""
    guessed = mimetypes.guess_type(filename)[0] or ""
    if guessed.startswith("video/"):
        return guessed
    names = format_names.split(",")
    return next((CONTAINER_TYPES[n] for n in names if n in CONTAINER_TYPES), f"video/x-{names[0]}")


# -- spooling and inspecting (local files) ----------------------------------------------------------
@contextmanager
def spooled(data: bytes | Iterable[bytes] | BinaryIO | Path, limits: MediaLimits,
            spool_dir: Path | None = None) -> Iterator[Spooled]:
    """The upload as a local file with its sha256 and size, removed afterwards (a Path is used in place).
    More than ``max_upload_bytes`` is refused as soon as it is read."""
    if isinstance(data, Path):
        size = data.stat().st_size
        if size > limits.upload_bytes:
            raise too_large(f"{data.name} is {size} bytes", "max_upload_bytes", limits.upload_bytes)
        sha, size = sha256_file(data)
        yield Spooled(data, sha, size)
        return
    if isinstance(data, bytes):
        chunks: Iterable[bytes] = [data]
    elif hasattr(data, "read"):
        chunks = iter(lambda: data.read(1 << 20), b"")  # type: ignore[union-attr]
    else:
        chunks = data  # type: ignore[assignment]
    if spool_dir is not None:
        spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=spool_dir, prefix="medialab-upload-")
    path = Path(name)
    try:
        h, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                size += len(chunk)
                if size > limits.upload_bytes:
                    raise too_large(f"the upload has more than {size - len(chunk)} bytes", "max_upload_bytes",
                                    limits.upload_bytes)
                h.update(chunk)
                f.write(chunk)
        yield Spooled(path, h.hexdigest(), size)
    finally:
        path.unlink(missing_ok=True)


def inspect(path: Path, filename: str, limits: MediaLimits) -> MediaInfo:
    """What the file is; TooLarge (413) over a limit, InvalidInput (422) for an image that does not decode."""
    info = probe_image(path, limits, filename) or probe_video(path, limits, filename)
    if info is not None:
        return info
    guessed = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if guessed.startswith(("image/", "video/")):  # a name is no proof: only bytes that decode are media
        return MediaInfo("application/octet-stream")
    return MediaInfo(guessed)


def _allow_pixels(limit: int) -> None:
    """Pillow refuses images over twice its own MAX_IMAGE_PIXELS while opening them (a bomb); keep that guard
    above our limit, so that ours decides (it only ever rises, and stays a guard for every other decode)."""
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit


def probe_image(path: Path, limits: MediaLimits, filename: str = "") -> MediaInfo | None:
    """An image by its bytes (None: not an image). Its size is checked from the header, before decoding."""
    _allow_pixels(limits.image_pixels)
    what = f"the image {filename}".rstrip()
    try:
        with Image.open(path) as im:
            fmt, (w, h) = (im.format or "octet-stream").lower(), im.size
    except UnidentifiedImageError:
        return None
    except Image.DecompressionBombError as exc:
        raise too_large(f"{what} is a decompression bomb ({exc})", "max_image_pixels", limits.image_pixels) from exc
    except Exception as exc:  # noqa: BLE001  (its signature matched a format, its header does not parse)
        raise InvalidInput(f"{what} has the signature of an image but its header does not decode: {exc}",
                           reason="corrupt image") from exc
    check_image(w, h, limits, what)
    try:
        with Image.open(path) as im:
            im.verify()  # PNG: every chunk's CRC; others: what the plugin checks
        if w * h <= DECODE_MAX_PIXELS:
            with Image.open(path) as im:
                im.load()  # truncated or corrupt data
    except Exception as exc:  # noqa: BLE001
        raise InvalidInput(f"{what} claims to be a {w}x{h} {fmt.upper()} but does not decode: {exc}",
                           reason="corrupt image") from exc
    return MediaInfo(f"image/{fmt}", w, h)


def probe_video(path: Path, limits: MediaLimits, filename: str = "") -> MediaInfo | None:
    """A video by its container (None: no video container with a video stream); nothing is decoded."""
    import av  # PyAV: imported on use (it loads ffmpeg's libraries)

    what = f"the video {filename}".rstrip()
    try:
        container = av.open(str(path), mode="r")
    except Exception:  # noqa: BLE001  (not something ffmpeg can demux)
        return None
    with container:
        names = container.format.name or ""
        if names.endswith("_pipe") or set(names.split(",")) & NOT_CONTAINERS:
            return None
        stream = next(iter(container.streams.video), None)
        if stream is None:
            return None
        w, h = stream.codec_context.width or 0, stream.codec_context.height or 0
        duration = None
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        rate = stream.average_rate or stream.guessed_rate
        frames = stream.frames or None
        if frames is None and duration is not None and rate:
            frames = math.ceil(duration * float(rate))
        check_video(w, h, duration, frames, limits, what)
        if frames is None:  # the container states neither: count its packets (demuxed, not decoded)
            frames = 0
            for packet in container.demux(stream):
                frames += packet.size > 0
                if frames > limits.video_frames:
                    break
            check_video(w, h, duration, frames, limits, what)
    return MediaInfo(container_type(names, filename), w or None, h or None, duration, frames)
