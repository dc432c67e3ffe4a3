"""Frames from a stored video (``app/frames.py``): every Nth, at time codes, scene cuts, the sharpest per scene."""

from fastapi import APIRouter

from orchestrator.api.deps import CtxDep, RunKey, SessionDep
from orchestrator.api.routes.artifacts import artifact_out
from orchestrator.api.schemas import FramesIn, FramesOut
from orchestrator.app import frames as frame_app

router = APIRouter(prefix="/artifacts", tags=["artifacts"])


@router.post("/{artifact_id}/frames", response_model=FramesOut,
             responses={404: {"description": "No such artifact"},
                        422: {"description": "Not a video; a bad selection (naming the field); a time code past "
                              "the end; more frames than max_frames_per_extract (nothing is stored)"}})
def extract_frames(artifact_id: str, body: FramesIn, ctx: CtxDep, session: SessionDep, _: RunKey) -> FramesOut:
    """Store frames of a video as input artifacts (role input, ``frame_index``, ``time_s``, lineage to the video,
    tags ``frame-of:<video id>`` and the request's): exactly one of ``every_n``, ``at`` (time codes), ``scenes``
    (the first frame of each scene) or ``sharpest`` (the sharpest frame of each scene). A frame is stored once:
    the same selection again answers the same artifacts (``counts.existing``)."""
    spec = frame_app.spec_of(ctx.settings, body.every_n, body.at, body.scenes, body.sharpest, body.scene_threshold)
    result = frame_app.extract_frames(session, ctx.store, artifact_id, spec, body.tags, ctx.settings)
    for art in result.created:
        ctx.input_stored(art)
    return FramesOut(video=result.video.id, counts=result.counts,
                     frames=[artifact_out(session, a) for a in result.frames])
