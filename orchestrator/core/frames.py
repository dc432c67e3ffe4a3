"""Frames from a video (pure): which frames a request selects, from what was measured on each decoded frame.

A ``FrameSpec`` names one way to choose: every Nth frame, the frames at given time codes, the first frame of
each scene (a scene starts where a frame differs from the one before by at least ``scene_threshold``), or
the sharpest frame of each scene. The caller decodes the video (``runtime/frames.py``) and hands in per frame
its time code, its difference score to the previous frame and its sharpness; ``select`` answers the frame
indexes, in time order, bounded by ``max_frames`` (the setting max_frames_per_extract).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.core.errors import InvalidInput
from orchestrator.core.limits import refuse

TIME_TOLERANCE_S = 1e-6  # time codes this close are the same (pts x time base, rounded)
DEFAULT_SCENE_THRESHOLD = 0.15  # a mean colour difference of 15 % between two frames starts a new scene (a cut
# between unrelated shots is about 20-40 %, motion within a shot under 10 %)
MODES = ("every_n", "at", "scenes", "sharpest")
ORIGIN_PREFIX = "frame:"
TAG_PREFIX = "frame-of:"


def _bad(param: str, message: str) -> InvalidInput:
    return InvalidInput(f"{param}: {message}", param=param, errors=[{"param": param, "message": message}])


@dataclass(frozen=True)
class FrameSpec:
    """Exactly one of ``every_n`` (>= 1), ``at`` (time codes in seconds, each >= 0, at most ``max_frames`` of
    them), ``scenes`` or ``sharpest``; ``scene_threshold`` in (0, 1] (scenes and sharpest); ``max_frames``: the
    most frames one selection may give. Checked when built: InvalidInput (422) naming the field."""

    every_n: int | None = None
    at: tuple[float, ...] | None = None
    scenes: bool = False
    sharpest: bool = False
    scene_threshold: float = DEFAULT_SCENE_THRESHOLD
    max_frames: int = 500

    def __post_init__(self) -> None:
        given = [m for m, on in zip(MODES, (self.every_n is not None, self.at is not None, self.scenes,
                                            self.sharpest), strict=True) if on]
        if len(given) != 1:
            raise _bad("every_n", f"give exactly one of {', '.join(MODES)}" +
                       (f" (given: {', '.join(given)})" if given else ""))
        if not isinstance(self.max_frames, int) or isinstance(self.max_frames, bool) or self.max_frames < 1:
            raise _bad("max_frames", f"must be an integer of at least 1, not {self.max_frames!r}")
        if self.every_n is not None and (isinstance(self.every_n, bool) or not isinstance(self.every_n, int)
                                         or self.every_n < 1):
            raise _bad("every_n", f"must be an integer of at least 1, not {self.every_n!r}")
        if self.at is not None:
            if not self.at:
                raise _bad("at", "give at least one time code")
            if len(self.at) > self.max_frames:
                raise refuse(f"at: {len(self.at)} time codes, over the limit max_frames_per_extract="
                             f"{self.max_frames}", "max_frames_per_extract", self.max_frames, param="at")
            for t in self.at:
                if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t < 0:
                    raise _bad("at", f"a time code must be a finite number of seconds >= 0, not {t!r}")
        th = self.scene_threshold
        if isinstance(th, bool) or not isinstance(th, int | float) or not math.isfinite(th) or not 0 < th <= 1:
            raise _bad("scene_threshold", f"must be in (0, 1], not {th!r}")

    @property
    def mode(self) -> str:
        if self.every_n is not None:
            return "every_n"
        if self.at is not None:
            return "at"
        return "scenes" if self.scenes else "sharpest"

    @property
    def needs_scores(self) -> bool:
        """Whether the selection needs the per-frame difference scores (and sharpness for ``sharpest``)."""
        return self.scenes or self.sharpest


def every_nth(total: int, n: int) -> list[int]:
    """Frames 0, n, 2n, ... of ``total`` frames."""
    if n < 1:
        raise _bad("every_n", f"must be at least 1, not {n}")
    return list(range(0, max(total, 0), n))


def end_of(times: Sequence[float], duration_s: float | None = None) -> float:
    """Where the video ends: its duration when known, else the last frame's time plus one frame interval."""
    if not times:
        return 0.0
    step = times[-1] - times[-2] if len(times) > 1 else 0.0
    return max(duration_s or 0.0, times[-1] + max(step, 0.0))


