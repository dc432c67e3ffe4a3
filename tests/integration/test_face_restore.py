"""restore-face and restore-face-video end to end on a real ComfyUI with this project's node pack and the
fixture face model (a RestoreFormer: real architecture, random weights), and the refusal at submit of a model
no server has."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import MODELS, face_image, png_bytes
from tests.integration.conftest import Api
from tests.integration.test_jobs_api import submit, upload, wait

FACE_MODEL = "tiny_restoreformer.safetensors"

pytestmark = pytest.mark.skipif(not (MODELS / "facerestore_models" / FACE_MODEL).exists(),
                                reason=f"no {FACE_MODEL} under {MODELS}: run scripts/setup.sh first")


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def content(api: Api, artifact: dict) -> bytes:
    return api.client.get(f"/v1/artifacts/{artifact['id']}/content", headers=api.reader).content


def test_faces_restored_and_the_rest_left_alone(api: Api) -> None:
    source = face_image(128)
    frame = upload(api, png(source))
    job = wait(api, submit(api, {"image": frame["id"], "model": FACE_MODEL, "strength": 1.0},
                           template="restore-face").json()["id"], timeout=300)
    assert job["state"] == "SUCCEEDED", job["error"]
    (out,) = job["outputs"]
    assert (out["width"], out["height"]) == (256, 256) and out["input_artifacts"] == [frame["id"]]
    got = np.asarray(Image.open(io.BytesIO(content(api, out))).convert("RGB")).astype(int)
    want = np.asarray(source).astype(int)
    assert (got[:20] == want[:20]).all() and (got[:, :20] == want[:, :20]).all()  # far from the face: unchanged
    assert np.abs(got[100:160, 100:160] - want[100:160, 100:160]).mean() > 1  # the face went through the model


def test_a_face_model_no_server_has_is_refused_at_submit(api: Api) -> None:
    frame = upload(api, png_bytes())
    r = submit(api, {"image": frame["id"], "model": "GFPGANv1.4.pth"}, template="restore-face")
    detail = r.json()["detail"]
    assert r.status_code == 422 and "facerestore_models/GFPGANv1.4.pth" in detail and FACE_MODEL in detail, detail


def test_a_clip_restored_frame_by_frame_keeps_its_rate(api: Api) -> None:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("h264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 128, 128, "yuv420p"
        for shade in (60, 80, 100):
            picture = face_image(64, background=(shade, 90, 60))
            container.mux(stream.encode(av.VideoFrame.from_image(picture)))
        container.mux(stream.encode())
    clip = upload(api, buf.getvalue(), "clip.mp4")
    job = wait(api, submit(api, {"video": clip["id"], "model": FACE_MODEL},
                           template="restore-face-video").json()["id"], timeout=300)
    assert job["state"] == "SUCCEEDED", job["error"]
    with av.open(io.BytesIO(content(api, job["outputs"][0]))) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert len(frames) == 3 and stream.average_rate == 12 and (frames[0].width, frames[0].height) == (128, 128)
    events = api.client.get(f"/v1/jobs/{job['id']}/events?follow=false", headers=api.reader).json()
    steps = [e["data"] for e in events if e["kind"] == "progress" and e["data"].get("title") == "Restore faces"]
    assert steps and steps[-1]["value"] == steps[-1]["max"] == 3  # progress per frame
