"""The progress rule (core/progress.py): frames done of a frame-by-frame video job, and the ETA."""

from __future__ import annotations

import pytest

from orchestrator.core import progress


def test_upscale_tiles_over_frames_become_frames_done() -> None:
    # 48 frames x 4 tiles a frame: the ProgressBar's max is 192 tiles
    p = progress.node_progress("ImageUpscaleWithModel", 50, 192, 48, elapsed_s=10.0, first_value=2)
    assert (p.frames_done, p.frames_total) == (12, 48)  # floor(50 / 192 x 48)
    assert p.eta_s == pytest.approx(142 * 10.0 / 48, abs=0.05)  # its rate since the first message: 48 tiles in 10 s
    assert progress.describe("Upscale", p) == "Upscale: frame 12/48, ETA 30 s"
    last = progress.node_progress("ImageUpscaleWithModel", 192, 192, 48, elapsed_s=40.0, first_value=2)
    assert (last.frames_done, last.frames_total, last.eta_s) == (48, 48, 0.0)
    assert last.data == {"eta_s": 0.0, "frames_done": 48, "frames_total": 48}


def test_vfi_middle_frames_over_pairs_become_frames_done() -> None:
    # RIFE 2x over 30 frames: 29 middle frames (custom_nodes/frame_progress.py)
    p = progress.node_progress("RIFE VFI", 14, 29, 30, elapsed_s=7.0, first_value=1)
    assert (p.frames_done, p.frames_total) == (14, 30)
    assert p.eta_s == pytest.approx(15 * 7.0 / 13, abs=0.05)
    assert progress.node_progress("GMFSS Fortuna VFI", 29, 29, 30, 1.0).frames_done == 30
    assert progress.node_progress("MediaLabFaceRestore", 3, 10, 10, 1.0).frames_done == 3


def test_an_image_job_or_another_node_is_no_frame_loop() -> None:
    image = progress.node_progress("ImageUpscaleWithModel", 3, 4, None, elapsed_s=3.0, first_value=1)
    assert image.frames_total is None and image.frames_done is None and image.eta_s == pytest.approx(1.5)
    assert image.data == {"eta_s": 1.5}
    assert progress.describe("Upscale", image) == "Upscale 3/4, ETA 2 s"
    steps = progress.node_progress("KSampler", 5, 20, 48, elapsed_s=5.0)  # a sampler over a batch: steps
    assert steps.frames_total is None and steps.eta_s == pytest.approx(15.0)
    assert progress.describe("Sampler", steps) == "Sampler 5/20, ETA 15 s"
    assert not progress.is_frame_loop("RIFE VFI", 0) and not progress.is_frame_loop(None, 10)
    assert progress.is_frame_loop("RIFE VFI", 10)


def test_no_eta_before_the_node_has_a_rate() -> None:
    first = progress.node_progress("ImageUpscaleWithModel", 1, 40, 10, elapsed_s=0.0, first_value=1)
    assert first.eta_s is None and first.frames_done == 0
    assert progress.describe("Upscale", first) == "Upscale: frame 0/10"
    assert progress.eta(5, 10, 0.0) is None and progress.eta(0, 10, 3.0) is None and progress.eta(3, 0, 1.0) is None
    assert progress.eta(10, 10, 0.0) == 0.0
    assert progress.node_progress("ImageUpscaleWithModel", 5, 0, 10, 1.0).frames_total is None  # no max: no frames


def test_frames_done_stays_within_the_total() -> None:
    assert progress.node_progress("ImageUpscaleWithModel", 300, 192, 48, 1.0).frames_done == 48
    assert progress.node_progress("ImageUpscaleWithModel", -1, 192, 48, 1.0).frames_done == 0


def test_the_video_input_frame_count() -> None:
    assert progress.video_frames([("image/png", None), ("video/mp4", 48)]) == 48
    assert progress.video_frames([("video/mp4", None), ("video/webm", 12)]) == 12  # the first known
    assert progress.video_frames([("image/png", None)]) is None
    assert progress.video_frames([(None, 5), ("image/gif", 7)]) is None  # only videos count
    assert progress.video_frames([]) is None


@pytest.mark.parametrize(("seconds", "text"), [(0, "0 s"), (7.2, "8 s"), (59, "59 s"), (60, "1 min"),
                                               (125, "2 min 5 s"), (3600, "1 h"), (3780, "1 h 3 min"), (-3, "0 s")])
def test_duration_for_people(seconds: float, text: str) -> None:
    assert progress.duration(seconds) == text


def test_the_cli_line_shows_frames_and_eta_when_the_event_has_them() -> None:
    from orchestrator.cli.common import progress_line

    frames = {"title": "Upscale", "value": 50, "max": 192, "frames_done": 12, "frames_total": 48, "eta_s": 8.0}
    assert progress_line("Upscale 50/192", frames) == "Upscale: frame 12/48, ETA 8 s"
    assert progress_line("KSampler 3/20", {"title": "KSampler", "value": 3, "max": 20, "eta_s": 70}) == \
        "KSampler 3/20, ETA 1 min 10 s"
    assert progress_line("Upscale 1/4", {"title": "Upscale", "value": 1, "max": 4, "eta_s": None}) == "Upscale 1/4"
    assert progress_line("runpod 40%", {"fraction": 0.4}) == "runpod 40%"  # a burst provider's: its reason