def nearest_at(times: Sequence[float], at: Sequence[float], duration_s: float | None = None) -> list[int]:
    """For each time code, the index of the frame nearest to it (the earlier one on a tie); ``times`` are the
    frames' time codes in order. A time code at or past the end (``end_of``) is an error naming it."""
    if not times:
        raise _bad("at", "the video has no frames")
    end = end_of(times, duration_s)
    out = []
    for t in at:
        if t > times[-1] and t >= end - TIME_TOLERANCE_S:
            raise _bad("at", f"time code {t:g} s is past the end of the video ({end:g} s)")
        i = bisect.bisect_left(times, t)
        if i == len(times):
            out.append(i - 1)
        elif i == 0:
            out.append(0)
        else:
            out.append(i - 1 if t - times[i - 1] <= times[i] - t else i)
    return out


def scene_cuts(diffs: Sequence[float], threshold: float = DEFAULT_SCENE_THRESHOLD) -> list[int]:
    """The frames where a scene starts: frame 0 always, then each frame whose difference score to the previous
    one (``diffs[i]``, 0..1; ``diffs[0]`` is ignored) is at least ``threshold``."""
    if not diffs:
        return []
    return [0] + [i for i in range(1, len(diffs)) if diffs[i] >= threshold]


def sharpest_per_scene(sharpness: Sequence[float], cuts: Sequence[int]) -> list[int]:
    """In each scene (from one cut up to the next), the index of its sharpest frame (the first on a tie)."""
    bounds = [*cuts, len(sharpness)]
    out = []
    for start, stop in zip(bounds, bounds[1:], strict=False):
        if stop > start:
            out.append(max(range(start, stop), key=lambda i: (sharpness[i], -i)))
    return out


def select(spec: FrameSpec, times: Sequence[float], diffs: Sequence[float] | None = None,
           sharpness: Sequence[float] | None = None, duration_s: float | None = None) -> list[int]:
    """The frame indexes the spec chooses, unique and in time order; over ``spec.max_frames`` is a 422 naming
    the limit max_frames_per_extract. ``diffs`` (scenes, sharpest) and ``sharpness`` (sharpest) are per frame."""
    if spec.every_n is not None:
        chosen = every_nth(len(times), spec.every_n)
    elif spec.at is not None:
        chosen = nearest_at(times, spec.at, duration_s)
    else:
        if diffs is None or len(diffs) != len(times):
            raise ValueError("scene selection needs a difference score per frame")
        cuts = scene_cuts(diffs, spec.scene_threshold)
        if spec.sharpest:
            if sharpness is None or len(sharpness) != len(times):
                raise ValueError("sharpest selection needs a sharpness score per frame")
            chosen = sharpest_per_scene(sharpness, cuts)
        else:
            chosen = cuts
    chosen = sorted(set(chosen))
    if len(chosen) > spec.max_frames:
        raise refuse(f"the selection ({spec.mode}) gives {len(chosen)} frames, over the limit "
                     f"max_frames_per_extract={spec.max_frames}", "max_frames_per_extract", spec.max_frames,
                     param=spec.mode, frames=len(chosen))
    return chosen


def origin(video_id: str, index: int) -> str:
    """The origin of a frame artifact: the same frame of the same video is stored once."""
    return f"{ORIGIN_PREFIX}{video_id}:{index}"


def frame_tag(video_id: str) -> str:
    return f"{TAG_PREFIX}{video_id}"


def time_code(t: float) -> str:
    """A time code for a file name: seconds with millisecond precision, ``12.500s`` -> ``00012.500``."""
    return f"{t:09.3f}"
