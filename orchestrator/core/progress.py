"""What a node's progress message means for a job: frames done of a frame-by-frame video job, and an ETA.

ComfyUI reports a node's progress as ``value/max`` in the node's own unit: tiles for ImageUpscaleWithModel
(max = frames x tiles a frame, over the whole batch), middle frames for the frame interpolation nodes of
ComfyUI-Frame-Interpolation (this project's node pack reports them: ``custom_nodes/frame_progress.py``),
frames for the pack's face restoration, sampler steps for a KSampler. A *frame loop* is a node of
``FRAME_LOOP_NODES`` working on a batch of a video's frames: the job has a video input whose frame count is
known; then ``frames_done = floor(value / max x frames)``. An image job is never a frame loop. The ETA comes
from the node's own rate since its first progress message. Values in, values out: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# Nodes whose progress covers the frames of their input batch evenly (one unit = a share of one frame's work).
UPSCALE_NODES = frozenset({"ImageUpscaleWithModel"})  # tiles over all frames
FACE_NODES = frozenset({"MediaLabFaceRestore"})  # one step a frame (custom_nodes/faces.py)
# ComfyUI-Frame-Interpolation: RIFE's own loop and the nodes on its generic frame loop, as
# custom_nodes/frame_progress.py reports them (middle frames over all pairs of input frames).
VFI_NODES = frozenset({"RIFE VFI", "GMFSS Fortuna VFI", "IFRNet VFI", "IFUnet VFI", "M2M VFI", "Sepconv VFI",
                       "AMT VFI", "CAIN VFI", "EISAI VFI"})
FRAME_LOOP_NODES = UPSCALE_NODES | FACE_NODES | VFI_NODES


@dataclass(frozen=True)
class NodeProgress:
    value: int
    max: int
    frames_done: int | None = None  # a frame loop's (None: the node is not one, or the frame count is unknown)
    frames_total: int | None = None
    eta_s: float | None = None  # the node's remaining seconds at its rate so far (None: no rate yet)

    @property
    def data(self) -> dict[str, int | float | None]:
        """The fields a progress event's data gets (``frames_*`` only for a frame loop)."""
        out: dict[str, int | float | None] = {"eta_s": self.eta_s}
        if self.frames_total is not None:
            out |= {"frames_done": self.frames_done, "frames_total": self.frames_total}
        return out


def is_frame_loop(node_class: str | None, video_frames: int | None) -> bool:
    """The node works frame by frame over the job's video (its class is a frame loop and the frame count known)."""
    return node_class in FRAME_LOOP_NODES and video_frames is not None and video_frames > 0


def eta(value: float, maximum: float, elapsed_s: float, first_value: float = 0.0) -> float | None:
    """Seconds left at the node's rate since its first progress message (``first_value`` at ``elapsed_s`` ago):
    0 once done, None while there is no rate yet (no step since the first message, or no time passed)."""
    if maximum > 0 and value >= maximum:
        return 0.0
    done = value - first_value
    if done <= 0 or elapsed_s <= 0 or maximum <= 0:
        return None
    return round((maximum - value) * elapsed_s / done, 1)


def node_progress(node_class: str | None, value: int, maximum: int, video_frames: int | None,
                  elapsed_s: float, first_value: int = 0) -> NodeProgress:
    """One progress message read: frames done/total of a frame loop (``is_frame_loop``), and the ETA (``eta``).
    ``video_frames``: the frame count of the job's video input (None: no video input, or not known)."""
    left = eta(value, maximum, elapsed_s, first_value)
    if not video_frames or not is_frame_loop(node_class, video_frames) or maximum <= 0:
        return NodeProgress(value, maximum, eta_s=left)
    done = min(max(value, 0) * video_frames // maximum, video_frames)
    return NodeProgress(value, maximum, done, video_frames, left)


def video_frames(inputs: Iterable[tuple[str | None, int | None]]) -> int | None:
    """The frame count of a job's video input, from its inputs' (content type, frames) in parameter order: the
    first video's with a known count (None: no video input, or none with a known count)."""
    return next((frames for kind, frames in inputs if (kind or "").startswith("video/") and frames), None)


def duration(seconds: float) -> str:
    """An ETA for people: "8 s", "2 min 5 s", "1 h 3 min"."""
    s = max(math.ceil(seconds), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min" if s % 3600 // 60 else f"{s // 3600} h"


def describe(title: str, p: NodeProgress) -> str:
    """The event's message: "Upscale: frame 12/48, ETA 8 s" for a frame loop, else "KSampler 3/20, ETA 5 s"."""
    what = (f"{title}: frame {p.frames_done}/{p.frames_total}" if p.frames_total is not None
            else f"{title} {p.value}/{p.max}")
    return what if p.eta_s is None else f"{what}, ETA {duration(p.eta_s)}"
