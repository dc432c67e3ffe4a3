"""The file I/O of training datasets (their rules are ``training/core/dataset.py``, which does none).

``write_dataset`` lays a dataset out for sd-scripts, ``sample_frames`` decodes frames out of a video file with
PyAV, and ``opencv_face_finder`` (the face finder that ``datasets.build`` passes to ``build_dataset``) loads
OpenCV's Haar cascade from disk.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from orchestrator.core.errors import InvalidInput
from orchestrator.training.core.dataset import Box, Dataset, DatasetImage, frame_indices, safe_stem


def write_dataset(dataset: Dataset, folder: Path) -> Path:
    """Lay the dataset out as ``folder/img/<name>.png`` + ``<name>.txt``; returns the image folder."""
    img = Path(folder) / "img"
    img.mkdir(parents=True, exist_ok=True)
    for it in dataset.items:
        (img / f"{it.name}.png").write_bytes(it.png)
        if it.caption is not None:
            (img / f"{it.name}.txt").write_text(it.caption, encoding="utf-8")
    return img


def opencv_face_finder(img: Image.Image) -> Box | None:
    """The largest frontal face found by OpenCV's Haar cascade (needs opencv-python-headless)."""
    try:
        import cv2
        import numpy as np
    except ImportError as exc:
        raise InvalidInput("a face-centred crop needs OpenCV: pip install 'medialab[faces]'") from exc
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    grey = np.asarray(img.convert("L"))
    found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    if len(found) == 0:
        return None
    x, y, w, h = max(found, key=lambda f: f[2] * f[3])
    return int(x), int(y), int(x + w), int(y + h)


def sample_frames(video_path: Path | str, *, every_n: int | None = None,
                  count: int | None = None) -> list[DatasetImage]:
    """Frames of a video as PNG dataset images: every ``every_n``-th frame, or ``count`` frames evenly spread."""
    import av

    if (every_n is None) == (count is None):
        raise InvalidInput("give every_n or count")
    if (every_n is not None and every_n < 1) or (count is not None and count < 1):
        raise InvalidInput("every_n and count must be at least 1")
    path = Path(video_path)
    try:
        with av.open(str(path)) as box:
            if not box.streams.video:
                raise InvalidInput(f"{path.name} has no video stream")
            total = sum(1 for p in box.demux(box.streams.video[0]) if p.size)
        wanted = frame_indices(total, every_n=every_n, count=count)
        out = []
        with av.open(str(path)) as box:
            stream = box.streams.video[0]
            for idx, frame in enumerate(box.decode(stream)):
                if idx in wanted:
                    buf = io.BytesIO()
                    frame.to_image().save(buf, format="PNG")
                    out.append(DatasetImage(name=f"{safe_stem(path.name)}_f{idx:06d}", data=buf.getvalue()))
                if len(out) == len(wanted):
                    break
        return out
    except av.FFmpegError as exc:
        raise InvalidInput(f"{path.name} cannot be decoded: {exc}") from exc
