"""Sniffing a stored object reads a bounded head: an object store's stream cannot seek, and a big video
must never be read whole into memory just to find it is not an image."""

from __future__ import annotations

import io

from orchestrator.runtime import ingest
from tests.conftest import png_bytes


class Stream:
    """A non-seekable body, like an S3 response, that counts what was read."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)
        self.read_bytes = 0

    def read(self, n: int = -1) -> bytes:
        out = self._f.read(n)
        self.read_bytes += len(out)
        return out


def test_a_big_video_is_recognised_by_its_head_only() -> None:
    body = Stream(b"\0" * (8 * ingest.SNIFF_HEAD))
    assert ingest.sniff(body, "clip.mp4") == ("video/mp4", None, None)  # type: ignore[arg-type]
    assert body.read_bytes == ingest.SNIFF_HEAD


def test_images_are_still_decoded_and_verified_from_a_stream() -> None:
    data = png_bytes(128, 96)
    assert ingest.sniff(Stream(data), "frame.png") == ("image/png", 128, 96)  # type: ignore[arg-type]
    assert ingest.sniff(Stream(data[:-20]), "frame.png")[0] == "application/octet-stream"  # type: ignore[arg-type]
