"""Frames out of a stored video (PyAV): one pass that measures every frame, a second that encodes the chosen ones.

``video_file`` gives a local path for a stored object (the file itself on local disk, else a spooled copy).
``analyse`` decodes the video once, keeping per frame only its time code (pts x time base), a difference score
to the previous frame (mean absolute difference / 255 of a 64x36 colour thumbnail, over its three channels:
a cut between shots of one brightness but other colours counts) and a sharpness score (the
variance of a Laplacian of a ~256 px wide grey picture): a few floats a frame, whatever the video's size.
``frames_png`` decodes it again and yields the chosen frames as PNG bytes, one at a time. The selection rules
are ``core/frames.py``."""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from orchestrator.core.errors import InvalidInput
from orchestrator.db import artifacts as artifact_db
from orchestrator.db.tables import Artifact
from storage import ObjectStore

THUMB = (64, 36)  # the colour thumbnail the difference score is taken on
SHARP_WIDTH = 256  # the width of the grey picture the sharpness is taken on


@dataclass
class Analysis:
    """What was measured on each frame of a video, in presentation order."""

    times: list[float] = field(default_factory=list)
    diffs: list[float] = field(default_factory=list)  # diffs[0] is 0: the first frame has no previous one
    sharpness: list[float] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None


@dataclass
class Frame:
    index: int
    time_s: float
    png: bytes
    width: int
    height: int


@contextmanager
def video_file(store: ObjectStore, art: Artifact, spool: Path | None = None) -> Iterator[Path]:
    """A local path to the artifact's bytes: the store's own file on local disk, else a copy streamed into
    ``spool`` (removed afterwards). An object the store has lost is 404 naming the artifact."""
    path = store.local_path(art.key)
    if path is not None:
        if not path.is_file():
            raise artifact_db.object_lost(art)
        yield path
        return
    if spool is not None:
        spool.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=spool, prefix="medialab-frames-") as tmp:
        copy = Path(tmp) / (Path(art.filename).name or "video.mp4")
        with artifact_db.open_artifact(store, art) as src, copy.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        yield copy


def _time(frame: object, index: int, fps: float | None) -> float:
    pts, base = getattr(frame, "pts", None), getattr(frame, "time_base", None)
    if pts is not None and base is not None:
        return float(pts * base)
    return index / fps if fps else float(index)


def laplacian_variance(grey: np.ndarray) -> float:
    """The variance of the 4-neighbour Laplacian of a grey picture (higher: sharper)."""
    g = grey.astype(np.float32)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def _open(path: Path):  # noqa: ANN202
    import av

    try:
        box = av.open(str(path))
    except av.FFmpegError as exc:
        raise InvalidInput(f"{path.name} cannot be decoded as a video: {exc}") from exc
    if not box.streams.video:
        box.close()
        raise InvalidInput(f"{path.name} has no video stream")
    stream = box.streams.video[0]
    stream.thread_type = "AUTO"
    return box, stream


def analyse(path: Path, scores: bool = True, sharpness: bool = True) -> Analysis:
    """Decode the video once: every frame's time code and, with ``scores``, its difference score (and with
    ``sharpness`` its sharpness). Only the previous thumbnail is kept between frames."""
    import av

    box, stream = _open(path)
    out = Analysis(width=stream.codec_context.width or None, height=stream.codec_context.height or None)
    fps = float(stream.average_rate) if stream.average_rate else None
    try:
        with box:
            if box.duration:
                out.duration_s = box.duration / av.time_base
            prev: np.ndarray | None = None
            for index, frame in enumerate(box.decode(stream)):
                out.times.append(_time(frame, index, fps))
                if not scores:
                    continue
                thumb = frame.reformat(width=THUMB[0], height=THUMB[1], format="rgb24").to_ndarray()
                thumb = thumb[:THUMB[1], :THUMB[0]].astype(np.int16)
                out.diffs.append(0.0 if prev is None else float(np.abs(thumb - prev).mean()) / 255.0)
                prev = thumb
                if sharpness:
                    h = max(3, round(frame.height * SHARP_WIDTH / max(frame.width, 1)))
                    grey = frame.reformat(width=SHARP_WIDTH, height=h, format="gray").to_ndarray()
                    out.sharpness.append(laplacian_variance(grey[:h, :SHARP_WIDTH]))
    except av.FFmpegError as exc:
        raise InvalidInput(f"{path.name} cannot be decoded: {exc}") from exc
    return out


def frames_png(path: Path, indexes: Iterable[int]) -> Iterator[Frame]:
    """Decode the video again and yield the frames at ``indexes`` as PNG, one at a time, in time order."""
    import av

    wanted = set(indexes)
    if not wanted:
        return
    last = max(wanted)
    box, stream = _open(path)
    fps = float(stream.average_rate) if stream.average_rate else None
    try:
        with box:
            for index, frame in enumerate(box.decode(stream)):
                if index in wanted:
                    buf = io.BytesIO()
                    img = frame.to_image()
                    img.save(buf, format="PNG")
                    yield Frame(index, _time(frame, index, fps), buf.getvalue(), img.width, img.height)
                if index >= last:
                    break
    except av.FFmpegError as exc:
        raise InvalidInput(f"{path.name} cannot be decoded: {exc}") from exc
