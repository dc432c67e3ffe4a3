"""Sniffing a stored object reads a bounded head: an object store's stream cannot seek, and a big video
must never be read whole into memory just to find it is not an image. And the one path from bytes to an
Artifact row (``ingest.store_stream``, ``ingest.store_checked``): stored first, the row built, never added."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from orchestrator.runtime import ingest
from orchestrator.settings import Settings
from storage import LocalDiskStore, key_for
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


def test_a_stream_is_stored_then_sniffed_into_its_row(tmp_path: Path) -> None:
    store, data = LocalDiskStore(tmp_path / "objects"), png_bytes(32, 24)
    sha = hashlib.sha256(data).hexdigest()
    art = ingest.store_stream(store, [data[:100], data[100:]], origin="output:j:4:0", role="output",
                              filename="out.png", job_id=None, output_name="upscaled", input_artifacts=["a"])
    assert (art.origin, art.role, art.filename, art.output_name, art.input_artifacts) == (
        "output:j:4:0", "output", "out.png", "upscaled", ["a"])
    assert (art.key, art.sha256, art.size) == (key_for(sha), sha, len(data)) and store.size(art.key) == len(data)
    assert (art.content_type, art.width, art.height) == ("image/png", 32, 24)
    named = ingest.store_stream(store, [b"not a png"], origin=lambda obj: f"dataset:{obj.sha256}", role="dataset",
                                filename="d.png", content_type="application/x-tar")  # named: not sniffed
    assert named.origin == f"dataset:{named.sha256}"
    assert (named.content_type, named.width, named.height) == ("application/x-tar", None, None)
    again = ingest.store_stream(store, [data], origin="output:j:4:1", role="output", filename="copy.bin")
    assert again.key == art.key and again.content_type == "image/png"  # the same bytes: the same object


def test_checked_bytes_are_stored_from_their_spool(tmp_path: Path) -> None:
    store, data = LocalDiskStore(tmp_path / "objects"), png_bytes(20, 10)
    with ingest.checked_upload(data, "in.png", Settings(home=tmp_path / "home")) as (spool, info):
        art = ingest.store_checked(store, spool, info, origin=f"input:{spool.sha256}", role="input",
                                   filename="in.png")
    assert (art.sha256, art.size, art.content_type, art.width, art.height) == (
        hashlib.sha256(data).hexdigest(), len(data), "image/png", 20, 10)
    with store.open(art.key) as f:
        assert f.read() == data
