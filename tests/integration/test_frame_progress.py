"""Frames done and an ETA in the progress events of a frame-by-frame video job, on a real ComfyUI (CPU): the
video upscale template over a clip (ImageUpscaleWithModel's ProgressBar counts tiles over all frames), and
an image upscale, which has an ETA but is no frame loop. The input video artifact keeps its frame count, frame
rate and duration."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import FIXTURE_MODEL, mp4_bytes, png_bytes
from tests.integration.conftest import Api
from tests.integration.test_jobs_api import submit, upload, wait


def progress_events(api: Api, job_id: str) -> list[dict[str, Any]]:
    events = api.client.get(f"/v1/jobs/{job_id}/events?follow=false", headers=api.reader).json()
    return [e for e in events if e["kind"] == "progress"]


def test_video_upscale_reports_frames_and_eta(api: Api) -> None:
    clip = upload(api, mp4_bytes(frames=24, fps=25), "clip.mp4")
    assert (clip["frames"], clip["fps"]) == (24, 25) and clip["duration_s"] == pytest.approx(0.96, abs=0.05)
    job = wait(api, submit(api, {"video": clip["id"], "model": FIXTURE_MODEL},
                           template="upscale-esrgan-video").json()["id"], timeout=300)
    assert job["state"] == "SUCCEEDED", job["error"]
    events = [e for e in progress_events(api, job["id"]) if e["data"]["title"] == "Upscale"]
    assert events, progress_events(api, job["id"])
    data = [e["data"] for e in events]
    assert all(d["frames_total"] == 24 and "eta_s" in d for d in data), data
    done = [d["frames_done"] for d in data]
    assert done == sorted(done) and done[-1] == 24, data
    assert data[-1]["eta_s"] == 0.0 and data[-1]["value"] == data[-1]["max"]
    assert all(d["eta_s"] is None or d["eta_s"] >= 0 for d in data)
    assert events[-1]["reason"] == "Upscale: frame 24/24, ETA 0 s"


def test_an_image_job_has_an_eta_but_no_frames(api: Api) -> None:
    frame = upload(api, png_bytes(64, 48))
    assert frame["frames"] is None and frame["fps"] is None
    job = wait(api, submit(api, {"image": frame["id"], "model": FIXTURE_MODEL}).json()["id"])
    assert job["state"] == "SUCCEEDED", job["error"]
    data = [e["data"] for e in progress_events(api, job["id"])]
    assert data and all("eta_s" in d and "frames_total" not in d for d in data), data
    assert data[-1]["eta_s"] == 0.0
