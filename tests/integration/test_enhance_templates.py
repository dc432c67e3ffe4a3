"""The enhancement templates end to end on a real ComfyUI (CPU, the session's servers) with the fixture models:
``restore`` and ``restore-video`` keep the input's size whatever the model's scale (1x and 4x fixtures),
``detail-pass`` gives input x model scale x resize, and the video variants keep the frame rate, the frame count
and the audio track. Their node definitions are checked by test_template_library.py's parametrised test."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image, ImageChops

from tests.conftest import FIXTURE_MODEL, png_bytes
from tests.integration.conftest import Api
from tests.integration.test_jobs_api import submit, upload, wait

RESTORE_MODEL = "tiny_x1.safetensors"
CHECKPOINT = "tiny_sd15.safetensors"


def clip_with_audio(frames: int = 6, w: int = 32, h: int = 24, fps: int = 12, rate: int = 16000) -> bytes:
    """A small H.264 clip with an AAC audio track (a tone as long as the pictures), made with PyAV."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        video = out.add_stream("h264", rate=fps)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        audio = out.add_stream("aac", rate=rate, layout="mono")
        for i in range(frames):
            pixels = np.full((h, w, 3), (i * 40 % 256, 120, 200 - i * 20 % 200), dtype=np.uint8)
            pixels[:, : w // 2] //= 2  # some structure
            out.mux(video.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        out.mux(video.encode())
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(rate * frames // fps) / rate)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            chunk = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = rate, start
            out.mux(audio.encode(chunk))
        out.mux(audio.encode())
    return buf.getvalue()


def run(api: Api, template: str, params: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    r = submit(api, params, template=template)
    assert r.status_code == 201, r.text
    job = wait(api, r.json()["id"], timeout=timeout)
    assert job["state"] == "SUCCEEDED", job["error"]
    return job


def content(api: Api, job: dict[str, Any]) -> bytes:
    (out,) = job["outputs"]
    return api.client.get(f"/v1/artifacts/{out['id']}/content", headers=api.reader).content


def video_facts(data: bytes) -> tuple[int, float, tuple[int, int], int]:
    """(frames, frame rate, (width, height), audio streams) of an encoded clip."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return len(frames), stream.average_rate, (frames[0].width, frames[0].height), len(container.streams.audio)


def test_a_clip_with_audio_has_its_track() -> None:
    assert video_facts(clip_with_audio()) == (6, 12, (32, 24), 1)


@pytest.mark.parametrize("model", [RESTORE_MODEL, FIXTURE_MODEL])
def test_restore_keeps_the_input_size_whatever_the_model_scale(api: Api, model: str) -> None:
    frame = upload(api, png_bytes(42, 30))
    original = Image.open(io.BytesIO(png_bytes(42, 30))).convert("RGB")
    restored = run(api, "restore", {"image": frame["id"], "model": model})
    (out,) = restored["outputs"]
    assert (out["width"], out["height"]) == (42, 30) and out["content_type"] == "image/png"
    assert ImageChops.difference(Image.open(io.BytesIO(content(api, restored))).convert("RGB"), original).getbbox()
    untouched = run(api, "restore", {"image": frame["id"], "model": model, "strength": 0.0})
    assert ImageChops.difference(Image.open(io.BytesIO(content(api, untouched))).convert("RGB"),
                                 original).getbbox() is None  # strength 0 is the original, pixel for pixel


def test_restore_video_keeps_size_frame_rate_frames_and_audio(api: Api) -> None:
    clip = upload(api, clip_with_audio(frames=6, fps=12), "clip.mp4")
    job = run(api, "restore-video", {"video": clip["id"], "model": FIXTURE_MODEL, "strength": 0.8})
    assert video_facts(content(api, job)) == (6, 12, (32, 24), 1)


def test_detail_pass_gives_input_times_model_scale_times_resize(api: Api) -> None:
    """30x22 through the x4 fixture and resize 0.5 is 60x44: not a multiple of 8, which the VAE crops to, so
    this also shows the result is brought back to the exact upscaled size."""
    frame = upload(api, png_bytes(30, 22))
    job = run(api, "detail-pass", {"image": frame["id"], "model": FIXTURE_MODEL, "resize": 0.5,
                                   "checkpoint": CHECKPOINT, "steps": 2, "tile_size": 128, "seed": 3})
    (out,) = job["outputs"]
    assert (out["width"], out["height"]) == (60, 44) and out["content_type"] == "image/png"


def test_detail_pass_video_keeps_frame_rate_frames_and_audio(api: Api) -> None:
    clip = upload(api, clip_with_audio(frames=4, fps=10), "clip.mp4")
    job = run(api, "detail-pass-video", {"video": clip["id"], "model": RESTORE_MODEL, "resize": 2.0,
                                         "checkpoint": CHECKPOINT, "steps": 2, "denoise": 0.3})
    assert video_facts(content(api, job)) == (4, 10, (64, 48), 1)
