"""What an uploaded file is, checked against the input limits before any of it is stored.

An upload is spooled to a local file while it is hashed (``spooled``), inspected there (``inspect``), and
only then put in the object store, so a refused file leaves nothing behind. Images are recognised by their
bytes with Pillow: the header gives the size, which is checked against ``max_image_pixels`` before a pixel is
decoded (a PNG of a few hundred bytes may claim 30000x30000 pixels), over all frames of an animation (GIF,
APNG, WebP: frames x width x height); a file that claims to be an image but does not decode is refused.
Pillow's own guard (``Image.MAX_IMAGE_PIXELS``) is left as it is for every other decode in the process: an
image over twice it is refused by Pillow whatever our setting, so a setting above that is capped there
(``image_pixel_cap``; the service says so when it starts). Videos are recognised by their container with
PyAV (ffmpeg's demuxer: no frame is decoded); their resolution, duration and frame count are checked as the
container states them (with its frame rate). Anything else is typed by its file name, as before.
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

from PIL import GifImagePlugin, Image, UnidentifiedImageError

from orchestrator.core.errors import InvalidInput, TooLarge
from orchestrator.core.limits import CONTROL
from orchestrator.settings import Settings
from storage.base import sha256_file

DECODE_MAX_PIXELS = 40_000_000  # images up to this size are decoded whole (truncated data is found)
PILLOW_LIMIT = "pillow.bomb_limit"  # twice Image.MAX_IMAGE_PIXELS: over it Pillow refuses to open an image
STATED_FRAME_COUNT = {"PNG", "WEBP"}  # APNG (acTL) and WebP (ANIM) state their frame count: nothing is walked
MAX_FILENAME_LENGTH = 255
# Formats ffmpeg reads that are not video containers: single images and raw elementary streams.
NOT_CONTAINERS = {"image2", "mjpeg", "h264", "hevc", "mpeg1video", "mpegvideo", "m4v", "rawvideo", "gif",
                  "apng", "webp", "tiff", "bmp", "ico", "jpeg", "png", "svg", "dirac", "vc1", "av1", "obu", "ivf"}
CONTAINER_TYPES = {"mov": "video/mp4", "mp4": "video/mp4", "matroska": "video/x-matroska", "webm": "video/webm",
                   "avi": "video/x-msvideo", "flv": "video/x-flv", "mpegts": "video/mp2t", "mpeg": "video/mpeg",
                   "ogg": "video/ogg", "asf": "video/x-ms-asf"}


@dataclass(frozen=True)
class MediaLimits:
    image_pixels: int  # of an image, over all its frames
    video_seconds: float
    video_frames: int  # of a video, and of an animated image
    video_pixels: int
    upload_bytes: int
    image_limit: str = "max_image_pixels"  # the name of the limit ``image_pixels`` is (see ``image_pixel_cap``)

    @classmethod
    def of(cls, settings: Settings) -> MediaLimits:
        pixels, name = image_pixel_cap(settings.max_image_pixels)
        return cls(pixels, settings.max_video_seconds, settings.max_video_frames, settings.max_video_pixels,
                   settings.max_upload_bytes, name)


@dataclass(frozen=True)
class MediaInfo:
    content_type: str
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    frames: int | None = None
    fps: float | None = None  # a video's frame rate (its stream's average rate, else the guessed one)


@dataclass(frozen=True)
class Spooled:
    path: Path
    sha256: str
    size: int
    owned: bool = True  # our own spool file (it may be moved into the store); False: the caller's file


# -- the rules (pure) -----------------------------------------------------------------------------------
def too_large(message: str, limit: str, value: int | float) -> TooLarge:
    return TooLarge(f"{message}, over the limit {limit}={value:g}" if isinstance(value, float)
                    else f"{message}, over the limit {limit}={value}", limit=limit, value=value)


def image_pixel_cap(setting: int, pillow_max: int | None = None) -> tuple[int, str]:
    """The pixel cap applied to images, and its name: the setting ``max_image_pixels``, or Pillow's own limit
    where the setting is above it (Pillow refuses to open an image over twice ``Image.MAX_IMAGE_PIXELS``; between
    once and twice it only warns, and ours decides). ``pillow_max``: default ``Image.MAX_IMAGE_PIXELS``, which is
    read, never changed."""
    pillow_max = Image.MAX_IMAGE_PIXELS if pillow_max is None else pillow_max
    if pillow_max is not None and setting > 2 * pillow_max:
        return 2 * pillow_max, PILLOW_LIMIT
    return setting, "max_image_pixels"


def pixel_cap_warning(settings: Settings) -> str | None:
    """What the service says at start when ``max_image_pixels`` is above what Pillow opens (None: it is not)."""
    pixels, name = image_pixel_cap(settings.max_image_pixels)
    if name == "max_image_pixels":
        return None
    return (f"max_image_pixels={settings.max_image_pixels} is above Pillow's decompression-bomb limit (twice "
            f"PIL.Image.MAX_IMAGE_PIXELS): images are capped at {name}={pixels} pixels")


def check_image(width: int, height: int, limits: MediaLimits, what: str = "the image", frames: int = 1) -> None:
    """An image's size as its header states it: at most ``max_video_frames`` frames when it is animated (each
    becomes an image of a batch, as a video's frames do) and at most ``max_image_pixels`` over all its frames."""
    if frames > limits.video_frames:
        raise too_large(f"{what} is an animation of {frames} frames", "max_video_frames", limits.video_frames)
    pixels = width * height * frames
    if pixels > limits.image_pixels:
        size = f"{width}x{height}" if frames == 1 else f"{frames} frames of {width}x{height}"
        raise too_large(f"{what} is {size} = {pixels} pixels", limits.image_limit, limits.image_pixels)


