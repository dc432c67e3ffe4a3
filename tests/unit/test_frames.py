"""The frame selection rules (core/frames.py): the spec's checks, every Nth, time codes, scene cuts, sharpest."""

from __future__ import annotations

import pytest

from orchestrator.core import frames as rules
from orchestrator.core.errors import InvalidInput
from orchestrator.core.frames import FrameSpec

TIMES = [i / 24 for i in range(60)]  # 60 frames at 24 fps


def param_of(exc: pytest.ExceptionInfo[InvalidInput]) -> str:
    return exc.value.extra["param"]


@pytest.mark.parametrize(("kw", "param", "words"), [
    ({}, "every_n", "exactly one"),
    ({"every_n": 2, "scenes": True}, "every_n", "given: every_n, scenes"),
    ({"every_n": 0}, "every_n", "at least 1"),
    ({"every_n": True}, "every_n", "integer"),
    ({"at": ()}, "at", "at least one"),
    ({"at": (1.0, -0.5)}, "at", "-0.5"),
    ({"at": (float("nan"),)}, "at", "finite"),
    ({"scenes": True, "scene_threshold": 0}, "scene_threshold", "(0, 1]"),
    ({"sharpest": True, "scene_threshold": 1.5}, "scene_threshold", "(0, 1]"),
    ({"every_n": 1, "max_frames": 0}, "max_frames", "at least 1"),
])
def test_a_bad_spec_names_its_field(kw: dict, param: str, words: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        FrameSpec(**kw)
    assert param_of(exc) == param and words in exc.value.message


def test_too_many_time_codes_name_the_limit() -> None:
    with pytest.raises(InvalidInput) as exc:
        FrameSpec(at=(0.0, 0.1, 0.2), max_frames=2)
    assert exc.value.extra["limit"] == "max_frames_per_extract" and "max_frames_per_extract=2" in exc.value.message


def test_modes() -> None:
    assert FrameSpec(every_n=3).mode == "every_n" and not FrameSpec(every_n=3).needs_scores
    assert FrameSpec(at=(1,)).mode == "at"
    assert FrameSpec(scenes=True).mode == "scenes" and FrameSpec(scenes=True).needs_scores
    assert FrameSpec(sharpest=True).mode == "sharpest"


def test_every_nth() -> None:
    assert rules.every_nth(60, 10) == [0, 10, 20, 30, 40, 50]
    assert rules.every_nth(61, 10)[-1] == 60
    assert rules.every_nth(5, 1) == [0, 1, 2, 3, 4]
    assert rules.every_nth(0, 3) == []


def test_nearest_at() -> None:
    assert rules.nearest_at(TIMES, [0.5, 1.0, 0.0]) == [12, 24, 0]
    assert rules.nearest_at(TIMES, [0.51]) == [12]  # 12.24 frames: the nearest is 12
    assert rules.nearest_at(TIMES, [0.53]) == [13]
    assert rules.nearest_at([0.0, 1.0], [0.5]) == [0]  # a tie: the earlier frame
    assert rules.nearest_at(TIMES, [59 / 24 + 0.01]) == [59]  # within the last frame's interval
    with pytest.raises(InvalidInput) as exc:
        rules.nearest_at(TIMES, [1.0, 2.6])
    assert param_of(exc) == "at" and "2.6 s is past the end" in exc.value.message
    with pytest.raises(InvalidInput):
        rules.nearest_at(TIMES, [2.5], duration_s=2.5)  # the end itself names no frame
    assert rules.nearest_at(TIMES, [2.45], duration_s=3.0) == [59]  # a longer container (audio): still the last


def test_scene_cuts() -> None:
    diffs = [0.0] * 60
    diffs[20], diffs[45], diffs[30] = 0.8, 0.5, 0.1
    assert rules.scene_cuts(diffs, 0.3) == [0, 20, 45]
    assert rules.scene_cuts(diffs, 0.6) == [0, 20]
    assert rules.scene_cuts(diffs, 0.05) == [0, 20, 30, 45]
    assert rules.scene_cuts([0.9], 0.3) == [0]  # diffs[0] is ignored: frame 0 always starts a scene
    assert rules.scene_cuts([], 0.3) == []


def test_sharpest_per_scene() -> None:
    sharp = [1.0] * 60
    sharp[7], sharp[33], sharp[50] = 9.0, 8.0, 7.0
    sharp[21] = 8.0  # scene 2's sharpest is 33 (8.0, earlier: 21 ties at 8.0 -> the first wins)
    assert rules.sharpest_per_scene(sharp, [0, 20, 45]) == [7, 21, 50]
    assert rules.sharpest_per_scene([3.0, 3.0], [0]) == [0]


def test_select_orders_dedups_and_caps() -> None:
    assert rules.select(FrameSpec(at=(1.0, 0.5, 0.5)), TIMES) == [12, 24]
    diffs = [0.0] * 60
    diffs[20] = diffs[45] = 0.9
    sharp = [float(i % 7) for i in range(60)]
    assert rules.select(FrameSpec(scenes=True), TIMES, diffs) == [0, 20, 45]
    assert rules.select(FrameSpec(sharpest=True), TIMES, diffs, sharp) == [6, 20, 48]  # first of ties
    with pytest.raises(InvalidInput) as exc:
        rules.select(FrameSpec(every_n=10, max_frames=5), TIMES)
    assert exc.value.extra["limit"] == "max_frames_per_extract" and "6 frames" in exc.value.message
    with pytest.raises(ValueError):
        rules.select(FrameSpec(scenes=True), TIMES)


def test_origin_tag_and_time_code() -> None:
    assert rules.origin("v" * 32, 7) == f"frame:{'v' * 32}:7"
    assert rules.frame_tag("abc") == "frame-of:abc"
    assert rules.time_code(12.5) == "00012.500" and rules.time_code(0) == "00000.000"