def frame_budget(width: int, height: int, limits: MediaLimits) -> int:
    """The most frames an image of this frame size may have (``check_image``): how far its frames need counting."""
    return min(limits.image_pixels // max(width * height, 1), limits.video_frames)


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
    if CONTROL.search(name):
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
        yield Spooled(data, sha, size, owned=False)
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


def count_frames(im: Image.Image, most: int) -> int:
    """The frames of an opened image, counted no further than ``most`` + 1 (enough to refuse it). APNG and WebP
    state their count; a GIF is walked as Pillow's ``n_frames`` walks it (block headers, no pixel decoded) but
    stops past ``most``, so the work is bounded by the limits, not by the file. Another multi-frame format is
    stepped with ``seek``, also at most ``most`` frames (whose pixels are within the cap if a step decodes)."""
    if not getattr(im, "is_animated", False):
        return 1
    if im.format in STATED_FRAME_COUNT:
        return int(getattr(im, "n_frames", 1))
    walk = GifImagePlugin.GifImageFile._seek if isinstance(im, GifImagePlugin.GifImageFile) else None
    frames = 1
    try:
        while frames <= most:
            if walk is not None:
                walk(im, frames, False)  # what GifImageFile.n_frames does: the frame's headers, no decode
            else:
                im.seek(frames)
            frames += 1
    except EOFError:
        pass
    return frames


def probe_image(path: Path, limits: MediaLimits, filename: str = "") -> MediaInfo | None:
    """An image by its bytes (None: not an image). Its size, over all its frames, is checked from its headers
    before anything is decoded; Pillow's own guard stays as it is (``image_pixel_cap``)."""
    what = f"the image {filename}".rstrip()
    try:
        with Image.open(path) as im:
            fmt, (w, h) = (im.format or "octet-stream").lower(), im.size
            check_image(w, h, limits, what)  # the first frame, before anything else is read
            frames = count_frames(im, frame_budget(w, h, limits))
    except UnidentifiedImageError:
        return None
    except Image.DecompressionBombError as exc:
        raise too_large(f"{what} is a decompression bomb ({exc})", limits.image_limit, limits.image_pixels) from exc
    except TooLarge:
        raise
    except Exception as exc:  # noqa: BLE001  (its signature matched a format, its header does not parse)
        raise InvalidInput(f"{what} has the signature of an image but its header does not decode: {exc}",
                           reason="corrupt image") from exc
    check_image(w, h, limits, what, frames)
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
    fps = round(float(rate), 6) if rate else None
    return MediaInfo(container_type(names, filename), w or None, h or None, duration, frames, fps)
